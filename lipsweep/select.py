"""Selection: a cell's best completed search trial, once every search trial of it has ended."""

from __future__ import annotations

import pandas as pd

from lipsweep.names import AttemptStatus, Cell
from lipsweep.results.store import cell_attempts, ended_for_good


def ended_search_trials(attempts: pd.DataFrame, cell: Cell, max_retries: int) -> int:
    """Search trials of a cell that ended for good: completed, failed, out of memory, or NaN
    with every retry used."""
    return len(ended_for_good(cell_attempts(attempts, cell, "search"), max_retries))


def select_best(attempts: pd.DataFrame, cell: Cell) -> pd.Series | None:
    """The completed search attempt with the best final-epoch validation CRA at 36/255 (ties:
    the lower trial index), or None if no search trial of the cell completed."""
    rows = cell_attempts(attempts, cell, "search")
    if rows.empty:
        return None
    rows = rows[
        (rows["status"] == AttemptStatus.COMPLETED)
        & (rows["epochs_done"] == rows["epochs_planned"])
    ]
    if rows.empty:
        return None
    return rows.sort_values(["cra_36", "trial_index"], ascending=[False, True]).iloc[0]
