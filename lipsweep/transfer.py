"""Does the search budget's ranking of hyperparameters hold at the final budget?

The paper selects hyperparameters with 2h runs and trains the selected ones for 24h, assuming
the 2h ranking holds at 24h. ``lipsweep transfer`` tests that for a finished cell: it trains
the ``top_k`` best search configurations and ``random`` others, drawn with a seed, again at a
final budget, on the search's own 90/10 split (so only the budget differs), and reports the
Spearman rank correlation between their search-budget and final-budget validation CRA@36.

Candidates are the completed search trials that trained the search budget's full epochs: every
trial of a random search, the last rung of a halving search (lower rungs trained less). The
runs are trials and attempts of their own, kept apart from the sweep's results in
``<sweep>/transfer/`` (results, checkpoints, Tune files): analysis and the sweep's ledger do not
see them, and a rerun does only what has no row there (each keeps its search trial's index).
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lipsweep.errors import InputError
from lipsweep.halving import search_done
from lipsweep.names import AttemptStatus, Cell
from lipsweep.plan import CellPlan, PlannedTrial
from lipsweep.results.store import cell_attempts, read_attempts
from lipsweep.select import ranked, search_progress
from lipsweep.trainable import Launch, TrialTask, execute_grid

FOLDER = "transfer"
KEYS = ["trial_index", "lr", "weight_decay", "seed", "loss_temperature", "loss_offset"]


@dataclass(frozen=True)
class Transfer:
    """The configurations of a cell chosen for a transfer run, and where they run."""

    cell: Cell
    budget: str  # the final budget they train at
    epochs: int  # what that budget buys (the cell's stored plan)
    chosen: pd.DataFrame  # search rows: KEYS, cra_36 and "picked" ("top" or "random")

    def folder(self, sweep: Path) -> Path:
        return sweep / FOLDER


@dataclass(frozen=True)
class TransferResult:
    table: pd.DataFrame  # one row per configuration: search and final-budget CRA, their ranks
    rho: float  # Spearman rank correlation (NaN with fewer than 3 pairs or constant CRA)
    p_value: float
    pairs: int


def candidates(attempts: pd.DataFrame, launch: Launch, plan: CellPlan) -> pd.DataFrame:
    """The cell's completed search trials at the search budget's full epochs; InputError if
    the cell's search has not ended."""
    config, cell = launch.config, plan.cell
    epochs = plan.epochs[config.search_budget]
    if not search_done(search_progress(attempts, cell, config, epochs)):
        raise InputError(
            f"the search of {cell} has not ended: run `lipsweep resume {launch.folder}` first"
        )
    rows = cell_attempts(attempts, cell, "search")
    return rows[
        (rows["status"] == AttemptStatus.COMPLETED)
        & (rows["epochs_done"] == epochs)
        & (rows["epochs_planned"] == epochs)
    ]


def choose(
    launch: Launch, plan: CellPlan, budget: str, top_k: int, count: int
) -> tuple[Transfer, list[str]]:
    """The top ``top_k`` candidates in ``select.ranked``'s order (validation CRA@36) and
    ``count`` others drawn with the sweep's seed: (the transfer, notes for the user)."""
    config = launch.config
    if budget not in config.budgets:
        raise InputError(
            f"--budget {budget} is not a final budget of this sweep: choose from "
            f"{', '.join(config.budgets)}"
        )
    if top_k < 0 or count < 0 or top_k + count < 2:
        raise InputError(
            f"--top-k {top_k} and --random {count}: give two or more configurations in all"
        )
    ordered = ranked(candidates(read_attempts(launch.folder), launch, plan))
    notes = []
    if top_k + count > len(ordered):
        notes.append(
            f"{plan.cell} has {len(ordered)} completed search trials at the search budget's "
            f"epochs, not {top_k + count}: all of them run"
        )
    top = ordered.head(top_k).assign(picked="top")
    rest = ordered.iloc[len(top) :]
    draw = random.Random(f"{config.seed}/transfer/{plan.cell}")
    picks = sorted(draw.sample(range(len(rest)), min(count, len(rest))))
    chosen = pd.concat([top, rest.iloc[picks].assign(picked="random")])
    transfer = Transfer(plan.cell, budget, plan.epochs[budget], chosen[[*KEYS, "cra_36", "picked"]])
    return transfer, notes


def transfer_tasks(launch: Launch, plan: CellPlan, transfer: Transfer) -> list[TrialTask]:
    """One task per chosen configuration: its lr, wd, seed and loss at the final budget's
    epochs, on the search split (stage "search"), under its search trial's index."""
    at = Launch(launch.config, transfer.folder(launch.folder), launch.provenance, "-transfer")
    tasks = []
    for row in transfer.chosen.itertuples():
        planned = PlannedTrial(
            "search", plan.cell, transfer.budget, int(row.trial_index), transfer.epochs,
            plan.seconds_per_epoch,
        )  # fmt: skip
        loss = [None if pd.isna(v) else float(v) for v in (row.loss_temperature, row.loss_offset)]
        task = at.task(planned, float(row.lr), float(row.weight_decay), int(row.seed), *loss)
        tasks.append(task)
    return tasks


def run_transfer(launch: Launch, plan: CellPlan, transfer: Transfer) -> TransferResult:
    """Train the chosen configurations at the final budget (what has no row yet), then rank."""
    tasks = transfer_tasks(launch, plan, transfer)
    config = launch.config
    # Outside the sweep's ledger: transfer runs are an experiment on the sweep, not part of it.
    execute_grid(tasks, config, transfer.folder(launch.folder), "transfer", "-" + plan.cell.name)
    return rank(launch.folder, transfer)


def rank(sweep: Path, transfer: Transfer) -> TransferResult:
    """The chosen configurations' search and final-budget CRA, ranks (1 = best) and Spearman
    correlation over those that completed at both budgets."""
    from scipy.stats import spearmanr

    runs = cell_attempts(read_attempts(transfer.folder(sweep)), transfer.cell, "search")
    runs = runs[(runs["budget"] == transfer.budget) & (runs["status"] == AttemptStatus.COMPLETED)]
    final = runs.sort_values("attempt").drop_duplicates("trial_index", keep="last")
    final = final.set_index("trial_index")["cra_36"].rename("final_cra_36")
    table = transfer.chosen.rename(columns={"cra_36": "search_cra_36"}).join(
        final, on="trial_index"
    )
    done = table.dropna(subset=["search_cra_36", "final_cra_36"])
    table["search_rank"] = table["search_cra_36"].rank(ascending=False, method="min")
    table["final_rank"] = table["final_cra_36"].rank(ascending=False, method="min")
    rho = p_value = math.nan
    if len(done) >= 3:
        with warnings.catch_warnings():  # constant input: NaN, said in the report
            warnings.simplefilter("ignore")
            answer = spearmanr(done["search_cra_36"], done["final_cra_36"])
        rho, p_value = float(answer.statistic), float(answer.pvalue)
    return TransferResult(table.reset_index(drop=True), rho, p_value, len(done))
