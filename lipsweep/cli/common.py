"""What every command shares: the consoles, the input-error handling, typed options, parsers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from lipsweep.atomic import is_disk_full
from lipsweep.budget import Budget
from lipsweep.errors import InputError

console = Console()
err_console = Console(stderr=True)


class InputErrorsAsOneLine(TyperGroup):
    """Turns ``InputError`` (and only it) into "error: ..." on one line and exit 2. Any other
    exception is a bug: it propagates with its traceback (exit 1)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as error:
            if not is_disk_full(error):
                raise
            err_console.print(
                f"[bold red]error:[/] {disk_full_line(error)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None


def disk_full_line(error: OSError) -> str:
    """What a full disk costs and what to do: the folder it hit, and how to go on (a resume of
    the sweep that folder belongs to, if any; else the command again)."""
    where = Path(error.filename).parent if error.filename else Path.cwd()
    sweep = next((p for p in (where, *where.parents) if (p / "sweep.json").is_file()), None)
    then = (
        f"run `lipsweep resume {sweep}` (finished results are kept)"
        if sweep is not None
        else "run the command again"
    )
    return f"no space left on device under {where}: free space and {then}"


def split_list(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated option as a tuple (None if not given); the config checks the values."""
    if text is None:
        return None
    return tuple(value.strip() for value in text.split(",") if value.strip())


def budgets(text: str | None) -> tuple[str, ...] | None:
    """Comma-separated budgets as canonical labels; InputError on the first bad one."""
    if text is None:
        return None
    labels = tuple(Budget.parse(part).label for part in text.split(",") if part.strip())
    if not labels:
        raise InputError("--budget is empty: give budgets such as 2h,10h,24h")
    return labels


def log_range(text: str | None, option: str) -> tuple[float, float] | None:
    """ "LOW,HIGH" with 0 < LOW < HIGH (a log-uniform range)."""
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"{option} must be LOW,HIGH such as 1e-4,1e-1, got {text!r}") from None
    if not 0 < low < high:
        raise InputError(f"{option} needs 0 < LOW < HIGH (searched log-uniformly), got {text!r}")
    return low, high


def positive_ints(text: str, option: str, at_least: int = 1) -> list[int]:
    """A comma-separated list of at least ``at_least`` distinct positive integers."""
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise InputError(f"--{option} must be comma-separated integers, got {text!r}") from None
    if len(set(values)) < at_least or not values or min(values) < 1:
        many = "at least two distinct " if at_least == 2 else ""
        raise InputError(f"--{option} needs {many}positive integers, got {text!r}")
    return values


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
    return value


def at_least(option: str, value: int | float | None, low: int | float) -> None:
    if value is not None and value < low:
        raise InputError(f"{option} must be at least {low}, got {value}")


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown --device {name!r}: use auto, cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"--device {name} asked for, but no CUDA device is visible: use --device cpu"
        )
    return name


def sweep_folder(out: Path) -> Path:
    if not (out / "sweep.json").exists():
        raise InputError(f"{out} holds no sweep (no sweep.json): give the --out of a launch")
    return out


def log_line(line: str) -> None:
    """Plain timestamped progress, for output that is not a terminal (nohup, SLURM logs)."""
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


DataOpt = Annotated[Path | None, typer.Option(help="Dataset folder (default $LIPSWEEP_DATA).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
