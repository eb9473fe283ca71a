"""A sweep's protocol, start to end: search -> select -> finals. Idempotent: it derives what is
left from the Optuna journal (which trials exist, with which hyperparameters) and the Parquet
dataset (which attempts ended), and runs only that; an interrupted attempt resumes from its
checkpoint in ``attempts/<attempt_id>/``. It renders nothing: news goes to ``monitor``.
Ray must already be initialised (lipsweep.backends)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lipsweep.config import SweepConfig
from lipsweep.finals import run_finals
from lipsweep.ledger import Ledger
from lipsweep.names import Cell
from lipsweep.plan import CellPlan, planned_trials
from lipsweep.results.rows import Provenance
from lipsweep.search import run_search
from lipsweep.trainable import Launch

Monitor = Callable[[str], None]


def run_sweep(
    config: SweepConfig,
    folder: Path,
    plans: list[CellPlan],
    cells: list[Cell] | None = None,
    monitor: Monitor | None = None,
) -> None:
    """Run (or finish) the sweep in ``folder``.

    ``cells`` restricts the run to those cells, as one SLURM job per cell does: only their
    plans run and only their stale GPU-hour reservations are dropped, so jobs of other cells
    running at the same time keep theirs."""
    say = monitor or (lambda line: None)
    folder.mkdir(parents=True, exist_ok=True)
    if cells is not None:
        plans = [p for p in plans if p.cell in cells]
    Ledger(folder, config.max_gpu_hours).clear_stale(cells)
    tag = "" if cells is None else "-" + "+".join(sorted(c.name for c in cells))
    launch = Launch(
        config, folder, Provenance.of_this_process(config.sweep_id, config.calibration), tag
    )
    planned = planned_trials(config, plans)
    searched = [t for t in planned if t.stage == "search"]
    capped = run_search(launch, searched, say)
    capped += run_finals(launch, [t for t in planned if t.stage == "final"], searched, say)
    if capped:
        say(
            f"{capped} trials not started: they would pass --max-gpu-hours {config.max_gpu_hours:g}"
        )
