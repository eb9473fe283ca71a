"""The paper's protocol as a sweep: search, select, final runs, with Optuna and Ray Tune.

A sweep lives in one folder (``--out``):

    sweep.json                 the launch settings (a re-launch must match them: it resumes)
    optuna.journal             Optuna studies, one per cell (open it in optuna-dashboard)
    attempts/<attempt_id>/     checkpoints of every attempt (resumable)
    results/                   the Parquet dataset (lipsweep.results), the source of truth
    ledger/                    GPU-hour reservations of running attempts

Flow: each cell (dataset, size, method) is calibrated; Ray Tune runs every cell's ``trials``
search trials, asked from the cell's Optuna study through Tune's OptunaSearch (seeded
RandomSampler by default; lipsweep.search); the completed trial with the best final-epoch
validation CRA at 36/255 is selected; the final runs train with its lr and wd at each budget on
the full training set. A NaN attempt is retried with a new seed. Optuna's journal says which
trials exist (stable numbers, durable), the Parquet dataset which attempts ended, so a killed
driver re-launched runs exactly what is missing.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from lipsweep.budget import format_budget, parse_budget

# The paper's search space, both log-uniform (PAPER.md section 3).
LR_RANGE = (1e-4, 1e-1)
WEIGHT_DECAY_RANGE = (10**-5.5, 10**-3.5)
TERMINAL = ("completed", "nan", "oom", "failed")


@dataclass(frozen=True)
class SweepConfig:
    """Everything a launch decides; stored as sweep.json."""

    sweep_id: str
    datasets: tuple[str, ...]
    sizes: tuple[str, ...]
    methods: tuple[str, ...]
    budgets: tuple[str, ...]  # final-stage budgets, e.g. ("24h",)
    trials: int = 16
    search_budget: str = "2h"
    calibration: Literal["measure", "paper-a100"] = "measure"
    max_gpu_hours: float | None = None
    gpus_per_trial: float = 0.0
    cpus_per_trial: int = 1
    max_retries: int = 2  # new-seed retries of a NaN attempt
    sampler: Literal["random", "tpe"] = "random"
    seed: int = 0
    batch_size: int = 256
    eval_every: int = 1
    data_dir: str | None = None
    max_examples: int | None = None  # quickstart: first N examples of each split
    max_epochs: int | None = None  # quickstart: cap the epochs any budget buys
    checkpoint_every_epochs: int = 10  # attempts also checkpoint every 5 minutes
    lr_range: tuple[float, float] = LR_RANGE  # searched log-uniformly
    weight_decay_range: tuple[float, float] = WEIGHT_DECAY_RANGE  # searched log-uniformly
    memory_per_trial_gib: float | None = None  # an attempt past it ends with status "oom"

    def cells(self) -> list[tuple[str, str, str]]:
        return list(itertools.product(self.datasets, self.sizes, self.methods))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sweep.json").write_text(json.dumps(asdict(self), indent=1))

    @staticmethod
    def load(folder: Path) -> SweepConfig:
        data = json.loads((folder / "sweep.json").read_text())
        for key in ("datasets", "sizes", "methods", "budgets", "lr_range", "weight_decay_range"):
            if key in data:
                data[key] = tuple(data[key])
        return SweepConfig(**data)


def device_share(gpus: float) -> float:
    """Devices an attempt is charged for: its GPUs (0.5 when two trials share one GPU), or
    one CPU slot when it runs without a GPU."""
    return gpus if gpus > 0 else 1.0


@dataclass(frozen=True)
class PlannedTrial:
    """One trial the sweep will run (hyperparameters are filled in when it is asked)."""

    stage: Literal["search", "final"]
    dataset: str
    size: str
    method: str
    budget: str
    index: int
    epochs: int
    seconds_per_epoch: float

    @property
    def trial_id(self) -> str:
        return f"{self.stage}-{self.dataset}-{self.size}-{self.method}-{self.budget}-t{self.index}"

    def device_hours(self, gpus: float) -> float:
        return self.epochs * self.seconds_per_epoch * device_share(gpus) / 3600


@dataclass
class CellPlan:
    dataset: str
    size: str
    method: str
    seconds_per_epoch: float
    epochs: dict[str, int] = field(default_factory=dict)  # budget label -> epochs


def cell_name(dataset: str, size: str, method: str) -> str:
    return f"{dataset}-{size}-{method}"


def plan_path(folder: Path, dataset: str, size: str, method: str) -> Path:
    return folder / "plans" / f"{cell_name(dataset, size, method)}.json"


def save_plan(folder: Path, plan: CellPlan) -> None:
    """Keep a cell's plan for the sweep's life: a resume or a requeue on other hardware must
    train the epochs the sweep started with (a checkpoint's schedule depends on them)."""
    path = plan_path(folder, plan.dataset, plan.size, plan.method)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(plan)))
    os.replace(temporary, path)


def load_plan(folder: Path, dataset: str, size: str, method: str) -> CellPlan | None:
    path = plan_path(folder, dataset, size, method)
    return CellPlan(**json.loads(path.read_text())) if path.exists() else None


def plan_cell(config: SweepConfig, dataset: str, size: str, method: str, device: str) -> CellPlan:
    """Calibrate one cell: seconds per epoch and the epochs each budget buys."""
    import torch

    from lipsweep.data import load_split
    from lipsweep.measure import (
        CalibrationCache,
        calibrate_cell,
        default_cache_dir,
        paper_epochs,
    )

    labels = (config.search_budget, *config.budgets)
    if config.calibration == "paper-a100":  # needs no data and no hardware
        epochs = {b: paper_epochs(dataset, size, method, parse_budget(b)) for b in labels}
        spe = parse_budget("2h") / max(paper_epochs(dataset, size, method, 7200), 1)
    else:
        data_dir = Path(config.data_dir) if config.data_dir else None
        examples = len(load_split(dataset, "train", data_dir))
        if config.max_examples is not None:
            examples = min(examples, config.max_examples)
        cache = CalibrationCache(default_cache_dir() / "calibrations.json")
        calibration = calibrate_cell(
            dataset, size, method, config.batch_size, examples, torch.device(device), cache
        )
        epochs = {b: calibration.epochs(parse_budget(b)) for b in labels}
        spe = calibration.seconds_per_epoch
    if config.max_epochs is not None:
        epochs = {b: min(e, config.max_epochs) for b, e in epochs.items()}
    return CellPlan(dataset, size, method, spe, epochs)


def planned_trials(config: SweepConfig, plans: list[CellPlan]) -> list[PlannedTrial]:
    """Every trial of the sweep: ``trials`` search trials per cell, one final per budget."""
    trials = []
    for plan in plans:
        cell = (plan.dataset, plan.size, plan.method)
        search = plan.epochs[config.search_budget]
        for index in range(config.trials):
            trials.append(
                PlannedTrial(
                    "search", *cell, config.search_budget, index, search, plan.seconds_per_epoch
                )
            )
        for budget in config.budgets:
            trials.append(
                PlannedTrial("final", *cell, budget, 0, plan.epochs[budget], plan.seconds_per_epoch)
            )
    return trials


def makespan_hours(trials: list[PlannedTrial], gpus: float, devices: int) -> float:
    """Wall hours of the sweep on ``devices`` devices (GPUs, or CPU slots when ``gpus`` is 0):
    greedy longest-first packing within each stage; the final stage starts after the search."""
    slots = max(math.floor(devices / gpus), 1) if gpus > 0 else max(devices, 1)
    total = 0.0
    for stage in ("search", "final"):
        loads = [0.0] * slots
        for hours in sorted(
            (t.device_hours(1.0) for t in trials if t.stage == stage), reverse=True
        ):
            loads[loads.index(min(loads))] += hours
        total += max(loads)
    return total


def check_epochs(trials: list[PlannedTrial]) -> None:
    """A budget that buys no epoch is an input error, found before any work."""
    short = [t for t in trials if t.epochs < 1]
    if short:
        t = short[0]
        raise ValueError(
            f"budget {t.budget} buys 0 epochs of {t.method}-{t.size} on {t.dataset} "
            f"({t.seconds_per_epoch:.1f} s/epoch): use a longer budget"
        )


def check_cap(config: SweepConfig, trials: list[PlannedTrial]) -> None:
    """--max-gpu-hours too small for even one attempt: refuse before any work."""
    if config.max_gpu_hours is None:
        return
    smallest = min(t.device_hours(config.gpus_per_trial) for t in trials)
    if smallest > config.max_gpu_hours:
        raise ValueError(
            f"--max-gpu-hours {config.max_gpu_hours:g} is smaller than the cheapest attempt "
            f"({smallest:.3g} GPU-hours): raise it or shorten the budgets"
        )


def budget_label(text: str) -> str:
    """The canonical label of a budget ("1d" -> "24h"), validating it."""
    return format_budget(parse_budget(text))


def summarize(config: SweepConfig, trials: list[PlannedTrial], devices: int) -> dict[str, Any]:
    hours = sum(t.device_hours(config.gpus_per_trial) for t in trials)
    return {
        "cells": len({(t.dataset, t.size, t.method) for t in trials}),
        "search trials": sum(t.stage == "search" for t in trials),
        "final trials": sum(t.stage == "final" for t in trials),
        "GPU-hours (no retries)": hours,
        "makespan hours": makespan_hours(trials, config.gpus_per_trial, devices),
    }
