"""The plan of a sweep: every cell calibrated, the trials it will run, their device-hours and
the makespan. Plans are stored in ``<sweep>/plans/<cell>.json`` for the sweep's life: a resume
or a requeue on other hardware trains the epochs the sweep started with (a checkpoint's
one-cycle schedule depends on them)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lipsweep.atomic import write_text_atomic
from lipsweep.config import SweepConfig
from lipsweep.errors import InputError
from lipsweep.halving import cell_rungs
from lipsweep.names import Cell, Stage, TrialId, device_hours

PLANS = "plans"


@dataclass(frozen=True)
class PlannedTrial:
    """One trial the sweep will run (hyperparameters are filled in when it is asked)."""

    stage: Stage
    cell: Cell
    budget: str
    index: int
    epochs: int
    seconds_per_epoch: float
    rung: int | None = None  # --search halving: the search trial's rung (0 first)

    @property
    def id(self) -> TrialId:
        return TrialId(self.stage, self.cell, self.budget, self.index)

    @property
    def trial_id(self) -> str:
        return str(self.id)

    def device_hours(self, gpus: float) -> float:
        return device_hours(self.epochs * self.seconds_per_epoch, gpus)


@dataclass
class CellPlan:
    dataset: str
    size: str
    method: str
    seconds_per_epoch: float
    epochs: dict[str, int] = field(default_factory=dict)  # budget label -> epochs
    how: str = ""  # how seconds per epoch were obtained, for the plan's table

    @property
    def cell(self) -> Cell:
        return Cell(self.dataset, self.size, self.method)


def plan_path(folder: Path, cell: Cell) -> Path:
    return folder / PLANS / f"{cell.name}.json"


def save_plan(folder: Path, plan: CellPlan) -> None:
    write_text_atomic(plan_path(folder, plan.cell), json.dumps(asdict(plan)))


def load_plan(folder: Path, cell: Cell) -> CellPlan | None:
    path = plan_path(folder, cell)
    if not path.exists():
        return None
    try:
        return CellPlan(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise InputError(
            f"{path} is damaged ({error}): delete it and run `lipsweep resume` to re-plan the cell"
        ) from None


def planned_trials(config: SweepConfig, plans: list[CellPlan]) -> list[PlannedTrial]:
    """Every trial of the sweep: ``trials`` search trials per cell (halving: every rung's, each
    at its rung's epochs, at most as many as the rung may run), ``final_seeds`` finals per
    budget (trial index = seed index; each final's seed is drawn from its trial id)."""
    trials = []
    halving = config.search == "halving"
    for plan in plans:
        spe = plan.seconds_per_epoch
        for rung in cell_rungs(config, plan.epochs[config.search_budget]):
            for index in rung.indices:
                trials.append(
                    PlannedTrial(
                        "search", plan.cell, config.search_budget, index, rung.epochs, spe,
                        rung.number if halving else None,
                    )
                )  # fmt: skip
        for budget in config.budgets:
            for index in range(config.final_seeds):
                final = PlannedTrial("final", plan.cell, budget, index, plan.epochs[budget], spe)
                trials.append(final)
    return trials


def makespan_hours(trials: list[PlannedTrial], gpus: float, devices: int) -> float:
    """Wall hours of the sweep on ``devices`` devices (GPUs, or CPU slots when ``gpus`` is 0):
    greedy longest-first packing within each phase; the phases run one after the other (the
    search, or each rung of a halving search, then the finals)."""
    slots = max(math.floor(devices / gpus), 1) if gpus > 0 else max(devices, 1)
    total = 0.0
    for phase in sorted({_phase(t) for t in trials}):
        loads = [0.0] * slots
        for hours in sorted(
            (t.device_hours(1.0) for t in trials if _phase(t) == phase), reverse=True
        ):
            loads[loads.index(min(loads))] += hours
        total += max(loads)
    return total


def _phase(trial: PlannedTrial) -> tuple[int, int]:
    return (0 if trial.stage == "search" else 1, -1 if trial.rung is None else trial.rung)


def check_epochs(trials: list[PlannedTrial]) -> None:
    """A budget that buys no epoch is an input error, found before any work."""
    short = [t for t in trials if t.epochs < 1]
    if short:
        t = short[0]
        raise InputError(
            f"budget {t.budget} buys 0 epochs of {t.cell.method}-{t.cell.size} on "
            f"{t.cell.dataset} ({t.seconds_per_epoch:.1f} s/epoch): use a longer budget"
        )


def check_cap(config: SweepConfig, trials: list[PlannedTrial]) -> None:
    """--max-gpu-hours too small for even one attempt: refuse before any work."""
    if config.max_gpu_hours is None or not trials:
        return
    smallest = min(t.device_hours(config.gpus_per_trial) for t in trials)
    if smallest > config.max_gpu_hours:
        raise InputError(
            f"--max-gpu-hours {config.max_gpu_hours:g} is smaller than the cheapest attempt "
            f"({smallest:.3g} GPU-hours): raise it or shorten the budgets"
        )


def hours_unit(config: SweepConfig) -> str:
    """GPU-hours on GPUs; device-hours (CPU slots) otherwise."""
    return "GPU-hours" if config.gpus_per_trial > 0 else "device-hours"


def summarize(config: SweepConfig, trials: list[PlannedTrial], devices: int) -> dict[str, Any]:
    hours = sum(t.device_hours(config.gpus_per_trial) for t in trials)
    return {
        "cells": len({t.cell for t in trials}),
        "search trials": sum(t.stage == "search" for t in trials),
        "final trials": sum(t.stage == "final" for t in trials),
        f"{hours_unit(config)} (no retries)": hours,
        "makespan hours": makespan_hours(trials, config.gpus_per_trial, devices),
    }


def search_hours(config: SweepConfig, plans: list[CellPlan], search: str) -> float:
    """Device-hours of every cell's search (no retries) with ``search`` (random or halving)."""
    trials = planned_trials(replace(config, search=search), plans)
    return sum(t.device_hours(config.gpus_per_trial) for t in trials if t.stage == "search")


def rungs_text(config: SweepConfig, plan: CellPlan) -> str:
    """A cell's search as configurations x epochs per rung: "16x93 6x279 2x837"."""
    rungs = cell_rungs(config, plan.epochs[config.search_budget])
    return " ".join(f"{rung.size}x{rung.epochs}" for rung in rungs)
