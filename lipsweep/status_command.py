"""`lipsweep status DIR`: where a sweep stands, per cell, from its files alone.

Reads sweep.json, the Parquet dataset and the attempts' progress files; starts nothing (no Ray,
no torch), so it is cheap to run while the sweep is running, on any machine that sees the folder.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.table import Table

from lipsweep.budget import format_budget
from lipsweep.process import process_alive
from lipsweep.results import ended_for_good, read_attempts
from lipsweep.sweep import SweepConfig, cell_name, device_share, load_plan, planned_trials

RECENT_S = 900.0  # on another host, progress this recent counts as a running attempt


@dataclass
class Progress:
    """An attempt with progress but no result: running, or interrupted (waiting for a resume)."""

    epoch: int
    alive: bool  # its process runs (this host), or it wrote progress lately (other hosts)


def read_progress(path: Path) -> Progress:
    progress = json.loads(path.read_text())
    if progress.get("host") == socket.gethostname() and "pid" in progress:
        alive = process_alive(int(progress["pid"]))
    else:
        alive = time.time() - path.stat().st_mtime < RECENT_S
    return Progress(int(progress["epoch"]), alive)


def running_attempts(folder: Path, finished: set[str]) -> dict[str, Progress]:
    """attempt_id -> its progress, for attempts that have no result yet."""
    running = {}
    for path in (folder / "attempts").glob("*/progress.json"):
        if path.parent.name not in finished:
            running[path.parent.name] = read_progress(path)
    return running


def cell_attempts(attempts: pd.DataFrame, dataset: str, size: str, method: str) -> pd.DataFrame:
    if attempts.empty:
        return attempts
    return attempts[
        (attempts["dataset"] == dataset)
        & (attempts["size"] == size)
        & (attempts["method"] == method)
    ]


def cell_row(
    config: SweepConfig,
    mine: pd.DataFrame,
    running: dict[str, Progress],
    cell: str,
    left_hours: float | None,
) -> list[str]:
    search = mine[mine["stage"] == "search"] if not mine.empty else mine
    finals = mine[mine["stage"] == "final"] if not mine.empty else mine
    last = (
        search.sort_values("attempt").drop_duplicates("trial_id", keep="last")
        if not search.empty
        else search
    )
    done = int((last["status"] == "completed").sum()) if not last.empty else 0
    failed = len(last) - done
    now = sum(1 for a, p in running.items() if p.alive and a.startswith(f"search-{cell}-"))
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
        "-" if left_hours is None else f"{left_hours:.3f}",
    ]


def left_hours(
    config: SweepConfig,
    folder: Path,
    mine: pd.DataFrame,
    running: dict[str, Progress],
    cell: tuple[str, str, str],
) -> float | None:
    """Device-hours the cell's unfinished trials still need, from its stored plan (epochs per
    budget, seconds per epoch) less the epochs its running attempts have done; None without a
    plan. A NaN retry or a trial past the cap can change it."""
    plan = load_plan(folder, *cell)
    if plan is None:
        return None
    ended_rows = ended_for_good(mine, config.max_retries) if not mine.empty else mine
    ended = set(ended_rows["trial_id"]) if not ended_rows.empty else set()
    searched = ended_rows[ended_rows["stage"] == "search"] if not ended_rows.empty else ended_rows
    no_final = len(searched) == config.trials and not (searched["status"] == "completed").any()
    epochs_left = 0
    for trial in planned_trials(config, [plan]):
        if trial.trial_id in ended or (trial.stage == "final" and no_final):
            continue
        done = max(
            (p.epoch for a, p in running.items() if a.startswith(trial.trial_id + "-a")),
            default=0,
        )
        epochs_left += max(trial.epochs - done, 0)
    return epochs_left * plan.seconds_per_epoch * device_share(config.gpus_per_trial) / 3600


def eta_text(config: SweepConfig, left: float, running: dict[str, Progress]) -> str:
    """Wall time left if the attempts running now keep running side by side."""
    slots = sum(p.alive for p in running.values())
    if left <= 0:
        return "nothing left to run"
    if slots == 0:
        return f"{left:.3f} device-hours left; nothing running now (`lipsweep resume` finishes it)"
    wall_s = left * 3600 / device_share(config.gpus_per_trial) / slots
    eta = format_budget(max(wall_s, 1.0))
    return f"{left:.3f} device-hours left; ETA ~{eta} at {slots} attempts at a time"


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
    columns.append("GPU-h left")
    for column in columns + (["SLURM job"] if jobs else []):
        table.add_column(column, justify="left" if column in ("cell", "SLURM job") else "right")
    total_left = 0.0
    for key in config.cells():
        cell = cell_name(*key)
        mine = cell_attempts(attempts, *key)
        left = left_hours(config, folder, mine, running, key)
        total_left += left or 0.0
        row = cell_row(config, mine, running, cell, left)
        table.add_row(*row, *([jobs.get(cell, "-")] if jobs else []))
    spent = float(attempts["gpu_hours"].sum()) if not attempts.empty else 0.0
    cap = f" of {config.max_gpu_hours:g}" if config.max_gpu_hours else ""
    table.caption = (
        f"{len(attempts)} attempts finished, "
        f"{sum(p.alive for p in running.values())} running, "
        f"{sum(not p.alive for p in running.values())} interrupted; "
        f"GPU-hours {spent:.3f}{cap}; {eta_text(config, total_left, running)}"
    )
    return table
