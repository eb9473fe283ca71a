"""Where a sweep stands, per cell, from its files alone, as data (the CLI renders it).

Reads sweep.json, the stored plans, the Parquet dataset and the attempts' progress files;
starts nothing (no Ray, no torch, no SLURM call), so it is cheap to run while the sweep runs,
on any machine that sees the folder.
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lipsweep.config import SweepConfig
from lipsweep.halving import cell_rungs, current_rung, outcomes, progress, search_done
from lipsweep.lock import driver_alive
from lipsweep.names import PROGRESS, AttemptStatus, Cell, device_hours, parse_attempt_id
from lipsweep.plan import load_plan, planned_trials
from lipsweep.process import process_alive
from lipsweep.results.store import cell_attempts, damaged_files, ended_for_good, read_attempts

RECENT_S = 900.0  # on another host, progress this recent counts as a running attempt


@dataclass(frozen=True)
class Progress:
    """An attempt with progress but no result: running, or interrupted (waiting for a resume)."""

    attempt_id: str
    epoch: int
    alive: bool  # its process runs (this host), or it wrote progress lately (other hosts)


@dataclass(frozen=True)
class CellStatus:
    cell: Cell
    search_done: int  # completed search trials
    search_failed: int  # search trials that ended otherwise
    running: int  # attempts of the cell (search or final) running now
    best_val_cra: float  # NaN until a search trial completed
    finals_done: int
    device_hours: float  # spent
    hours_left: float | None  # None without a stored plan
    # --search halving (None otherwise, or without a plan): the rung running now (0 first; the
    # last once the search is done), the number of rungs, and the configurations in that rung.
    rung: int | None = None
    rungs: int | None = None
    survivors: int | None = None
    search_trials: int | None = None  # halving: trials of every rung (fewer if few survive)


@dataclass(frozen=True)
class SweepStatus:
    config: SweepConfig
    folder: Path
    cells: list[CellStatus]
    finished: int  # attempts with a row
    running: int
    interrupted: int
    spent_hours: float
    damaged: list[Path]  # unreadable files under results/, skipped by every reader
    damaged_progress: list[Path]  # progress records that do not read, skipped
    train_share: float | None  # of the finished attempts' device time, the training epochs'
    driver: dict | None  # the live driver holding the sweep's lock (host, pid, since), if any

    @property
    def hours_left(self) -> float:
        return sum(c.hours_left or 0.0 for c in self.cells)

    def warnings(self) -> list[str]:
        """One line per damaged file: what it costs and what to do."""
        results = [damaged_result_warning(self.folder, path) for path in self.damaged]
        return results + [
            f"{path} is damaged (not a progress record): status cannot tell whether its "
            "attempt is running; the attempt rewrites it after its next epoch (run `lipsweep "
            f"resume {self.folder}` if no driver runs), or delete it"
            for path in self.damaged_progress
        ]

    def eta_text(self) -> str:
        """Wall time left if the attempts running now keep running side by side."""
        left = self.hours_left
        if any(c.hours_left is None for c in self.cells):
            return "device-hours left unknown until every cell is planned"
        if left <= 0:
            return "nothing left to run"
        if self.running == 0 and self.driver is not None:
            who = f"pid {self.driver['pid']} on {self.driver['host']}"
            return f"{left:.3f} device-hours left; the driver ({who}) is between attempts"
        if self.running == 0:
            return (
                f"{left:.3f} device-hours left; nothing running now (`lipsweep resume` finishes it)"
            )
        from lipsweep.budget import format_budget

        share = device_hours(3600.0, self.config.gpus_per_trial)
        wall_s = left * 3600 / share / self.running
        return f"{left:.3f} device-hours left; ETA ~{format_budget(max(wall_s, 1.0))} at {self.running} attempts at a time"


def damaged_result_warning(folder: Path, path: Path) -> str:
    """What an unreadable file under results/ costs and what to do about it: an attempt file
    is redone by a resume; a history file's attempt keeps its row (a resume redoes nothing)
    unless the row is gone too; any other file is foreign."""
    damaged = f"{path} is not a readable Parquet file"
    resume = f"`lipsweep resume {folder}`"
    history = folder / "results" / "history"
    if path.suffix != ".parquet":
        return f"{damaged}: move it away (results/ holds one Parquet file per attempt)"
    if not path.is_relative_to(history):
        return f"{damaged}: move it away, or run {resume} to redo that attempt"
    row = folder / "results" / "attempts" / path.relative_to(history)
    if not row.exists():
        return f"{damaged}: its attempt has no result yet; run {resume} to redo it"
    return (
        f"{damaged}: the epoch history of attempt {path.stem} is lost, its result row is "
        f"intact; move it away, or delete it and {row} and run {resume} to train that "
        "attempt again"
    )


def read_progress(path: Path) -> Progress | None:
    """An attempt's progress record; None if it does not read (damaged: status names it)."""
    try:
        progress = json.loads(path.read_text())
        epoch = int(progress["epoch"])
        pid = int(progress["pid"]) if "pid" in progress else None
        mtime = path.stat().st_mtime
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if progress.get("host") == socket.gethostname() and pid is not None:
        alive = process_alive(pid)
    else:
        alive = time.time() - mtime < RECENT_S
    return Progress(path.parent.name, epoch, alive)


def progress_files(folder: Path, finished: set[str]) -> list[Path]:
    """The progress records of the attempts that have no result yet."""
    paths = sorted((folder / "attempts").glob(f"*/{PROGRESS}"))
    return [path for path in paths if path.parent.name not in finished]


def unfinished_attempts(folder: Path, finished: set[str]) -> list[Progress]:
    """Progress of the attempts that have no result yet (damaged records are skipped)."""
    read = (read_progress(path) for path in progress_files(folder, finished))
    return [progress for progress in read if progress is not None]


def _cell_of(progress: Progress) -> Cell | None:
    try:
        return parse_attempt_id(progress.attempt_id)[0].cell
    except ValueError:
        return None


def hours_left(
    config: SweepConfig, folder: Path, mine: pd.DataFrame, running: list[Progress], cell: Cell
) -> float | None:
    """Device-hours the cell's unfinished trials still need, from its stored plan (epochs per
    budget, seconds per epoch) less the epochs its running attempts have done; None without a
    plan. A NaN retry or a trial past the cap can change it."""
    plan = load_plan(folder, cell)
    if plan is None:
        return None
    ended_rows = ended_for_good(mine, config.max_retries)
    ended = set(ended_rows["trial_id"]) if not ended_rows.empty else set()
    searched = ended_rows[ended_rows["stage"] == "search"] if not ended_rows.empty else ended_rows
    steps = progress(cell_rungs(config, plan.epochs[config.search_budget]), outcomes(searched))
    never_run = {index for step in steps for index in step.never_run}  # halving: no survivor
    no_final = search_done(steps) and not (searched["status"] == AttemptStatus.COMPLETED).any()
    epochs_left = 0
    for trial in planned_trials(config, [plan]):
        if trial.trial_id in ended or (trial.stage == "final" and no_final):
            continue
        if trial.stage == "search" and trial.index in never_run:
            continue
        done = max(
            (p.epoch for p in running if parse_attempt_id(p.attempt_id)[0] == trial.id), default=0
        )
        epochs_left += max(trial.epochs - done, 0)
    return device_hours(epochs_left * plan.seconds_per_epoch, config.gpus_per_trial)


def cell_status(
    config: SweepConfig, folder: Path, mine: pd.DataFrame, running: list[Progress], cell: Cell
) -> CellStatus:
    search = mine[mine["stage"] == "search"] if not mine.empty else mine
    finals = mine[mine["stage"] == "final"] if not mine.empty else mine
    last = (
        search.sort_values("attempt").drop_duplicates("trial_id", keep="last")
        if not search.empty
        else search
    )
    completed = last[last["status"] == AttemptStatus.COMPLETED] if not last.empty else last
    return CellStatus(
        cell=cell,
        search_done=len(completed),
        search_failed=len(last) - len(completed),
        running=sum(1 for p in running if p.alive and _cell_of(p) == cell),
        best_val_cra=float(completed["cra_36"].max()) if not completed.empty else math.nan,
        finals_done=int((finals["status"] == AttemptStatus.COMPLETED).sum())
        if not finals.empty
        else 0,
        device_hours=float(mine["gpu_hours"].sum()) if not mine.empty else 0.0,
        hours_left=hours_left(config, folder, mine, running, cell),
        **rung_status(config, folder, mine, cell),
    )


def rung_status(
    config: SweepConfig, folder: Path, mine: pd.DataFrame, cell: Cell
) -> dict[str, int]:
    """A halving search's rung now, its number of rungs and its configurations (the rung's
    survivors: its size, or fewer when fewer completed below); empty for a random search."""
    plan = load_plan(folder, cell)
    if config.search != "halving" or plan is None:
        return {}
    search = mine[mine["stage"] == "search"] if not mine.empty else mine
    ended = outcomes(ended_for_good(search, config.max_retries))
    steps = progress(cell_rungs(config, plan.epochs[config.search_budget]), ended)
    now = current_rung(steps)
    survivors = now.rung.size if now.expected is None else now.expected
    trials = sum(step.rung.size if step.expected is None else step.expected for step in steps)
    return {
        "rung": now.rung.number,
        "rungs": len(steps),
        "survivors": survivors,
        "search_trials": trials,
    }


def sweep_status(folder: Path) -> SweepStatus:
    config = SweepConfig.load(folder)
    attempts = read_attempts(folder)
    finished = set(attempts["attempt_id"]) if not attempts.empty else set()
    running = unfinished_attempts(folder, finished)
    cells = [
        cell_status(config, folder, cell_attempts(attempts, cell), running, cell)
        for cell in config.cells()
    ]
    return SweepStatus(
        config=config,
        folder=folder,
        cells=cells,
        finished=len(attempts),
        running=sum(p.alive for p in running),
        interrupted=sum(not p.alive for p in running),
        spent_hours=float(attempts["gpu_hours"].sum()) if not attempts.empty else 0.0,
        damaged=damaged_files(folder / "results"),
        damaged_progress=[p for p in progress_files(folder, finished) if read_progress(p) is None],
        train_share=train_share(attempts),
        driver=driver_alive(folder),
    )


def train_share(attempts: pd.DataFrame) -> float | None:
    """Training epochs' share of the device time of the attempts that record both (the rest
    is evaluation, the final certificate, checkpoints and start-up)."""
    if attempts.empty or "train_seconds" not in attempts:
        return None
    known = attempts[attempts["train_seconds"].notna() & attempts["device_seconds"].gt(0)]
    if known.empty:
        return None
    return float(known["train_seconds"].sum() / known["device_seconds"].sum())
