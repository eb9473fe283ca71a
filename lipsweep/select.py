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


def ranked(rows: pd.DataFrame) -> pd.DataFrame:
    """Search rows best first: validation CRA@36, then (ties: short runs often certify nothing)
    validation accuracy, then the lower trial index; missing values last. The order
    ``halving.survivors`` picks a rung's survivors in."""
    return rows.sort_values(
        ["cra_36", "accuracy", "trial_index"], ascending=[False, False, True], na_position="last"
    )


def select_best(attempts: pd.DataFrame, cell: Cell) -> pd.Series | None:
    """The completed search attempt ranked first by ``ranked`` (best final-epoch validation
    CRA at 36/255), or None if no search trial of the cell completed. In a halving
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
    return ranked(rows).iloc[0]
