"""Budgets turned into epochs: seconds per epoch measured on this hardware, or the paper's A100
table.

The paper times training batches (forward, backward, SGD step) on an A100 and sets
``epochs = floor(budget / seconds_per_epoch)`` (PAPER.md section 3). ``calibrate_cell`` does
the same on the hardware a sweep runs on, in the conditions its trials run in: the trial's
torch thread count (``--cpus-per-trial``), its device and batch size. Measurements are cached
in ``$LIPSWEEP_CACHE/calibrations.json`` (default ``~/.cache/lipsweep``), keyed by device
(with its thread count), dataset, size, method, batch size and training examples.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lipsweep.atomic import write_text_atomic
from lipsweep.budget import Budget
from lipsweep.config import SweepConfig
from lipsweep.errors import InputError
from lipsweep.measure import WARMUP_BATCHES, device_name, time_training
from lipsweep.names import Cell
from lipsweep.plan import CellPlan, check_epochs, load_plan, planned_trials

# Paper Table 8: epochs that fit in 2 hours on an A100-80GB at batch 256, sizes XS, S, M, L.
# CIFAR-100 uses the CIFAR-10 budgets; None = did not fit in 80 GB (LOT-L).
PAPER_A100_EPOCHS_2H: dict[str, dict[str, tuple[int | None, ...]]] = {
    "cifar": {
        "aol": (837, 763, 367, 83),
        "bcop": (127, 125, 94, 24),
        "cpl": (836, 797, 522, 194),
        "cayley": (356, 214, 70, 17),
        "lot": (222, 68, 11, None),
        "sll": (735, 703, 353, 79),
        "soc": (371, 336, 201, 77),
    },
    "tiny-imagenet": {
        "aol": (223, 213, 123, 34),
        "bcop": (50, 50, 39, 11),
        "cpl": (240, 194, 148, 63),
        "cayley": (138, 86, 30, 8),
        "lot": (83, 29, 5, None),
        "sll": (242, 194, 118, 32),
        "soc": (122, 87, 63, 27),
    },
}
PAPER_SIZES = ("XS", "S", "M", "L")
PAPER_BUDGET_S = 7200.0


class CalibrationError(InputError):
    """A calibration that cannot be given (unknown cell, budget shorter than an epoch)."""


def paper_epochs(dataset: str, size: str, method: str, budget_s: float) -> int:
    """Epochs the paper trained for this cell and budget: epochs_2h * budget / 2h, floored
    (10h = 5x and 24h = 12x the 2h figure, as in the paper's make_tree.get_epochs)."""
    group = {"cifar10": "cifar", "cifar100": "cifar"}.get(dataset, dataset)
    if group not in PAPER_A100_EPOCHS_2H or size not in PAPER_SIZES:
        raise CalibrationError(
            f"the paper's A100 table covers cifar10, cifar100, tiny-imagenet x XS/S/M/L, "
            f"not {dataset} {size}: use --calibration measure"
        )
    table = PAPER_A100_EPOCHS_2H[group]
    if method not in table:
        raise CalibrationError(
            f"the paper's A100 table has no {method} (not one of the paper's seven methods): "
            "use --calibration measure"
        )
    epochs_2h = table[method][PAPER_SIZES.index(size)]
    if epochs_2h is None:
        raise CalibrationError(f"{method}-{size} on {dataset} did not fit in 80 GB in the paper")
    return math.floor(epochs_2h * budget_s / PAPER_BUDGET_S)


def epochs_for_budget(seconds_per_epoch: float, budget_s: float) -> int:
    """floor(budget / seconds per epoch), as the paper does."""
    return math.floor(budget_s / seconds_per_epoch)


@dataclass
class Calibration:
    """Seconds per epoch of one cell on one device, the basis of every epoch budget."""

    device: str
    dataset: str
    size: str
    method: str
    batch_size: int
    train_examples: int
    train_batch_s: float  # median of the timed (full) batches
    spread: float = 0.0  # (slowest - fastest) / median of the timed batches
    load: float = 0.0  # the machine's 1-minute load average when measured
    timed_batches: int = 0
    # Median of the epoch's last, short batch (train_examples % batch_size examples) timed on
    # its own; None: no short batch, or not timed (then it counts as a full one).
    last_batch_s: float | None = None

    @property
    def stable(self) -> bool:
        return self.spread <= MAX_SPREAD

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.train_examples / self.batch_size)

    @property
    def seconds_per_epoch(self) -> float:
        """Full batches at train_batch_s, the short last one (if any) at its own time: an
        epoch of 1437 examples at batch 256 is 5 full batches and one of 157, not 6 full."""
        full, short = divmod(self.train_examples, self.batch_size)
        if short and self.last_batch_s is not None:
            return full * self.train_batch_s + self.last_batch_s
        return self.batches_per_epoch * self.train_batch_s

    def epochs(self, budget_s: float) -> int:
        return epochs_for_budget(self.seconds_per_epoch, budget_s)


MAX_SPREAD = 0.5  # batches this far apart: the machine was busy, measure again
ATTEMPTS = 3  # measurements of an unstable cell before its steadiest is kept


class CalibrationCache:
    """Calibrations on disk (JSON), keyed by (device, dataset, size, method, batch size,
    training examples): the examples set the epoch's short last batch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(
        device: str, dataset: str, size: str, method: str, batch_size: int, train_examples: int
    ) -> str:
        return f"{device}|{dataset}|{size}|{method}|{batch_size}|{train_examples}"

    def load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError:  # a damaged cache costs only a re-measurement
            return {}

    def forget(self, dataset: str, size: str, method: str, batch_size: int) -> None:
        """Drop a cell's entries on every device and example count (``--recalibrate``)."""
        cell = [dataset, size, method, str(batch_size)]
        entries = {k: v for k, v in self.load().items() if k.split("|")[1:5] != cell}
        self._write(entries)

    def get(
        self,
        device: str,
        dataset: str,
        size: str,
        method: str,
        batch_size: int,
        train_examples: int,
    ) -> Calibration | None:
        key = self.key(device, dataset, size, method, batch_size, train_examples)
        entry = self.load().get(key)
        return Calibration(**entry) if entry else None

    def put(self, calibration: Calibration) -> None:
        entries = self.load()
        c = calibration
        key = self.key(c.device, c.dataset, c.size, c.method, c.batch_size, c.train_examples)
        entries[key] = asdict(c)
        self._write(entries)

    def _write(self, entries: dict[str, dict]) -> None:
        write_text_atomic(self.path, json.dumps(entries, indent=1, sort_keys=True))


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIPSWEEP_CACHE", Path.home() / ".cache" / "lipsweep"))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: unchanged), as a trial does."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_batches(
    model: torch.nn.Module, inputs: torch.Tensor, batches: int, warmup: int = WARMUP_BATCHES
) -> list[float]:
    """Seconds of each of ``batches`` training batches, after ``warmup`` untimed ones."""
    time_training(model, inputs, batches=1, warmup=warmup - 1)
    return [time_training(model, inputs, batches=1, warmup=0)[0] for _ in range(batches)]


def relative_spread(times: list[float]) -> float:
    return (max(times) - min(times)) / statistics.median(times)


def calibrate_cell(
    dataset: str,
    size: str,
    method: str,
    batch_size: int,
    train_examples: int,
    device: torch.device,
    cache: CalibrationCache | None = None,
    batches: int = 5,
    threads: int | None = None,
) -> Calibration:
    """Seconds per epoch of a cell on this device: timed training batches (after
    WARMUP_BATCHES untimed ones) times batches per epoch, with ``threads`` torch threads (a trial's ``--cpus-per-trial``).
    An epoch shorter than ``batches`` batches is timed over its own batches only, and an
    epoch's short last batch is timed on its own (its own shape, after its own warm-up). The
    median batch counts; a measurement whose batches spread more than MAX_SPREAD (a busy
    machine) is taken again, up to ATTEMPTS times, and only a stable one is cached, per
    (device and threads, dataset, size, method, batch size, examples), with its spread and the
    machine's load."""
    from lipsweep.data import DATASETS
    from lipsweep.model import build_model

    with torch_threads(threads):
        name = device_name(device)
        cached = (
            cache.get(name, dataset, size, method, batch_size, train_examples) if cache else None
        )
        if cached is not None:
            return cached
        info = DATASETS[dataset]
        batch = min(batch_size, train_examples)
        shape = (batch, info.channels, info.image_size, info.image_size)
        inputs = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        model = build_model(method, size, dataset).to(device)
        timed = max(2, min(batches, math.ceil(train_examples / batch_size)))
        tries: list[list[float]] = []
        while len(tries) < ATTEMPTS and not any(relative_spread(t) <= MAX_SPREAD for t in tries):
            tries.append(measure_batches(model, inputs, timed))
        times = min(tries, key=relative_spread)  # stable, or the steadiest of ATTEMPTS
        full, short = divmod(train_examples, batch_size)
        last = None
        if full and short:
            # The model is warm by now: one untimed batch of the new shape is enough.
            last = statistics.median(measure_batches(model, inputs[:short], min(timed, 3), 1))
    calibration = Calibration(
        name, dataset, size, method, batch_size, train_examples, statistics.median(times),
        relative_spread(times), os.getloadavg()[0], len(times), last,
    )  # fmt: skip
    if cache is not None and calibration.stable:
        cache.put(calibration)
    return calibration


# ----------------------------------------------------------------------------- cells -> plans


def plan_cell(
    config: SweepConfig, cell: Cell, train_examples: Callable[[str], int] | None = None
) -> CellPlan:
    """Calibrate one cell: seconds per epoch and the epochs each budget buys.

    ``train_examples(dataset)`` counts a dataset's training examples (measured calibration only;
    default: read the split)."""
    labels = (config.search_budget, *config.budgets)
    if config.calibration == "paper-a100":  # needs no data and no hardware
        epochs = {b: paper_epochs(*_key(cell), Budget.parse(b).seconds) for b in labels}
        spe = 7200.0 / max(paper_epochs(*_key(cell), 7200), 1)
        how = "the paper's A100 table"
    else:
        examples = (train_examples or count_train_examples(config))(cell.dataset)
        if config.max_examples is not None:
            examples = min(examples, config.max_examples)
        calibration = calibrate_cell(
            *_key(cell),
            config.batch_size,
            examples,
            torch.device(config.device),
            CalibrationCache(default_cache_dir() / "calibrations.json"),
            threads=config.cpus_per_trial if config.device == "cpu" else None,
        )
        epochs = {b: calibration.epochs(Budget.parse(b).seconds) for b in labels}
        spe = calibration.seconds_per_epoch
        how = f"measured on {calibration.device}"
        if not calibration.stable:
            how += f" (unstable: batches {calibration.spread:.0%} apart at load {calibration.load:.1f})"
    if config.max_epochs is not None:
        epochs = {b: min(e, config.max_epochs) for b, e in epochs.items()}
    if config.final_epochs is not None:
        epochs.update(dict.fromkeys(config.budgets, config.final_epochs))
    if config.search_epochs is not None:
        epochs[config.search_budget] = config.search_epochs
    return CellPlan(cell.dataset, cell.size, cell.method, spe, epochs, how)


def slow_machine_note(config: SweepConfig, plan: CellPlan) -> str | None:
    """A note when fixed epoch counts take longer than their budgets here (the sweep still
    trains them; it only takes longer than the budgets say)."""
    fixed = [(config.search_budget, config.search_epochs)]
    fixed += [(b, config.final_epochs) for b in config.budgets]
    over = [
        (b, e * plan.seconds_per_epoch)
        for b, e in fixed
        if e is not None and e * plan.seconds_per_epoch > Budget.parse(b).seconds
    ]
    if not over:
        return None
    budget, seconds = over[0]
    return (
        f"{plan.cell}: this machine needs {seconds:.0f} s for a trial planned for {budget} "
        f"({plan.seconds_per_epoch:.2f} s/epoch); the sweep trains its fixed epochs, slower"
    )


def _key(cell: Cell) -> tuple[str, str, str]:
    return cell.dataset, cell.size, cell.method


def count_train_examples(config: SweepConfig) -> Callable[[str], int]:
    """Training examples per dataset, each dataset read once and only when asked."""
    from lipsweep.data import load_split

    counts: dict[str, int] = {}
    data_dir = Path(config.data_dir) if config.data_dir else None

    def count(dataset: str) -> int:
        if dataset not in counts:
            counts[dataset] = len(load_split(dataset, "train", data_dir))
        return counts[dataset]

    return count


Progress = Callable[[int, int, Cell], None]  # (cells done, cells, cell now) -> None


def make_plans(
    config: SweepConfig, out: Path | None = None, progress: Progress | None = None
) -> tuple[list[CellPlan], list[str]]:
    """Calibrate every cell (stored plans of ``out`` are kept); returns (plans, notes).

    A cell the paper's A100 table has no epochs for (LOT-L: it did not fit in 80 GB) is left
    out with a note, as the paper left it out. A cell whose budget buys no epoch stops the
    planning at once (InputError), before the other cells are calibrated."""
    plans, notes = [], []
    count = count_train_examples(config)
    cells = config.cells()
    for done, cell in enumerate(cells):
        if progress is not None:
            progress(done, len(cells), cell)
        stored = load_plan(out, cell) if out is not None else None
        if stored is not None:  # a resumed sweep keeps the epochs it started with
            plans.append(stored)
            continue
        try:
            plan = plan_cell(config, cell, count)
        except CalibrationError as error:
            if "did not fit" not in str(error):
                raise
            notes.append(f"left out: {error}")
            continue
        check_epochs(planned_trials(config, [plan]))
        note = slow_machine_note(config, plan)
        if note is not None:
            notes.append(note)
        plans.append(plan)
    return plans, notes
