"""`lipsweep export`: a final model as a plain PyTorch program (``lipsweep.export``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lipsweep.backends.base import check_writable
from lipsweep.budget import Budget
from lipsweep.cli.certify import models_in
from lipsweep.cli.common import console
from lipsweep.errors import InputError
from lipsweep.names import Cell

FORMATS = ("pt2", "onnx")


def export(
    run_dir: Annotated[
        Path, typer.Argument(help="A sweep folder (its final models) or an attempt folder.")
    ],
    cell: Annotated[
        str | None,
        typer.Option(help="The cell, e.g. cifar10-XS-soc (needed when the sweep has several)."),
    ] = None,
    budget: Annotated[str | None, typer.Option(help="This budget (default: the largest).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="The file to write (default: <cell>.<format> here).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="pt2 (torch.export; every method) or onnx.")
    ] = "pt2",
) -> None:
    """Export a trained model to a file that runs with torch alone (no lipsweep import):
    `torch.export.load(path).module()` for pt2. The file records the model's guaranteed
    Lipschitz bound (lipsweep.load_exported returns it with the module)."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    chosen = parse_cell(cell)
    label = Budget.parse(budget).label if budget is not None else None
    fields = (chosen.dataset, chosen.size, chosen.method) if chosen else (None, None, None)
    models = models_in(run_dir, *fields, label)
    if len(models) > 1:
        names = ", ".join(f"{m.dataset}-{m.size}-{m.method}" for m in models)
        raise InputError(
            f"{run_dir} has {len(models)} final models ({names}): choose one with --cell"
        )
    (model,) = models
    target = out or Path(f"{model.dataset}-{model.size}-{model.method}.{fmt}")
    if target.is_dir():
        raise InputError(f"--out {target} is a folder: give a file name")
    check_writable(target.parent)
    from lipsweep.export import NotExportable, export_checkpoint

    try:
        record = export_checkpoint(model.checkpoint, target, fmt)
    except NotExportable as error:
        raise InputError(f"cannot export {model.method}: {error}") from None
    console.print(
        f"exported {model.dataset}-{model.size}-{model.method} ({model.attempt_id}) to {target}; "
        f"guaranteed Lipschitz bound {record['lipschitz_bound']:.6g}"
    )


def parse_cell(text: str | None) -> Cell | None:
    if text is None:
        return None
    try:
        return Cell.parse(text)
    except ValueError as error:
        raise InputError(str(error)) from None


def register(app: typer.Typer) -> None:
    app.command()(export)
