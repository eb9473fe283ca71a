"""`lipsweep calibrate`: seconds per epoch on this hardware and the epochs each budget buys."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lipsweep.budget import format_budget
from lipsweep.data import load_split
from lipsweep.measure import (
    CalibrationCache,
    CalibrationError,
    calibrate_cell,
    default_cache_dir,
    paper_epochs,
)


def print_calibrations(
    datasets: list[str],
    sizes: list[str],
    methods: list[str],
    budgets: list[float],
    batch_size: int,
    device: str,
    data_dir: Path | None,
    console: Console,
) -> None:
    cache = CalibrationCache(default_cache_dir() / "calibrations.json")
    table = Table(title=f"calibration on {device}, batch {batch_size}")
    for column in ("dataset", "size", "method", "s/epoch"):
        table.add_column(column, justify="right" if column == "s/epoch" else "left")
    for budget in budgets:
        table.add_column(f"epochs {format_budget(budget)}", justify="right")
        table.add_column(f"paper A100 {format_budget(budget)}", justify="right")
    train_sizes = {name: len(load_split(name, "train", data_dir)) for name in datasets}
    with console.status("timing training batches...") as status:
        for dataset, size, method in itertools.product(datasets, sizes, methods):
            status.update(f"timing {method}-{size} on {dataset}")
            calibration = calibrate_cell(
                dataset, size, method, batch_size, train_sizes[dataset], torch.device(device), cache
            )
            row = [dataset, size, method, f"{calibration.seconds_per_epoch:.2f}"]
            for budget in budgets:
                row += [str(calibration.epochs(budget)), _paper(dataset, size, method, budget)]
            table.add_row(*row)
    console.print(table)


def _paper(dataset: str, size: str, method: str, budget: float) -> str:
    try:
        return str(paper_epochs(dataset, size, method, budget))
    except CalibrationError:
        return "-"
