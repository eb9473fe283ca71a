"""``lipsweep doctor``: what is installed, what is missing and how to get it.

Every check is wrapped so that a missing or broken piece is reported, never raised.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from collections.abc import Callable
from importlib import metadata

from rich.table import Table

PACKAGES = ("torch", "ray", "optuna", "submitit", "pyarrow", "typer", "rich")
OK, MISSING = "[green]ok[/]", "[yellow]missing[/]"


def _safe(check: Callable[[], tuple[str, str]]) -> tuple[str, str]:
    try:
        return check()
    except Exception as error:  # doctor reports every failure, never raises
        return MISSING, f"check failed: {type(error).__name__}: {error}"


def package_rows() -> list[tuple[str, str, str]]:
    rows = [("python", OK, platform.python_version())]
    for name in PACKAGES:
        try:
            rows.append((name, OK, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, MISSING, f"pip install {name}  (see README)"))
    return rows


def cuda_row() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        return MISSING, "no CUDA device: lipsweep runs on the CPU (slow, fine for tests)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return OK, ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names))


def slurm_row(command: str) -> tuple[str, str]:
    path = shutil.which(command)
    if path is None:
        return MISSING, f"{command} not on PATH: only the local backend is available"
    answer = subprocess.run(
        [command, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    text = (answer.stdout or answer.stderr).strip().splitlines()
    if answer.returncode != 0:
        return MISSING, f"{path} did not answer: {text[-1] if text else answer.returncode}"
    return OK, f"{text[0] if text else ''} ({path})"


def data_row() -> tuple[str, str]:
    from lipsweep.data import default_data_dir, find_datasets

    data_dir = default_data_dir()
    found = find_datasets(data_dir)
    if not found:
        hint = "run `lipsweep data download cifar10` or set LIPSWEEP_DATA"
        return MISSING, f"{data_dir}: no dataset found; {hint} (digits needs no download)"
    return OK, f"{data_dir}: {', '.join(sorted(found))}"


def run_checks() -> Table:
    table = Table(title="lipsweep doctor", show_lines=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("details", overflow="fold")
    for name, status, detail in package_rows():
        table.add_row(name, status, detail)
    table.add_row("cuda", *_safe(cuda_row))
    for command in ("sbatch", "sinfo"):
        table.add_row(command, *_safe(lambda c=command: slurm_row(c)))
    table.add_row("data", *_safe(data_row))
    return table
