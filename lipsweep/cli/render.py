"""Tables of the sweep commands: the plan and the status (rich), from the library's data."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lipsweep.config import SweepConfig
from lipsweep.names import Cell
from lipsweep.plan import (
    CellPlan,
    hours_unit,
    planned_trials,
    rungs_text,
    search_hours,
    summarize,
)
from lipsweep.status import SweepStatus, sweep_status


def plan_table(config: SweepConfig, plans: list[CellPlan], devices: int) -> Table:
    how = sorted({plan.how for plan in plans if plan.how}) or [config.calibration]
    table = Table(title=f'plan of sweep "{config.sweep_id}" (epochs from {", ".join(how)})')
    table.add_column("cell")
    table.add_column("s/epoch", justify="right")
    table.add_column(f"search {config.search_budget}", justify="right")
    halving = config.search == "halving"
    if halving:
        table.add_column(f"halving, eta {config.eta}: trials x epochs per rung")
    for label in config.budgets:
        table.add_column(f"final {label}", justify="right")
    for plan in plans:
        search, *finals = [str(plan.epochs[b]) for b in (config.search_budget, *config.budgets)]
        rungs = [rungs_text(config, plan)] if halving else []
        table.add_row(plan.cell.name, f"{plan.seconds_per_epoch:.2f}", search, *rungs, *finals)
    summary = summarize(config, planned_trials(config, plans), devices)
    table.caption = "epochs per trial; " + ", ".join(
        f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()
    )
    table.caption += "; " + search_cost_text(config, plans)
    return table


def search_cost_text(config: SweepConfig, plans: list[CellPlan]) -> str:
    """The search's device-hours beside the random search's (the paper's) for the same trials."""
    unit = hours_unit(config)
    random_hours = search_hours(config, plans, "random")
    text = f"search {unit}: random {random_hours:.4g}"
    if config.search == "halving":
        hours = search_hours(config, plans, "halving")
        ratio = hours / random_hours if random_hours else float("nan")
        text += f", halving {hours:.4g} ({ratio:.2f} of random)"
    return text


def status_table(status: SweepStatus, jobs: dict[Cell, str] | None = None) -> RenderableType:
    """The per-cell table, within 80 columns for the longest cell name (tiny-imagenet-XS-cayley)
    and hours in the hundred thousands; SLURM jobs, when given, in a second table below."""
    config = status.config
    unit = "GPU-h" if config.gpus_per_trial > 0 else "dev-h"
    halving = config.search == "halving"
    table = Table(
        title=f"sweep {config.sweep_id} in {status.folder}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=halving,  # room for the rung column within 80 columns
    )
    columns = ("cell", "search", *(("rung",) if halving else ()), "run", "fail", "val CRA")
    for column in (*columns, "final", unit, "left"):
        left = column == "cell"
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    for cell in status.cells:
        rung = [rung_text(cell.rung, cell.rungs, cell.survivors)] if halving else []
        table.add_row(
            cell.cell.name,
            f"{cell.search_done}/{cell.search_trials or config.trials}",
            *rung,
            str(cell.running),
            str(cell.search_failed),
            "-" if math.isnan(cell.best_val_cra) else f"{cell.best_val_cra:.3f}",
            f"{cell.finals_done}/{len(config.budgets) * config.final_seeds}",
            hours_text(cell.device_hours),
            "-" if cell.hours_left is None else hours_text(cell.hours_left),
        )
    cap = f" of {config.max_gpu_hours:g}" if config.max_gpu_hours else ""
    rung_caption = (
        "search: completed/trials of every rung; rung: the rung running now/rungs:its "
        "configurations (the survivors of the rung below); "
        if halving
        else "search: completed/trials; "
    )
    table.caption = (
        f"{rung_caption}run: attempts running; val CRA: best validation CRA@36; "
        f"{unit}: {hours_unit(config)} spent, left: still needed (k = 1000). "
        f"{status.finished} attempts finished, {status.running} running, "
        f"{status.interrupted} interrupted; {hours_unit(config)} "
        f"{hours_text(status.spent_hours)}{cap}{training_text(status)}; {status.eta_text()}"
    )
    return Group(table, jobs_table(status, jobs)) if jobs else table


def rung_text(rung: int | None, rungs: int | None, survivors: int | None) -> str:
    """ "2/3:6": the second of three rungs, running 6 configurations."""
    if rung is None or rungs is None:
        return "-"
    return f"{rung + 1}/{rungs}:{survivors}"


def jobs_table(status: SweepStatus, jobs: dict[Cell, str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("cell", no_wrap=True)
    table.add_column("SLURM job")
    for cell in status.cells:
        table.add_row(cell.cell.name, jobs.get(cell.cell, "-"))
    return table


def hours_text(hours: float) -> str:
    """At most 5 characters: 0.004, 12.3, 1235, 12k, 123k."""
    if hours < 1:
        return f"{hours:.3f}"
    if hours < 100:
        return f"{hours:.1f}"
    if hours < 9999.5:
        return f"{hours:.0f}"
    return f"{hours / 1000:.0f}k"


def training_text(status: SweepStatus) -> str:
    if status.train_share is None:
        return ""
    return f" ({status.train_share:.0%} training, the rest evaluation and certificates)"


def status_frame(status: SweepStatus, jobs: dict[Cell, str] | None = None) -> pd.DataFrame:
    """One row per cell, for --format csv / json."""
    rows = [
        {
            "cell": c.cell.name,
            "search_completed": c.search_done,
            "search_failed": c.search_failed,
            "search_trials": c.search_trials or status.config.trials,
            "running": c.running,
            "best_val_cra_36": c.best_val_cra,
            "finals_completed": c.finals_done,
            "finals": len(status.config.budgets) * status.config.final_seeds,
            "device_hours": c.device_hours,
            "device_hours_left": c.hours_left,
            "rung": c.rung,
            "rungs": c.rungs,
            "rung_configurations": c.survivors,
            "slurm_job": (jobs or {}).get(c.cell),
        }
        for c in status.cells
    ]
    return pd.DataFrame(rows)


def live_status(folder: Path) -> RenderableType:
    """The status table, or a note while it cannot be read (never raises: it runs in the
    refresh thread of the live display)."""
    try:
        return status_table(sweep_status(folder))
    except Exception as error:  # a half-written folder must not stop the sweep
        return Text(f"status unavailable: {error}")
