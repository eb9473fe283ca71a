"""The ``lipsweep`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lipsweep import __version__

app = typer.Typer(
    help="Compare 1-Lipschitz convolutions under GPU-hour budgets (Prach et al., CVPR 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Fetch and inspect the datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error that says what to fix; the caller raises the returned Exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"lipsweep {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """lipsweep: sweeps, certificates and rankings of 1-Lipschitz layers."""


@app.command()
def doctor() -> None:
    """Check the installation: versions, CUDA, SLURM and the datasets found."""
    from lipsweep.doctor import run_checks

    console.print(run_checks())


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="cifar10, cifar100 or tiny-imagenet")],
    data_dir: Annotated[
        Path | None, typer.Option(help="Where datasets live (default: $LIPSWEEP_DATA).")
    ] = None,
) -> None:
    """Download an official dataset archive, check its md5 and unpack it."""
    from lipsweep.data import default_data_dir
    from lipsweep.download import DownloadError, download_dataset

    target = data_dir or default_data_dir()
    try:
        path = download_dataset(name, target)
    except DownloadError as error:
        raise fail(str(error)) from None
    console.print(f"{name} is ready in {path}")


def check_choice(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    if value not in choices:
        raise fail(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_budget(text: str) -> float:
    from lipsweep.budget import BudgetError, parse_budget

    try:
        return parse_budget(text)
    except BudgetError as error:
        raise fail(str(error)) from None


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise fail(f"--device {name} asked for, but no CUDA device is visible: use --device cpu")
    return name


@app.command()
def train(
    method: Annotated[str, typer.Option(help="aol, bcop, cpl, cayley, lot, sll, soc or standard")],
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset folder (default $LIPSWEEP_DATA).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the attempt's files go.")] = Path("runs/train"),
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N epochs.")] = 10,
    max_examples: Annotated[
        int | None, typer.Option(help="Use only the first N examples of each split.")
    ] = None,
) -> None:
    """Train one model under a time budget and print its certified accuracy.

    Re-running the same command resumes from the last checkpoint."""
    from lipsweep.data import DATASETS
    from lipsweep.layers import LAYERS
    from lipsweep.model import SIZES
    from lipsweep.train_command import TrainRequest, run_train

    check_choice(method, list(LAYERS), "method")
    check_choice(size, list(SIZES), "size")
    check_choice(dataset, list(DATASETS), "dataset")
    check_choice(calibration, ("measure", "paper-a100"), "calibration")
    check_choice(stage, ("final", "search"), "stage")
    budget_s = check_budget(budget)
    if epochs is not None and epochs < 1:
        raise fail(f"--epochs must be at least 1, got {epochs}")
    request = TrainRequest(
        method=method,
        size=size,
        dataset=dataset,
        budget_s=budget_s,
        lr=lr,
        weight_decay=wd,
        seed=seed,
        epochs=epochs,
        calibration=calibration,
        stage=stage,
        batch_size=batch_size,
        eval_every=eval_every,
        device=pick_device(device),
        data_dir=data_dir,
        out=out,
        checkpoint_every=checkpoint_every,
        max_examples=max_examples,
    )
    try:
        code = run_train(request, console)
    except ValueError as error:  # bad input found while planning: nothing was trained
        raise fail(str(error)) from None
    raise typer.Exit(code)


def split_list(text: str, choices: tuple[str, ...] | list[str], what: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values:
        raise fail(f"--{what}s is empty: give a comma-separated list of {', '.join(choices)}")
    for value in values:
        check_choice(value, choices, what)
    return values


@app.command()
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset folder (default $LIPSWEEP_DATA).")
    ] = None,
) -> None:
    """Measure seconds per epoch of each cell on this hardware and print the epochs each budget
    buys, beside the paper's A100 figures. Results are cached per device and cell."""
    from lipsweep.calibrate_command import print_calibrations
    from lipsweep.data import DATASETS
    from lipsweep.layers import LAYERS
    from lipsweep.model import SIZES

    cells = (
        split_list(datasets, list(DATASETS), "dataset"),
        split_list(sizes, list(SIZES), "size"),
        split_list(methods, list(LAYERS), "method"),
    )
    budgets = [check_budget(b) for b in budget.split(",") if b.strip()]
    if not budgets:
        raise fail("--budget is empty: give budgets such as 2h,10h,24h")
    try:
        print_calibrations(*cells, budgets, batch_size, pick_device(device), data_dir, console)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
