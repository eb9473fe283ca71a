"""How close does an attempt's time come to its budget?

For each cell: calibrate (timed batches after a warm-up, one torch thread as the attempt runs),
turn the budget into epochs, train that many epochs as a final run, and compare the attempt's
training time (what the budget buys) and total device time (training + evaluation + the final
certificate + checkpoints) with the budget. Run from the project root:

    .venv/bin/python benchmarks/budget_accuracy.py [--budget 60s] [--dataset digits]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lipsweep.attempt import TrialSpec, run_attempt
from lipsweep.budget import parse_budget
from lipsweep.calibrate import calibrate_cell
from lipsweep.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60s")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--size", default="XS")
    parser.add_argument("--methods", default="standard,aol,cpl,soc")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget = parse_budget(args.budget)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_dir = Path(args.data_dir) if args.data_dir else None
    train_examples = len(load_split(args.dataset, "train", data_dir))
    table = Table(title=f"attempt time vs a {args.budget} budget on {device} ({args.dataset})")
    for column in (
        "method", "s/epoch", "epochs", "train s", "train/budget", "eval s", "certify s",
        "device s", "device/budget",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for method in args.methods.split(","):
        calibration = calibrate_cell(
            args.dataset, args.size, method, args.batch_size, train_examples, device, threads=1
        )
        epochs = calibration.epochs(budget)
        spec = TrialSpec(
            dataset=args.dataset,
            size=args.size,
            method=method,
            epochs=epochs,
            lr=0.01,
            weight_decay=1e-5,
            seed=0,
            batch_size=args.batch_size,
            device=str(device),
            data_dir=args.data_dir,
            eval_every=0,
        )
        with tempfile.TemporaryDirectory() as workdir:
            outcome = run_attempt(spec, Path(workdir))
        table.add_row(
            method,
            f"{calibration.seconds_per_epoch:.3f}",
            str(epochs),
            f"{outcome.train_seconds:.1f}",
            f"{outcome.train_seconds / budget:.3f}",
            f"{outcome.eval_seconds:.1f}",
            f"{outcome.certify_seconds:.1f}",
            f"{outcome.device_seconds:.1f}",
            f"{outcome.device_seconds / budget:.3f}",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
