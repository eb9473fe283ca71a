"""`lipsweep status DIR`: where a sweep stands, per cell, from its files alone.

Reads sweep.json, the Parquet dataset and the attempts' progress files; starts nothing (no Ray,
no torch), so it is cheap to run while the sweep is running, on any machine that sees the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.table import Table

from lipsweep.results import read_attempts
from lipsweep.sweep import SweepConfig, cell_name


def running_attempts(folder: Path, finished: set[str]) -> dict[str, int]:
    """attempt_id -> epochs done, for attempts with progress but no result yet (running, or
    interrupted and waiting for `lipsweep resume`)."""
    running = {}
    for progress in (folder / "attempts").glob("*/progress.json"):
        attempt_id = progress.parent.name
        if attempt_id not in finished:
            running[attempt_id] = int(json.loads(progress.read_text())["epoch"])
    return running


def cell_row(
    config: SweepConfig,
    attempts: pd.DataFrame,
    running: dict[str, int],
    dataset: str,
    size: str,
    method: str,
) -> list[str]:
    cell = cell_name(dataset, size, method)
    mine = (
        attempts[
            (attempts["dataset"] == dataset)
            & (attempts["size"] == size)
            & (attempts["method"] == method)
        ]
        if not attempts.empty
        else attempts
    )
    search = mine[mine["stage"] == "search"] if not mine.empty else mine
    finals = mine[mine["stage"] == "final"] if not mine.empty else mine
    last = (
        search.sort_values("attempt").drop_duplicates("trial_id", keep="last")
        if not search.empty
        else search
    )
    done = int((last["status"] == "completed").sum()) if not last.empty else 0
    failed = len(last) - done
    now = sum(1 for a in running if a.startswith(f"search-{cell}-"))
    best = last.loc[last["status"] == "completed", "cra_36"].max() if done else float("nan")
    final_done = int((finals["status"] == "completed").sum()) if not finals.empty else 0
    hours = float(mine["gpu_hours"].sum()) if not mine.empty else 0.0
    return [
        cell,
        f"{done}/{config.trials}",
        str(now),
        str(failed),
        "-" if pd.isna(best) else f"{best:.3f}",
        f"{final_done}/{len(config.budgets)}",
        f"{hours:.3f}",
    ]


def remaining_hours(config: SweepConfig, attempts: pd.DataFrame) -> float:
    """Device-hours still to spend, estimated from the mean attempt of each stage so far."""
    total_trials = {
        "search": config.trials * len(config.cells()),
        "final": len(config.budgets) * len(config.cells()),
    }
    hours = 0.0
    for stage, planned in total_trials.items():
        mine = attempts[attempts["stage"] == stage] if not attempts.empty else attempts
        done = mine["trial_id"].nunique() if not mine.empty else 0
        mean = mine["gpu_hours"].mean() if not mine.empty else float("nan")
        if done < planned and not pd.isna(mean):
            hours += (planned - done) * mean
    return hours


def slurm_jobs(folder: Path) -> dict[str, str]:
    """cell -> "<latest job id> <state>" for a sweep launched with --backend slurm, else {}."""
    from lipsweep.backends.slurm import job_label, job_states, read_jobs

    latest = {cell: ids[-1] for cell, ids in read_jobs(folder).items() if ids}
    if not latest:
        return {}
    try:
        states = job_states(list(latest.values()))
    except FileNotFoundError:  # no SLURM client on this machine
        states = {}
    return {cell: job_label(folder, job_id, states.get(job_id)) for cell, job_id in latest.items()}


def status_table(folder: Path) -> Table:
    config = SweepConfig.load(folder)
    attempts = read_attempts(folder)
    finished = set(attempts["attempt_id"]) if not attempts.empty else set()
    running = running_attempts(folder, finished)
    table = Table(title=f"sweep {config.sweep_id} in {folder}")
    jobs = slurm_jobs(folder)
    columns = ["cell", "search done", "running", "failed", "best val CRA36", "finals", "GPU-h"]
    for column in columns + (["SLURM job"] if jobs else []):
        table.add_column(column, justify="left" if column in ("cell", "SLURM job") else "right")
    for dataset, size, method in config.cells():
        row = cell_row(config, attempts, running, dataset, size, method)
        table.add_row(*row, *([jobs.get(row[0], "-")] if jobs else []))
    spent = float(attempts["gpu_hours"].sum()) if not attempts.empty else 0.0
    cap = f" of {config.max_gpu_hours:g}" if config.max_gpu_hours else ""
    table.caption = (
        f"{len(attempts)} attempts finished, {len(running)} running or interrupted; "
        f"GPU-hours {spent:.3f}{cap}; about {remaining_hours(config, attempts):.3f} "
        "device-hours left (mean attempt so far)"
    )
    return table
