"""The final stage: each cell's selected hyperparameters trained at every budget on the full
training set, evaluated on the test set."""

from __future__ import annotations

import random
from collections.abc import Callable

from lipsweep.plan import PlannedTrial
from lipsweep.results.store import read_attempts
from lipsweep.select import ended_search_trials, select_best
from lipsweep.trainable import Launch, TrialTask, execute_grid

Monitor = Callable[[str], None]


def final_seed(sweep_seed: int, planned: PlannedTrial) -> int:
    return random.Random(f"{sweep_seed}/{planned.trial_id}").randrange(1000)


def final_tasks(launch: Launch, planned: list[PlannedTrial], monitor: Monitor) -> list[TrialTask]:
    """The final runs that can start now: a cell's search must have ended (selecting earlier
    could pick other hyperparameters later) with at least one completed trial."""
    config = launch.config
    attempts = read_attempts(launch.folder)
    tasks = []
    for trial in planned:
        ended = ended_search_trials(attempts, trial.cell, config.max_retries)
        if ended < config.trials:
            monitor(
                f"{trial.cell}: search incomplete ({ended} of {config.trials} trials ended), "
                "no final run yet: `lipsweep resume` finishes it"
            )
            continue
        best = select_best(attempts, trial.cell)
        if best is None:
            monitor(f"{trial.cell}: no completed search trial, no final run")
            continue
        lr, wd = float(best["lr"]), float(best["weight_decay"])
        tasks.append(launch.task(trial, lr, wd, final_seed(config.seed, trial)))
    return tasks


def run_finals(launch: Launch, planned: list[PlannedTrial], monitor: Monitor) -> int:
    """Run the final runs that can start; return how many the GPU-hour cap kept out."""
    tasks = final_tasks(launch, planned, monitor)
    monitor(f"final: {len(tasks)} runs")
    return execute_grid(tasks, launch.config, launch.folder, "final", launch.tag)
