"""Selection: a cell's best completed search trial (a halving search: of its last rung), once
every search trial of it has ended."""

from __future__ import annotations

import pandas as pd

from lipsweep.config import SweepConfig
from lipsweep.halving import RungProgress, cell_rungs, outcomes, progress
from lipsweep.names import AttemptStatus, Cell
from lipsweep.results.store import cell_attempts, ended_for_good


def search_progress(
    attempts: pd.DataFrame, cell: Cell, config: SweepConfig, search_epochs: int
) -> list[RungProgress]:
    """Each rung's progress in the cell's search (the random search is one rung)."""
    ended = ended_for_good(cell_attempts(attempts, cell, "search"), config.max_retries)
    return progress(cell_rungs(config, search_epochs), outcomes(ended))


def select_best(attempts: pd.DataFrame, cell: Cell) -> pd.Series | None:
    """The completed search attempt with the best final-epoch validation CRA at 36/255 (ties:
    the lower trial index), or None if no search trial of the cell completed. In a halving
    search only the highest rung with a completed trial competes (the last rung, unless every
    run of it failed): lower rungs trained fewer epochs."""
    rows = cell_attempts(attempts, cell, "search")
    if rows.empty:
        return None
    rows = rows[
        (rows["status"] == AttemptStatus.COMPLETED)
        & (rows["epochs_done"] == rows["epochs_planned"])
    ]
    if rows.empty:
        return None
    if "rung" in rows and rows["rung"].notna().any():
        rows = rows[rows["rung"] == rows["rung"].max()]
    return rows.sort_values(["cra_36", "trial_index"], ascending=[False, True]).iloc[0]
