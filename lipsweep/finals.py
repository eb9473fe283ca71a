"""The final stage: each cell's selected hyperparameters trained at every budget on the full
training set, evaluated on the test set."""

from __future__ import annotations

import random
from collections.abc import Callable

import pandas as pd

from lipsweep.halving import search_done
from lipsweep.plan import PlannedTrial
from lipsweep.results.store import read_attempts
from lipsweep.select import search_progress, select_best
from lipsweep.trainable import Launch, TrialTask, execute_grid

Monitor = Callable[[str], None]
LOSS_COLUMNS = ("loss_temperature", "loss_offset")  # the selected trial's loss (null: paper's)


def final_seed(sweep_seed: int, planned: PlannedTrial) -> int:
    return random.Random(f"{sweep_seed}/{planned.trial_id}").randrange(1000)


def final_tasks(
    launch: Launch, planned: list[PlannedTrial], searched: list[PlannedTrial], monitor: Monitor
) -> list[TrialTask]:
    """The final runs that can start now: a cell's search must have ended (selecting earlier
    could pick other hyperparameters later; a halving search: its last rung) with at least
    one completed trial. ``searched``: the planned search trials, whose epochs give the rungs."""
    config = launch.config
    attempts = read_attempts(launch.folder)
    tasks = []
    for trial in planned:
        epochs = max(t.epochs for t in searched if t.cell == trial.cell)
        rungs = search_progress(attempts, trial.cell, config, epochs)
        if not search_done(rungs):
            ended = sum(rung.ended for rung in rungs)
            expected = sum(
                rung.rung.size if rung.expected is None else rung.expected for rung in rungs
            )
            monitor(
                f"{trial.cell}: search incomplete ({ended} of {expected} trials ended), "
                "no final run yet: `lipsweep resume` finishes it"
            )
            continue
        best = select_best(attempts, trial.cell)
        if best is None:
            monitor(f"{trial.cell}: no completed search trial, no final run")
            continue
        lr, wd = float(best["lr"]), float(best["weight_decay"])
        loss = [None if pd.isna(best[key]) else float(best[key]) for key in LOSS_COLUMNS]
        tasks.append(launch.task(trial, lr, wd, final_seed(config.seed, trial), *loss))
    return tasks


def run_finals(
    launch: Launch, planned: list[PlannedTrial], searched: list[PlannedTrial], monitor: Monitor
) -> int:
    """Run the final runs that can start; return how many the GPU-hour cap kept out."""
    tasks = final_tasks(launch, planned, searched, monitor)
    monitor(f"final: {len(tasks)} runs")
    return execute_grid(tasks, launch.config, launch.folder, "final", launch.tag)
