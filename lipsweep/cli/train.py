"""`lipsweep train` (one attempt under a budget, with a progress bar) and `lipsweep calibrate`."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lipsweep.atomic import write_text_atomic
from lipsweep.backends.base import check_writable
from lipsweep.budget import Budget, format_budget
from lipsweep.cli.common import (
    DataOpt,
    DeviceOpt,
    at_least,
    budgets,
    check_choice,
    console,
    pick_device,
    split_list,
)
from lipsweep.config import CALIBRATIONS
from lipsweep.errors import InputError
from lipsweep.layers.registry import SPECS
from lipsweep.names import DATASETS, SIZES, STAGES

if TYPE_CHECKING:
    from lipsweep.attempt import Outcome


def plan_epochs(spec, calibration: str, budget_s: float, train_examples: int) -> tuple[int, str]:
    """(epochs, how they were obtained); InputError when the budget is shorter than an epoch."""
    import torch

    from lipsweep.calibrate import CalibrationCache, calibrate_cell, default_cache_dir, paper_epochs

    if calibration == "paper-a100":
        epochs = paper_epochs(spec.dataset, spec.size, spec.method, budget_s)
        how = "the paper's A100 epoch table"
    else:
        measured = calibrate_cell(
            spec.dataset, spec.size, spec.method, spec.batch_size, train_examples,
            torch.device(spec.device), CalibrationCache(default_cache_dir() / "calibrations.json"),
        )  # fmt: skip
        epochs = measured.epochs(budget_s)
        how = f"{measured.seconds_per_epoch:.2f} s/epoch measured on {measured.device}"
    if epochs < 1:
        raise InputError(
            f"a budget of {format_budget(budget_s)} is shorter than one epoch "
            f"({how}): give a longer --budget or --epochs"
        )
    return epochs, how


def run_with_progress(spec, workdir: Path):
    from lipsweep.attempt import run_attempt

    columns = (
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=spec.epochs, status="starting")

        def on_epoch(row: dict[str, float]) -> None:
            status = f"loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
            if "cra_36" in row:
                status += f" | test acc {row['accuracy']:.3f} CRA36 {row['cra_36']:.3f}"
            progress.update(task, completed=int(row["epoch"]), status=status)

        return run_attempt(spec, workdir, on_epoch)


def result_table(outcome: Outcome) -> Table:
    """The last metrics; a final run's are certified with its guaranteed Lipschitz bound."""
    certified = outcome.certified_lipschitz is not None
    how = f"certified with L = {outcome.certified_lipschitz:.6g}" if certified else "float32, L = 1"
    table = Table(title=f"result: {outcome.status} ({how})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in outcome.metrics.items():
        table.add_row(name, f"{value:.4f}")
    if outcome.lipschitz_bound is not None:
        table.add_row("Lipschitz bound", f"{outcome.lipschitz_bound:.6g}")
    table.add_row("device-seconds", f"{outcome.device_seconds:.1f}")
    return table


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=str))


def train(
    method: Annotated[str, typer.Option(help=f"{', '.join(SPECS)}, or a plug-in import path")],
    size: Annotated[str, typer.Option(help="Model size: XS, S, M or L.")] = "XS",
    dataset: Annotated[
        str, typer.Option(help="cifar10, cifar100, tiny-imagenet or digits")
    ] = "cifar10",
    budget: Annotated[
        str, typer.Option(help="Training time budget: 90s, 45m, 2h, 1h30m, 1d.")
    ] = "10m",
    lr: Annotated[float, typer.Option(help="Peak learning rate of the one-cycle schedule.")] = 0.01,
    wd: Annotated[float, typer.Option(help="Weight decay.")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and data order.")] = 0,
    epochs: Annotated[
        int | None, typer.Option(help="Train this many epochs; ignores --budget.")
    ] = None,
    calibration: Annotated[
        str, typer.Option(help="measure (this hardware) or paper-a100.")
    ] = "measure",
    stage: Annotated[
        str, typer.Option(help="final (train/test) or search (90/10 train/val).")
    ] = "final",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N epochs (and at the end).")] = 1,
    device: DeviceOpt = "auto",
    data_dir: DataOpt = None,
    out: Annotated[Path, typer.Option(help="Where the attempt's files go.")] = Path("runs/train"),
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N epochs.")] = 10,
    max_examples: Annotated[
        int | None, typer.Option(help="Use only the first N examples of each split.")
    ] = None,
) -> None:
    """Train one model under a time budget and print its certified accuracy.

    Re-running the same command resumes from the last checkpoint."""
    from lipsweep.attempt import TrialSpec, load_data

    check_choice(method, list(SPECS), "method")
    check_choice(size, SIZES, "size")
    check_choice(dataset, DATASETS, "dataset")
    check_choice(calibration, CALIBRATIONS, "calibration")
    check_choice(stage, STAGES, "stage")
    budget_s = Budget.parse(budget).seconds
    if lr <= 0 or wd < 0:
        raise InputError(f"--lr must be positive and --wd not negative, got {lr:g} and {wd:g}")
    for option, value in (
        ("--epochs", epochs), ("--batch-size", batch_size), ("--checkpoint-every", checkpoint_every),
        ("--max-examples", max_examples), ("--eval-every", eval_every),
    ):  # fmt: skip
        at_least(option, value, 1)
    check_writable(out)
    spec = TrialSpec(
        dataset=dataset, size=size, method=method, epochs=1, lr=lr, weight_decay=wd, seed=seed,
        stage=stage, batch_size=batch_size, eval_every=eval_every, device=pick_device(device),
        data_dir=str(data_dir) if data_dir else None, max_examples=max_examples,
        checkpoint_every_epochs=checkpoint_every,
    )  # type: ignore[arg-type]  # fmt: skip
    try:
        train_set, _ = load_data(spec)
    except FileNotFoundError as error:
        raise InputError(str(error)) from None
    if epochs is not None:
        spec, how = replace(spec, epochs=epochs), "given by --epochs"
    else:
        planned, how = plan_epochs(spec, calibration, budget_s, len(train_set))
        spec = replace(spec, epochs=planned)
    workdir = out / f"{spec.dataset}-{spec.size}-{spec.method}-seed{spec.seed}"
    console.print(
        f"{spec.method}-{spec.size} on {spec.dataset}: {spec.epochs} epochs ({how}), "
        f"lr {spec.lr:g}, wd {spec.weight_decay:g}, seed {spec.seed}, device {spec.device}"
    )
    outcome = run_with_progress(spec, workdir)
    write_json(workdir / "result.json", {"spec": asdict(spec), "outcome": asdict(outcome)})
    console.print(result_table(outcome))
    if outcome.status != "completed":
        console.print(f"[red]attempt ended: {outcome.status}[/] {outcome.error}")
        raise typer.Exit(1)


def calibrate(
    datasets: Annotated[str, typer.Option(help="Comma-separated datasets.")] = "cifar10",
    sizes: Annotated[str, typer.Option(help="Comma-separated sizes (XS,S,M,L).")] = "XS",
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods.")
    ] = "aol,bcop,cpl,cayley,lot,sll,soc",
    budget: Annotated[
        str, typer.Option(help="Comma-separated budgets, e.g. 2h,10h,24h.")
    ] = "2h,10h,24h",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    threads: Annotated[int, typer.Option(help="torch threads, as a trial's --cpus-per-trial.")] = 1,
    device: DeviceOpt = "auto",
    data_dir: DataOpt = None,
    recalibrate: Annotated[
        bool, typer.Option("--recalibrate", help="Measure again instead of using the cache.")
    ] = False,
) -> None:
    """Measure seconds per epoch of each cell on this hardware (with the threads a trial uses)
    and print the epochs each budget buys, beside the paper's A100 figures.

    Measurements are cached in $LIPSWEEP_CACHE/calibrations.json (default
    ~/.cache/lipsweep/calibrations.json), keyed by device and thread count, dataset, size,
    method, batch size and training examples, with the spread of the timed batches and the machine's load; a
    measurement whose batches spread more than 50% is taken again (up to 3 times) and only a
    stable one is cached. --recalibrate measures again."""
    import torch

    from lipsweep.calibrate import (
        CalibrationCache,
        CalibrationError,
        calibrate_cell,
        default_cache_dir,
        paper_epochs,
    )
    from lipsweep.data import load_split

    at_least("--batch-size", batch_size, 1)
    at_least("--threads", threads, 1)
    chosen = [split_list(text) or () for text in (datasets, sizes, methods)]
    for values, known, what in zip(
        chosen, (DATASETS, SIZES, list(SPECS)), ("dataset", "size", "method"), strict=True
    ):
        if not values:
            raise InputError(
                f"--{what}s is empty: give a comma-separated list of {', '.join(known)}"
            )
        for value in values:
            check_choice(value, known, what)
    seconds = [Budget.parse(b).seconds for b in budgets(budget) or ()]
    target = pick_device(device)
    cache = CalibrationCache(default_cache_dir() / "calibrations.json")
    table = Table(title=f"calibration on {target}, batch {batch_size}, {threads} threads")
    for column in ("dataset", "size", "method", "s/epoch", "spread", "load"):
        table.add_column(
            column, justify="left" if column in ("dataset", "size", "method") else "right"
        )
    for budget_s in seconds:
        table.add_column(f"epochs {format_budget(budget_s)}", justify="right")
        table.add_column(f"A100 {format_budget(budget_s)}", justify="right")
    data = Path(data_dir) if data_dir else None
    try:
        train_sizes = {name: len(load_split(name, "train", data)) for name in chosen[0]}
    except FileNotFoundError as error:
        raise InputError(str(error)) from None
    with console.status("timing training batches...") as status:
        for dataset, size, method in itertools.product(*chosen):
            if recalibrate:
                cache.forget(dataset, size, method, batch_size)
            status.update(f"timing {method}-{size} on {dataset}")
            measured = calibrate_cell(
                dataset,
                size,
                method,
                batch_size,
                train_sizes[dataset],
                torch.device(target),
                cache,
                threads=threads,
            )
            row = [dataset, size, method, f"{measured.seconds_per_epoch:.2f}"]
            row += [f"{measured.spread:.0%}", f"{measured.load:.1f}"]
            for budget_s in seconds:
                try:
                    paper = str(paper_epochs(dataset, size, method, budget_s))
                except CalibrationError:
                    paper = "-"
                row += [str(measured.epochs(budget_s)), paper]
            table.add_row(*row)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(calibrate)
