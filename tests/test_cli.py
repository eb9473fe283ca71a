"""The command line, run as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lipsweep import __version__


def lipsweep_command() -> list[str]:
    exe = shutil.which("lipsweep", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "lipsweep"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*lipsweep_command(), *args], capture_output=True, text=True, timeout=120, env=full_env
    )


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "doctor" in result.stdout and "data" in result.stdout


@pytest.mark.parametrize("command", [["doctor"], ["data"], ["data", "download"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"lipsweep {__version__}"
    assert __version__[0].isdigit() and "unknown" not in __version__


def test_doctor_reports_versions_and_data(tmp_path: Path, shared_data: Path) -> None:
    result = run("doctor", env={"LIPSWEEP_DATA": str(shared_data)})
    assert result.returncode == 0, result.stderr
    import torch

    assert torch.__version__.split("+")[0] in result.stdout
    for name in ("python", "torch", "ray", "optuna", "submitit", "pyarrow", "cuda", "sbatch"):
        assert name in result.stdout
    assert "cifar10" in result.stdout and "tiny-imagenet" in result.stdout


def test_doctor_survives_missing_data_and_slurm(tmp_path: Path) -> None:
    env = {
        "LIPSWEEP_DATA": str(tmp_path / "nothing-here"),
        "PATH": str(Path(sys.executable).parent),
    }
    result = run("doctor", env=env)
    assert result.returncode == 0, result.stderr
    assert "no dataset found" in result.stdout
    assert "lipsweep data download" in result.stdout
    assert "sbatch not on PATH" in result.stdout
