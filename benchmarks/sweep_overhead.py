"""Scheduler overhead of a sweep of short trials on local Ray.

Runs a small real sweep (digits, short budgets) and reports, from its Parquet results:
- the share of the sweep's wall time x concurrent slots spent inside training epochs, and
  inside attempts at all (model build, data, evaluation, checkpoints included);
- launch-to-first-attempt time (Ray start, calibration, Optuna asks, Tune scheduling) and
  launch-to-first-epoch-end time.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 4] [--budget 20s]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from lipsweep.backends.local import LocalBackend
from lipsweep.config import SweepConfig
from lipsweep.results import read_attempts, read_history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--budget", default="20s")
    parser.add_argument("--methods", default="aol,cpl")
    args = parser.parse_args()
    console = Console()
    slots = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        config = SweepConfig(
            sweep_id="overhead",
            datasets=("digits",),
            sizes=("XS",),
            methods=tuple(args.methods.split(",")),
            budgets=(args.budget,),
            trials=args.trials,
            search_budget=args.budget,
            batch_size=128,
        )
        start = pd.Timestamp.now(tz="UTC")
        clock = time.monotonic()
        LocalBackend().launch(config, out, monitor=lambda line: None)
        wall = time.monotonic() - clock
        attempts, history = read_attempts(out), read_history(out)
    train = history["train_seconds"].sum()
    inside = attempts["device_seconds"].sum()
    first = attempts["started_at"].min()
    first_epoch = history.merge(attempts[["attempt_id", "started_at"]], on="attempt_id")
    first_epoch = first_epoch[first_epoch["epoch"] == 1]
    first_epoch_end = (
        first_epoch["started_at"] + pd.to_timedelta(first_epoch["train_seconds"], unit="s")
    ).min()
    table = Table(title=f"sweep of {len(attempts)} attempts on {slots} CPU slots")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("wall time of the launch (s)", f"{wall:.1f}"),
        ("training epochs / (wall x slots)", f"{train / (wall * slots):.3f}"),
        ("inside attempts / (wall x slots)", f"{inside / (wall * slots):.3f}"),
        ("launch -> first attempt start (s)", f"{(first - start).total_seconds():.1f}"),
        ("launch -> first epoch end (s)", f"{(first_epoch_end - start).total_seconds():.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


if __name__ == "__main__":
    main()
