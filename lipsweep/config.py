"""A sweep's settings: ``SweepConfig``, validated on construction (from the CLI, a preset or a
hand-edited sweep.json alike), its presets, and the backend it runs on.

sweep.json holds ``asdict(config)`` plus ``"format": FORMAT``. A re-launch on the same folder
must match it (it resumes); ``lipsweep resume`` runs it, on the backend it names.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lipsweep.atomic import write_text_atomic
from lipsweep.budget import Budget, BudgetError
from lipsweep.errors import InputError
from lipsweep.layers.registry import SPECS, is_plugin
from lipsweep.names import DATASETS, SIZES, Cell

FORMAT = 1  # of sweep.json
CONFIG_FILE = "sweep.json"

# The paper's search space, both log-uniform (PAPER.md section 3).
LR_RANGE = (1e-4, 1e-1)
WEIGHT_DECAY_RANGE = (10**-5.5, 10**-3.5)
BACKENDS = ("local", "ray", "slurm")
CALIBRATIONS = ("measure", "paper-a100")
SAMPLERS = ("random", "tpe")
SEARCHES = ("random", "halving")  # the paper's random search; successive halving (halving.py)
# Dimensions --search-space may name: the paper searches lr and wd; the offset cross-entropy's
# temperature and offset (lipsweep/loss.py) are optional. Their default ranges are log-uniform
# over a factor 4 either side of the paper's fixed values, tau = 0.25 and m = 2 sqrt(2) 36/255.
SEARCH_DIMENSIONS = ("lr", "wd", "temperature", "offset")
PAPER_TEMPERATURE = 0.25  # = lipsweep.loss.DEFAULT_TEMPERATURE (config sits below loss)
PAPER_OFFSET = 2 * math.sqrt(2) * 36 / 255  # = lipsweep.loss.DEFAULT_MARGIN
TEMPERATURE_RANGE = (PAPER_TEMPERATURE / 4, PAPER_TEMPERATURE * 4)
OFFSET_RANGE = (PAPER_OFFSET / 4, PAPER_OFFSET * 4)

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's protocol (PAPER.md section 3): 3 datasets x 4 sizes x 7 methods, 16 trials
    # per cell at 2h, final runs at the requested budgets (24h unless --budget says).
    "paper": {
        "datasets": ("cifar10", "cifar100", "tiny-imagenet"),
        "sizes": ("XS", "S", "M", "L"),
        "methods": ("aol", "bcop", "cpl", "cayley", "lot", "sll", "soc"),
        "budgets": ("24h",),
        "trials": 16,
        "search_budget": "2h",
    },
    # The whole protocol in a few minutes on 2 CPU cores, on real data that needs no download
    # (scikit-learn's digits): fixed epoch counts, so a slow machine takes longer but never
    # buys 0 epochs, and a learning-rate range in which every method here learns on digits.
    "quickstart": {
        "datasets": ("digits",),
        "sizes": ("XS",),
        "methods": ("aol", "cpl", "sll", "soc"),
        "budgets": ("1m",),
        "trials": 3,
        "search_budget": "30s",
        "search_epochs": 8,
        "final_epochs": 20,
        "batch_size": 64,
        "lr_range": (0.03, 0.3),
    },
}


@dataclass(frozen=True)
class SlurmOptions:
    """The sbatch resources of every cell's job (None: the cluster's default)."""

    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str | None = None  # sbatch --mem, e.g. "16G"
    time: str = "24:00:00"  # sbatch --time: MM, HH:MM:SS, D-HH, D-HH:MM[:SS]
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 256
    max_num_timeout: int = 3  # requeues after a time limit, per job

    def __post_init__(self) -> None:
        time_minutes(self.time)
        for name in ("gpus_per_node", "cpus_per_task", "array_parallelism", "max_num_timeout"):
            low = 1 if name in ("cpus_per_task", "array_parallelism") else 0
            if getattr(self, name) < low:
                option = "--" + name.replace("_", "-")
                raise InputError(f"{option} must be at least {low}, got {getattr(self, name)}")

    @staticmethod
    def from_file(path: Path) -> SlurmOptions:
        """Options from a TOML or JSON file (keys as the fields, or under [slurm])."""
        try:
            text = path.read_text()
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except FileNotFoundError:
            raise InputError(f"--slurm-config {path} does not exist") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path} is not valid TOML/JSON: {error}") from None
        return SlurmOptions.from_dict(data.get("slurm", data), str(path))

    @staticmethod
    def from_dict(data: dict[str, Any], where: str) -> SlurmOptions:
        known = {f.name for f in fields(SlurmOptions)}
        unknown = set(data) - known
        if unknown:
            raise InputError(
                f"{where}: unknown SLURM options {sorted(unknown)}; known: {sorted(known)}"
            )
        return SlurmOptions(**data)


def time_minutes(text: str) -> int:
    """sbatch --time in minutes: "30", "2:00:00", "1-00", "1-12:00", "1-12:00:00"."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not match:
        raise InputError(f"--time {text!r}: use MM, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is None and second is None:
        return first  # plain minutes
    if days is None and third is None:
        return first + (second or 0) // 60  # MM:SS
    hours, minutes, seconds = first, second or 0, third or 0
    return (days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


@dataclass(frozen=True)
class SweepConfig:
    """Everything a launch decides; stored as sweep.json. Checked on construction."""

    sweep_id: str
    datasets: tuple[str, ...]
    sizes: tuple[str, ...]
    methods: tuple[str, ...]
    budgets: tuple[str, ...]  # final-stage budget labels, e.g. ("24h",)
    trials: int = 16
    search_budget: str = "2h"
    calibration: Literal["measure", "paper-a100"] = "measure"
    max_gpu_hours: float | None = None
    gpus_per_trial: float = 0.0
    cpus_per_trial: int = 1
    max_retries: int = 2  # new-seed retries of a NaN attempt
    final_seeds: int = 1  # final runs per budget, each its own seed (the paper: 1)
    sampler: Literal["random", "tpe"] = "random"
    search: Literal["random", "halving"] = "random"  # halving: rungs of growing epochs
    eta: int = 3  # halving: a rung keeps the best 1/eta and trains them eta times longer
    seed: int = 0
    batch_size: int = 256
    eval_every: int = 1
    data_dir: str | None = None
    max_examples: int | None = None  # smoke runs: first N examples of each split
    max_epochs: int | None = None  # smoke runs: cap the epochs any budget buys
    search_epochs: int | None = None  # train exactly this many epochs per search trial
    final_epochs: int | None = None  # train exactly this many epochs per final run
    checkpoint_every_epochs: int = 10  # attempts also checkpoint every 5 minutes
    lr_range: tuple[float, float] = LR_RANGE  # searched log-uniformly
    weight_decay_range: tuple[float, float] = WEIGHT_DECAY_RANGE  # searched log-uniformly
    search_space: tuple[str, ...] = ("lr", "wd")  # of SEARCH_DIMENSIONS; lr and wd always
    temperature_range: tuple[float, float] = TEMPERATURE_RANGE  # if searched: log-uniformly
    offset_range: tuple[float, float] = OFFSET_RANGE  # if searched: log-uniformly
    memory_per_trial_gib: float | None = None  # an attempt past it ends with status "oom"
    backend: Literal["local", "ray", "slurm"] = "local"
    address: str | None = None  # --backend ray: the cluster to join
    slurm: SlurmOptions | None = field(default=None)  # --backend slurm: each cell job's sbatch

    def __post_init__(self) -> None:
        check_config(self)
        # Canonical budget labels ("1d" -> "24h"), so ids and plans agree whatever was typed.
        object.__setattr__(self, "budgets", tuple(Budget.parse(b).label for b in self.budgets))
        object.__setattr__(self, "search_budget", Budget.parse(self.search_budget).label)

    def cells(self) -> list[Cell]:
        return [Cell(*key) for key in itertools.product(self.datasets, self.sizes, self.methods)]

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"

    def save(self, folder: Path) -> None:
        data = {"format": FORMAT, **asdict(self)}
        write_text_atomic(folder / CONFIG_FILE, json.dumps(data, indent=1))

    @staticmethod
    def load(folder: Path) -> SweepConfig:
        """The sweep stored in ``folder``; InputError naming the file if it is damaged."""
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise InputError(
                f"{folder} holds no sweep (no {CONFIG_FILE}): start one with `lipsweep launch`"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(
                f"{path} is not valid JSON ({error}): restore it or launch a new sweep"
            ) from None
        try:
            return config_from_dict(data)
        except InputError as error:
            raise InputError(f"{path}: {error}") from None


def config_from_dict(data: Any) -> SweepConfig:
    """A SweepConfig from sweep.json's contents, every key and value checked."""
    if not isinstance(data, dict):
        raise InputError("expected a JSON object of sweep settings")
    data = dict(data)
    version = data.pop("format", FORMAT)
    if version != FORMAT:
        raise InputError(f"format {version!r} is not {FORMAT}, the one this lipsweep reads")
    known = {f.name for f in fields(SweepConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown settings {unknown}; known: {sorted(known)}")
    missing = sorted(
        f.name
        for f in fields(SweepConfig)
        if f.name in ("sweep_id", "datasets", "sizes", "methods", "budgets") and f.name not in data
    )
    if missing:
        raise InputError(f"missing settings {missing}")
    for key in (
        "datasets", "sizes", "methods", "budgets", "lr_range", "weight_decay_range",
        "search_space", "temperature_range", "offset_range",
    ):  # fmt: skip
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    if isinstance(data.get("slurm"), dict):
        data["slurm"] = SlurmOptions.from_dict(data["slurm"], "slurm")
    try:
        return SweepConfig(**data)
    except TypeError as error:  # a value of the wrong type (a string where a number goes)
        raise InputError(f"a setting has the wrong type: {error}") from None


def _at_least(name: str, value: Any, low: float) -> None:
    if value is not None and (
        not isinstance(value, int | float) or isinstance(value, bool) or value < low
    ):
        bound = "0 or more" if low == 0 else f"at least {low:g}"
        raise InputError(f"--{name} must be {bound}, got {value!r}")


def _choices(name: str, values: Any, known: tuple[str, ...] | list[str], other: str = "") -> None:
    if not isinstance(values, tuple) or not values:
        raise InputError(f"--{name} is empty: give a comma-separated list of {', '.join(known)}")
    for value in values:
        if value not in known:
            what = name.rstrip("s")
            choices = ", ".join(known) + (f" {other}" if other else "")
            raise InputError(f"unknown {what} {value!r}: choose from {choices}")


def _positive_or_none(name: str, value: Any, unit: str = "") -> None:
    if value is not None and (
        not isinstance(value, int | float) or not value > 0 or math.isinf(value)
    ):
        raise InputError(f"--{name} must be positive{unit}, got {value!r}")


def _log_range(name: str, value: Any) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) for v in value)
    )
    if not ok or not 0 < value[0] < value[1]:
        raise InputError(f"--{name} needs 0 < LOW < HIGH (searched log-uniformly), got {value!r}")


def _search_space(space: Any) -> None:
    if not isinstance(space, tuple) or not all(isinstance(name, str) for name in space):
        raise InputError(f"--search-space must be a list such as lr,wd,temperature, got {space!r}")
    for name in space:
        if name not in SEARCH_DIMENSIONS:
            known = ", ".join(SEARCH_DIMENSIONS)
            raise InputError(
                f"unknown search dimension {name!r} in --search-space: choose from {known}"
            )
    if len(set(space)) != len(space) or not {"lr", "wd"} <= set(space):
        raise InputError(
            f"--search-space must name lr and wd, each dimension once, got {','.join(space)!r}"
        )


def check_config(config: SweepConfig) -> None:
    """Every value of a sweep, checked before any work; InputError says what to fix."""
    if not isinstance(config.sweep_id, str) or not re.fullmatch(
        r"[A-Za-z0-9_.-]+", config.sweep_id
    ):
        raise InputError(f"sweep_id {config.sweep_id!r} must be letters, digits, '_', '.' or '-'")
    _choices("datasets", config.datasets, DATASETS)
    _choices("sizes", config.sizes, SIZES)
    methods = config.methods if isinstance(config.methods, tuple) else ()  # else: _choices says
    plugins = [m for m in methods if isinstance(m, str) and is_plugin(m)]
    _choices("methods", config.methods, [*SPECS, *plugins], "or an import path mypkg.mod:Class")
    if not isinstance(config.budgets, tuple) or not config.budgets:
        raise InputError("--budget is empty: give budgets such as 2h,10h,24h")
    try:
        for budget in (*config.budgets, config.search_budget):
            Budget.parse(str(budget))
    except BudgetError as error:
        raise InputError(str(error)) from None
    for name, value, low in (
        ("trials", config.trials, 1),
        ("cpus-per-trial", config.cpus_per_trial, 1),
        ("batch-size", config.batch_size, 1),
        ("eval-every", config.eval_every, 1),
        ("max-examples", config.max_examples, 1),
        ("max-epochs", config.max_epochs, 1),
        ("search-epochs", config.search_epochs, 1),
        ("final-epochs", config.final_epochs, 1),
        ("checkpoint-every", config.checkpoint_every_epochs, 1),
        ("max-retries", config.max_retries, 0),
        ("final-seeds", config.final_seeds, 1),
        ("gpus-per-trial", config.gpus_per_trial, 0),
        ("seed", config.seed, 0),
        ("eta", config.eta, 2),
    ):
        _at_least(name, value, low)
    if not isinstance(config.eta, int):
        raise InputError(f"--eta must be a whole number of at least 2, got {config.eta!r}")
    _positive_or_none("max-gpu-hours", config.max_gpu_hours)
    _positive_or_none("memory-per-trial", config.memory_per_trial_gib, " (GiB)")
    _log_range("lr-range", config.lr_range)
    _log_range("wd-range", config.weight_decay_range)
    _log_range("temperature-range", config.temperature_range)
    _log_range("offset-range", config.offset_range)
    _search_space(config.search_space)
    for name, value, known in (
        ("calibration", config.calibration, CALIBRATIONS),
        ("sampler", config.sampler, SAMPLERS),
        ("search", config.search, SEARCHES),
        ("backend", config.backend, BACKENDS),
    ):
        if value not in known:
            raise InputError(f"unknown --{name} {value!r}: choose one of {', '.join(known)}")
    fixed = (config.search_epochs, config.final_epochs)
    if None not in fixed and fixed[0] != fixed[1] and config.search_budget in config.budgets:
        raise InputError(
            "--search-epochs and --final-epochs differ but the search budget is also a final "
            "budget: give them different budgets"
        )
    if config.backend == "ray" and not config.address:
        raise InputError("--backend ray needs --address HOST:PORT of a running Ray cluster")


def sweep_id_for(out: Path) -> str:
    """A path-safe sweep id from the output folder's name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", out.resolve().name) or "sweep"


def preset_config(preset: str | None, out: Path, **options: Any) -> SweepConfig:
    """A SweepConfig from a preset (default "paper") and the options given (None: not given)."""
    name = preset or "paper"
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = {**PRESETS[name], "sweep_id": sweep_id_for(out)}
    values.update({key: value for key, value in options.items() if value is not None})
    return SweepConfig(**values)
