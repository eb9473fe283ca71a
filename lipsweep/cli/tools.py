"""`lipsweep doctor`, `data download`, `bench` and `rank`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lipsweep.backends.base import check_writable
from lipsweep.budget import Budget
from lipsweep.cli.common import (
    DeviceOpt,
    InputErrorsAsOneLine,
    at_least,
    check_choice,
    console,
    err_console,
    pick_device,
    positive_ints,
    split_list,
)
from lipsweep.errors import InputError
from lipsweep.layers.registry import SPECS, is_plugin, method_key
from lipsweep.names import DATASETS, SIZES


def doctor() -> None:
    """Check the installation: versions, CUDA, SLURM and the datasets found."""
    from lipsweep.doctor import run_checks

    console.print(run_checks())


def data_download(
    name: Annotated[str, typer.Argument(help="cifar10, cifar100 or tiny-imagenet")],
    data_dir: Annotated[
        Path | None, typer.Option(help="Where datasets live (default: $LIPSWEEP_DATA).")
    ] = None,
) -> None:
    """Download an official dataset archive, check its md5 and unpack it."""
    from lipsweep.data import default_data_dir
    from lipsweep.download import DownloadError, download_dataset

    try:
        path = download_dataset(name, data_dir or default_data_dir())
    except DownloadError as error:
        raise InputError(str(error)) from None
    console.print(f"{name} is ready in {path}")


def checked(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    values = list(split_list(text) or ())
    if not values:
        raise InputError(f"--{what}s is empty: give a comma-separated list of {', '.join(known)}")
    return [check_choice(value, known, what) for value in values]


def bench(
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods (standard is always added).")
    ] = "aol,bcop,cpl,cayley,lot,sll,soc",
    sizes: Annotated[str, typer.Option(help="Comma-separated sizes.")] = "XS",
    dataset: Annotated[str, typer.Option(help="Input shape of this dataset.")] = "cifar10",
    batch_size: Annotated[
        int | None,
        typer.Option(help="Batch size (default 64; 8 with --scaling; paper: 256)."),
    ] = None,
    batches: Annotated[
        int, typer.Option(help="Timed batches per measurement (repeats with --scaling).")
    ] = 5,
    device: DeviceOpt = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch (default: torch's own).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the Parquet results and figures go.")] = Path(
        "runs/bench"
    ),
    scaling: Annotated[
        bool,
        typer.Option(
            "--scaling",
            help="Fit how single layers' time and saved memory grow with c and s, beside the paper's Table 1, instead of timing the models.",
        ),
    ] = False,
    channels: Annotated[
        str, typer.Option(help="--scaling: channel counts c (at s = the median input size).")
    ] = "16,32,64,128",
    output: Annotated[
        str, typer.Option("--format", help="table (default), csv or json of the timed models.")
    ] = "table",
    input_sizes: Annotated[
        str, typer.Option(help="--scaling: input sizes s (at c = the median channel count).")
    ] = "8,16,32",
) -> None:
    """Time and memory of training and cached inference per method and size, with every figure
    as a ratio to the standard conv measured in the same run; with --scaling, the exponents of
    c and s of single layers beside the paper's Table 1."""
    import torch

    values = [method_key(m) for m in split_list(methods) or ()]
    method_list = checked(",".join(values), [*SPECS, *filter(is_plugin, values)], "method")
    check_choice(output, ("table", "csv", "json"), "--format")
    for option, value in (
        ("--batch-size", batch_size),
        ("--batches", batches),
        ("--threads", threads),
    ):
        at_least(option, value, 1)
    check_writable(out)
    from lipsweep.audit import gate_plugins

    gate_plugins(method_list)  # a user's layer is audited before it is timed
    if threads is not None:
        torch.set_num_threads(threads)
    if scaling:
        from lipsweep.scaling import run_scaling

        grid_c = positive_ints(channels, "channels", at_least=2)
        grid_s = positive_ints(input_sizes, "input-sizes", at_least=2)
        run_scaling(
            method_list, grid_c, grid_s, batch_size or 8, pick_device(device), out, batches, console
        )
        return
    from lipsweep.bench import run_bench

    size_list = checked(sizes, SIZES, "size")
    check_choice(dataset, DATASETS, "dataset")
    run_bench(
        method_list,
        size_list,
        dataset,
        batch_size or 64,
        pick_device(device),
        out,
        batches,
        console if output == "table" else err_console,  # csv / json alone on stdout
        output=output,
    )


def rank(
    dirs: Annotated[list[Path] | None, typer.Argument(help="Sweep folder(s) to rank.")] = None,
    top: Annotated[str, typer.Option(help="Comma-separated k's of the top-k counts.")] = "1,3,10",
    radius: Annotated[int, typer.Option(help="CRA radius in 1/255 units (36, 72, 108, 255).")] = 36,
    budget: Annotated[str | None, typer.Option(help="Rank only this budget, e.g. 24h.")] = None,
    paper: Annotated[bool, typer.Option(help="Rank the paper's own published numbers.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Where figures go (default DIR/analysis).")
    ] = None,
) -> None:
    """Rank methods by top-k certified robust accuracy; print the paper's tables; draw figures."""
    from analysis.rank_command import run_rank

    try:
        ks = sorted({int(k) for k in top.split(",") if k.strip()})
    except ValueError:
        raise InputError(
            f"--top must be comma-separated integers such as 1,3,10, got {top!r}"
        ) from None
    if not ks or ks[0] < 1:
        raise InputError(f"--top must list positive integers such as 1,3,10, got {top!r}")
    if radius not in (36, 72, 108, 255):
        raise InputError(f"--radius must be one of 36, 72, 108, 255 (units of 1/255), got {radius}")
    folders = list(dirs or [])
    if not folders and not paper:
        raise InputError("give a sweep folder to rank, or --paper to rank the paper's numbers")
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder: give the --out of a sweep")
    if out is not None:
        check_writable(out)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file: give a folder for the figures")
    label = Budget.parse(budget).label if budget is not None else None
    raise typer.Exit(run_rank(folders, ks, radius, label, paper, out, console))


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.command()(bench)
    app.command()(rank)
    data_app = typer.Typer(
        cls=InputErrorsAsOneLine, help="Download the official datasets.", no_args_is_help=True
    )
    data_app.command("download")(data_download)
    app.add_typer(data_app, name="data")
