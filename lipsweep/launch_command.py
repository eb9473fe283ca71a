"""`lipsweep launch / plan / resume`: validate, calibrate, print the plan, run the sweep."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lipsweep.data import dataset_folder
from lipsweep.sweep import (
    CellPlan,
    SweepConfig,
    check_cap,
    check_epochs,
    load_plan,
    plan_cell,
    planned_trials,
    save_plan,
    summarize,
)
from lipsweep.train_command import check_writable

PRESETS: dict[str, dict[str, object]] = {
    # The paper's protocol (PAPER.md section 3): 3 datasets x 4 sizes x 7 methods, 16 trials
    # per cell at 2h, final runs at the requested budgets.
    "paper": {
        "datasets": ("cifar10", "cifar100", "tiny-imagenet"),
        "sizes": ("XS", "S", "M", "L"),
        "methods": ("aol", "bcop", "cpl", "cayley", "lot", "sll", "soc"),
        "trials": 16,
        "search_budget": "2h",
    },
    # Small real data and tiny budgets: the whole protocol in minutes on 2 CPU cores.
    "quickstart": {
        "datasets": ("digits",),
        "sizes": ("XS",),
        "methods": ("aol", "cpl", "sll"),
        "budgets": ("40s",),
        "trials": 3,
        "search_budget": "15s",
        "batch_size": 128,
    },
}


def sweep_id_for(out: Path) -> str:
    """A path-safe sweep id from the output folder's name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", out.resolve().name) or "sweep"


def check_inputs(config: SweepConfig, out: Path) -> None:
    """Everything that can be checked before any work: data present, --out writable."""
    data_dir = Path(config.data_dir) if config.data_dir else None
    for dataset in config.datasets:
        if dataset != "digits":
            dataset_folder(dataset, data_dir)  # one-line FileNotFoundError if missing
    check_writable(out)


def existing_config(config: SweepConfig, out: Path) -> SweepConfig:
    """The config to run: a new one, or the stored one if --out already holds this sweep."""
    if not (out / "sweep.json").exists():
        return config
    stored = SweepConfig.load(out)
    if asdict(stored) != asdict(config):
        changed = [k for k, v in asdict(config).items() if asdict(stored)[k] != v]
        raise ValueError(
            f"{out} holds a sweep with other settings ({', '.join(changed)}): "
            f"run `lipsweep resume {out}` or choose another --out"
        )
    return stored


def make_plans(config: SweepConfig, console: Console, out: Path | None = None) -> list[CellPlan]:
    """Calibrate every cell. A cell the paper's A100 table has no epochs for (LOT-L: it did
    not fit in 80 GB) is left out with a note, as the paper left it out."""
    from lipsweep.measure import CalibrationError

    device = "cuda" if config.gpus_per_trial > 0 else "cpu"
    plans = []
    with console.status("calibrating cells...") as status:
        for dataset, size, method in config.cells():
            status.update(f"calibrating {method}-{size} on {dataset} ({config.calibration})")
            stored = load_plan(out, dataset, size, method) if out is not None else None
            if stored is not None:  # a resumed sweep keeps the epochs it started with
                plans.append(stored)
                continue
            try:
                plans.append(plan_cell(config, dataset, size, method, device))
            except CalibrationError as error:
                if "did not fit" not in str(error):
                    raise ValueError(str(error)) from None
                console.print(f"[yellow]left out: {error}[/]")
    return plans


def plan_table(config: SweepConfig, plans: list[CellPlan], devices: int) -> Table:
    trials = planned_trials(config, plans)
    table = Table(title=f"sweep {config.sweep_id}: plan")
    table.add_column("cell")
    table.add_column("s/epoch", justify="right")
    table.add_column(f"search epochs ({config.search_budget})", justify="right")
    for label in config.budgets:
        table.add_column(f"final epochs ({label})", justify="right")
    for plan in plans:
        epochs = [str(plan.epochs[b]) for b in (config.search_budget, *config.budgets)]
        table.add_row(
            f"{plan.dataset}-{plan.size}-{plan.method}", f"{plan.seconds_per_epoch:.2f}", *epochs
        )
    summary = summarize(config, trials, devices)
    table.caption = ", ".join(
        f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()
    )
    return table


def validated_plans(config: SweepConfig, out: Path, console: Console) -> list[CellPlan]:
    check_inputs(config, out)
    plans = make_plans(config, console, out)
    trials = planned_trials(config, plans)
    check_epochs(trials)
    check_cap(config, trials)
    return plans


def launch(config: SweepConfig, out: Path, address: str | None, console: Console) -> None:
    """Run (or resume) the sweep in ``out`` on local Ray or the cluster at ``address``."""
    import ray

    from lipsweep.engine import run_sweep

    config = existing_config(config, out)
    plans = validated_plans(config, out, console)
    config.save(out)
    for plan in plans:
        save_plan(out, plan)
    devices = int(os.cpu_count() or 1)
    console.print(plan_table(config, plans, devices))
    started_here = not ray.is_initialized()
    if started_here:
        ray_init(address, config)
    try:
        run_sweep(config, out, plans, console)
    finally:
        if started_here:
            ray.shutdown()


def ray_init(address: str | None, config: SweepConfig) -> None:
    import ray

    from lipsweep.ray_local import start_local_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:  # join an existing cluster: resources are the cluster's
        ray.init(address=address, log_to_driver=False)
        return
    start_local_ray()


def with_overrides(base: SweepConfig, **changes: object) -> SweepConfig:
    return replace(base, **{k: v for k, v in changes.items() if v is not None})
