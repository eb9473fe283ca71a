"""Speed and memory of a model on this hardware, and budgets turned into epochs.

The paper times training batches (forward, backward, SGD step) on an A100 and sets
``epochs = floor(budget / seconds_per_epoch)`` (PAPER.md section 3). We do the same with
synchronised timers on the hardware we run on, and also ship the paper's own 2h epoch table
(Table 8) so a user can reproduce its epoch counts exactly.
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

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


class CalibrationError(ValueError):
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
        raise CalibrationError(f"the paper's A100 table has no method {method!r}")
    epochs_2h = table[method][PAPER_SIZES.index(size)]
    if epochs_2h is None:
        raise CalibrationError(f"{method}-{size} on {dataset} did not fit in 80 GB in the paper")
    return math.floor(epochs_2h * budget_s / PAPER_BUDGET_S)


def epochs_for_budget(seconds_per_epoch: float, budget_s: float) -> int:
    """floor(budget / seconds per epoch), as the paper does."""
    return math.floor(budget_s / seconds_per_epoch)


def device_name(device: torch.device) -> str:
    """A stable name of the hardware, used to key calibrations."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu:{platform.machine()}:{os.cpu_count()}cores:{threads}threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator statistics on a GPU; on a CPU the
    peak resident set size above the entry level, sampled every millisecond by a thread
    (allocations shorter than a millisecond can be missed)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss_bytes()
            self._sampled = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._sampled = max(self._sampled, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self._sampled = max(self._sampled, _rss_bytes())
            self.peak_bytes = self._sampled - self._base


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def timed(device: torch.device) -> Iterator[list[float]]:
    """Wall time of the block with the device synchronised at both ends (seconds in out[0])."""
    out: list[float] = []
    synchronize(device)
    start = time.perf_counter()
    yield out
    synchronize(device)
    out.append(time.perf_counter() - start)


@dataclass
class Timing:
    """One model's speed and memory at one batch size (PAPER.md section 4)."""

    device: str
    batch_size: int
    train_batch_s: float
    inference_batch_s: float
    caching_s: float
    train_peak_bytes: int
    inference_peak_bytes: int

    @property
    def train_throughput(self) -> float:
        return self.batch_size / self.train_batch_s

    @property
    def inference_throughput(self) -> float:
        return self.batch_size / self.inference_batch_s


def time_training(
    model: nn.Module, inputs: torch.Tensor, batches: int, warmup: int = 1
) -> tuple[float, int]:
    """Mean seconds of forward + sum().backward() + SGD(momentum) step, and the peak memory of
    the timed batches (optimizer state included), as the paper's evaluator measures them."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(inputs).sum().backward()
        optimizer.step()

    for _ in range(warmup):
        one_step()
    with PeakMemory(inputs.device) as memory, timed(inputs.device) as elapsed:
        for _ in range(batches):
            one_step()
    return elapsed[0] / batches, memory.peak_bytes


def time_inference(
    model: nn.Module, inputs: torch.Tensor, batches: int
) -> tuple[float, float, int]:
    """(mean seconds per cached eval batch, caching time of the first batch, peak memory).

    The first eval batch builds the cached weights; the paper reports its extra cost as
    caching time = t_0 - mean(t_1..t_n)."""
    model.eval()
    with torch.no_grad(), PeakMemory(inputs.device) as memory:
        with timed(inputs.device) as first:
            model(inputs)
        with timed(inputs.device) as rest:
            for _ in range(batches):
                model(inputs)
    mean = rest[0] / batches
    return mean, max(first[0] - mean, 0.0), memory.peak_bytes


def measure_model(
    build: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    batch_size: int,
    device: torch.device,
    batches: int = 10,
    warmup: int = 1,
) -> Timing:
    """Time and memory of training and cached inference; a fresh model for each, as the
    paper builds one per measurement."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, *input_shape, generator=generator).to(device)
    train_s, train_bytes = time_training(build().to(device), inputs, batches, warmup)
    infer_s, caching_s, infer_bytes = time_inference(build().to(device), inputs, batches)
    return Timing(
        device=device_name(device),
        batch_size=batch_size,
        train_batch_s=train_s,
        inference_batch_s=infer_s,
        caching_s=caching_s,
        train_peak_bytes=train_bytes,
        inference_peak_bytes=infer_bytes,
    )


@dataclass
class Calibration:
    """Seconds per epoch of one cell on one device, the basis of every epoch budget."""

    device: str
    dataset: str
    size: str
    method: str
    batch_size: int
    train_examples: int
    train_batch_s: float

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.train_examples / self.batch_size)

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_batch_s * self.batches_per_epoch

    def epochs(self, budget_s: float) -> int:
        return epochs_for_budget(self.seconds_per_epoch, budget_s)


class CalibrationCache:
    """Calibrations on disk (JSON), keyed by (device, dataset, size, method, batch size)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(device: str, dataset: str, size: str, method: str, batch_size: int) -> str:
        return f"{device}|{dataset}|{size}|{method}|{batch_size}"

    def load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text())

    def get(
        self, device: str, dataset: str, size: str, method: str, batch_size: int
    ) -> Calibration | None:
        entry = self.load().get(self.key(device, dataset, size, method, batch_size))
        return Calibration(**entry) if entry else None

    def put(self, calibration: Calibration) -> None:
        entries = self.load()
        c = calibration
        entries[self.key(c.device, c.dataset, c.size, c.method, c.batch_size)] = asdict(c)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(temporary, self.path)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIPSWEEP_CACHE", Path.home() / ".cache" / "lipsweep"))


def calibrate_cell(
    dataset: str,
    size: str,
    method: str,
    batch_size: int,
    train_examples: int,
    device: torch.device,
    cache: CalibrationCache | None = None,
    batches: int = 5,
) -> Calibration:
    """Seconds per epoch of a cell on this device: timed training batches (after a warm-up)
    times batches per epoch. Cached per (device, dataset, size, method, batch size)."""
    from lipsweep.data import DATASETS
    from lipsweep.model import build_model

    name = device_name(device)
    cached = cache.get(name, dataset, size, method, batch_size) if cache else None
    if cached is not None:
        cached.train_examples = train_examples
        return cached
    info = DATASETS[dataset]
    shape = (batch_size, info.channels, info.image_size, info.image_size)
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    model = build_model(method, size, dataset).to(device)
    batch_s, _ = time_training(model, inputs, batches=batches, warmup=1)
    calibration = Calibration(name, dataset, size, method, batch_size, train_examples, batch_s)
    if cache is not None:
        cache.put(calibration)
    return calibration
