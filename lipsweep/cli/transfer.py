"""`lipsweep transfer`: does a cell's search ranking hold at the final budget?"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lipsweep.cli.common import console, sweep_folder
from lipsweep.config import SweepConfig
from lipsweep.errors import InputError
from lipsweep.names import Cell
from lipsweep.plan import load_plan
from lipsweep.results.rows import Provenance
from lipsweep.trainable import Launch
from lipsweep.transfer import TransferResult, choose, run_transfer


def transfer(
    out: Annotated[Path, typer.Argument(help="The sweep's folder.")],
    cell: Annotated[
        str | None, typer.Option(help="The cell, e.g. digits-XS-aol (default: the only one).")
    ] = None,
    top_k: Annotated[int, typer.Option(help="The best search configurations to train.")] = 3,
    random_count: Annotated[
        int, typer.Option("--random", help="Other search configurations, drawn with the seed.")
    ] = 2,
    budget: Annotated[
        str | None, typer.Option(help="The final budget to train at (default: the first).")
    ] = None,
) -> None:
    """Train a finished cell's top-k and some random search configurations at a final budget
    (on the search's validation split) and print the Spearman rank correlation between
    search-budget and final-budget validation CRA@36. Runs on Ray on this machine; results in
    DIR/transfer/, apart from the sweep's."""
    import ray

    from lipsweep.backends.local import check_resources, local_resources
    from lipsweep.lock import driver_lock
    from lipsweep.ray_local import start_local_ray

    config = SweepConfig.load(sweep_folder(out))
    chosen = pick_cell(config, cell)
    plan = load_plan(out, chosen)
    if plan is None:
        raise InputError(f"{chosen} has no stored plan in {out}: its sweep has not run it")
    provenance = Provenance.of_this_process(config.sweep_id, config.calibration)
    launch = Launch(config, out, provenance)
    run, notes = choose(launch, plan, budget or config.budgets[0], top_k, random_count)
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    check_resources(config, local_resources())
    with driver_lock(out):
        started = not ray.is_initialized()
        if started:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            start_local_ray()
        try:
            result = run_transfer(launch, plan, run)
        finally:
            if started:
                ray.shutdown()
    console.print(transfer_table(result, f"{chosen} at {run.budget} ({run.epochs} epochs)"))


def pick_cell(config: SweepConfig, text: str | None) -> Cell:
    cells = config.cells()
    if text is None:
        if len(cells) == 1:
            return cells[0]
        raise InputError(f"--cell is needed: this sweep has {len(cells)} cells, e.g. {cells[0]}")
    try:
        cell = Cell.parse(text)
    except ValueError as error:
        raise InputError(str(error)) from None
    if cell not in cells:
        raise InputError(f"{text} is not a cell of sweep {config.sweep_id}")
    return cell


def transfer_table(result: TransferResult, title: str) -> Table:
    table = Table(title=f"transfer of {title}")
    for column in ("trial", "picked", "lr", "wd", "search CRA@36", "rank", "final CRA@36", "rank"):
        table.add_column(column, justify="left" if column in ("trial", "picked") else "right")
    for row in result.table.itertuples():
        final = "-" if math.isnan(row.final_cra_36) else f"{row.final_cra_36:.3f}"
        final_rank = "-" if math.isnan(row.final_rank) else f"{row.final_rank:.0f}"
        table.add_row(
            f"t{row.trial_index}", row.picked, f"{row.lr:.3g}", f"{row.weight_decay:.3g}",
            f"{row.search_cra_36:.3f}", f"{row.search_rank:.0f}", final, final_rank,
        )  # fmt: skip
    rho = "n/a" if math.isnan(result.rho) else f"{result.rho:.3f} (p = {result.p_value:.3g})"
    table.caption = (
        f"validation CRA@36 at the search budget and at the final budget, ranks 1 = best; "
        f"Spearman rho over {result.pairs} completed pairs: {rho}"
    )
    return table


def register(app: typer.Typer) -> None:
    app.command()(transfer)
