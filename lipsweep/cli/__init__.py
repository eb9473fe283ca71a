"""The ``lipsweep`` command line: thin typer commands over the library.

Commands live in ``sweep`` (launch, plan, resume, status, cancel, slurm-cell), ``train`` (train,
calibrate), ``tools`` (doctor, data, bench, rank), ``certify`` (certify, audit) and ``export``;
``transfer`` (transfer); ``render`` draws their tables. Only ``lipsweep.errors.InputError`` becomes the one-line "error: ..." with exit 2; any other
exception is a bug and shows its traceback (exit 1).
"""

from __future__ import annotations

from typing import Annotated

import typer

from lipsweep import __version__
from lipsweep.cli import certify, export, sweep, tools, train, transfer
from lipsweep.cli.common import InputErrorsAsOneLine, console

app = typer.Typer(
    cls=InputErrorsAsOneLine,
    help="Compare 1-Lipschitz convolutions under GPU-hour budgets (Prach et al., CVPR 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


tools.register(app)
train.register(app)
certify.register(app)
export.register(app)
sweep.register(app)
transfer.register(app)

__all__ = ["app"]
