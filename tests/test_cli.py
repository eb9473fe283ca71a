"""The command line, run as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import json
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


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*lipsweep_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        cwd=cwd,
    )


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "doctor" in result.stdout and "data" in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["doctor"],
        ["data"],
        ["data", "download"],
        ["train"],
        ["calibrate"],
        ["launch"],
        ["plan"],
        ["resume"],
        ["status"],
        ["rank"],
        ["bench"],
    ],
)
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


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--method", "aol", "--size", "XL"], "unknown size 'XL'"),
        (["train", "--method", "aol", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["train", "--method", "aol", "--budget", "2x"], "cannot read budget '2x'"),
        (["train", "--method", "aol", "--epochs", "0"], "--epochs must be at least 1"),
        (["calibrate", "--methods", "aol,nope"], "unknown method 'nope'"),
        (["data", "download", "mnist"], "mnist"),
        (["status", "."], "holds no sweep"),
        (["resume", "."], "holds no sweep"),
        (["launch", "--methods", "aol,nope"], "unknown method 'nope'"),
        (["launch", "--budget", "24x"], "cannot read budget '24x'"),
        (["launch", "--max-gpu-hours", "-1"], "--max-gpu-hours must be positive"),
        (["launch", "--backend", "ray"], "--backend ray needs --address"),
        (["rank"], "give a sweep folder"),
        (["launch", "--gpus-per-trial", "-1"], "--gpus-per-trial must be 0 or more"),
        (["launch", "--max-retries", "-1"], "--max-retries must be 0 or more"),
        (["launch", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["train", "--method", "aol", "--lr", "0"], "--lr must be positive"),
        (["train", "--method", "aol", "--checkpoint-every", "0"], "--checkpoint-every must be"),
        (["train", "--method", "aol", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["rank", "--paper", "--top", "a,b"], "--top must be comma-separated integers"),
        (["plan", "--gpus", "0"], "--gpus must be at least 1, got 0"),
        (["plan", "--gpus", "-3"], "--gpus must be at least 1, got -3"),
        (["calibrate", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["bench", "--batches", "0"], "--batches must be at least 1"),
        (["bench", "--format", "xml"], "unknown --format 'xml'"),
        (["train", "--method", "aol", "--device", "tpu"], "unknown --device 'tpu'"),
        (["launch", "--preset", "quickstart", "--cpus-per-trial", "64"], "--cpus-per-trial 64 but"),
        (["launch", "--trials", "0"], "--trials must be at least 1"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = run(*args, env={"LIPSWEEP_DATA": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_fails_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(
        "train",
        "--method",
        "aol",
        "--dataset",
        "cifar10",
        "--out",
        str(out),
        env={"LIPSWEEP_DATA": str(tmp_path / "empty")},
    )
    assert result.returncode == 2
    assert (
        "cifar10 not found" in result.stderr and "lipsweep data download cifar10" in result.stderr
    )
    assert not out.exists()


def test_train_runs_and_prints_certified_accuracy(tmp_path: Path) -> None:
    result = run(
        "train",
        "--method",
        "sll",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result: completed" in result.stdout and "cra_36" in result.stdout
    saved = json.loads((tmp_path / "digits-XS-sll-seed0" / "result.json").read_text())
    assert saved["outcome"]["status"] == "completed" and saved["spec"]["epochs"] == 2


def test_plan_of_the_paper_protocol_needs_no_data(tmp_path: Path) -> None:
    """3 datasets x 4 sizes x 7 methods less LOT-L (no A100 epochs: it did not fit in 80 GB):
    81 cells, 16 search trials of 2h and one 24h final run each."""
    result = run("plan", "--budget", "24h", env={"LIPSWEEP_DATA": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "left out" in text and "lot-L on cifar10 did not fit in 80 GB" in text
    assert "cells: 81, search trials: 1296, final trials: 81" in text
    assert "GPU-hours (no retries): 4536," in text  # 81 x (16 x 2h + 24h)
    assert 'plan of sweep "sweep"' in text  # the default folder's name, quoted
    seeds = run(
        "plan",
        "--budget",
        "24h",
        "--final-seeds",
        "3",
        env={"LIPSWEEP_DATA": str(tmp_path)},
        cwd=tmp_path,
    )
    assert "final trials: 243" in " ".join(seeds.stdout.split())  # 81 cells x 3 seeds


def test_launch_refuses_an_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run("launch", "--preset", "quickstart", "--out", str(blocker / "sweep"), cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot write to" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_launch_refuses_a_cap_smaller_than_one_attempt(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = run(
        "launch",
        "--preset",
        "quickstart",
        "--max-gpu-hours",
        "1e-9",
        "--out",
        str(out),
        env={"LIPSWEEP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "smaller than the cheapest attempt" in result.stderr
    assert not out.exists(), "a refused launch must leave no folder behind"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_launch_with_gpus_on_a_cpu_machine_is_refused(tmp_path: Path) -> None:
    result = run("launch", "--preset", "quickstart", "--gpus-per-trial", "1", cwd=tmp_path)
    assert result.returncode == 2 and "no CUDA device is visible" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_a_hand_edited_sweep_json_in_one_line(tmp_path: Path) -> None:
    from lipsweep.config import SweepConfig

    config = SweepConfig("t", ("digits",), ("XS",), ("aol",), ("1h",))
    path = tmp_path / "sweep.json"
    for edit, message in (({"methods": ["aol", "nope"]}, "unknown method 'nope'"),
                          ({"trials": -3}, "--trials must be at least 1")):  # fmt: skip
        config.save(tmp_path)
        path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
        result = run("resume", str(tmp_path))
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and str(path) in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json"]


def test_an_internal_bug_shows_its_traceback_not_a_bad_input_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only InputError is "bad input" (exit 2); a ValueError from a bug propagates (exit 1)."""
    from typer.testing import CliRunner

    import lipsweep.cli.sweep
    from lipsweep.cli import app
    from lipsweep.config import SweepConfig
    from lipsweep.errors import InputError

    SweepConfig("t", ("digits",), ("XS",), ("aol",), ("1h",)).save(tmp_path)

    def broken(folder: Path):
        raise ValueError("a bug deep in the status code")

    monkeypatch.setattr(lipsweep.cli.sweep, "sweep_status", broken)
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "error:" not in result.output

    def refused(folder: Path):
        raise InputError("the folder is damaged: fix it")

    monkeypatch.setattr(lipsweep.cli.sweep, "sweep_status", refused)
    result = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert result.exit_code == 2 and "error: the folder is damaged: fix it" in result.output


def test_slurm_backend_without_slurm_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    env = {"PATH": str(Path(sys.executable).parent), "LIPSWEEP_CACHE": str(tmp_path / "cache")}
    result = run(
        "launch", "--preset", "quickstart", "--backend", "slurm", "--out", str(out), env=env
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs SLURM's sbatch" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_outputs_that_are_files_are_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["rank", "--paper", "--out", str(blocker)], ["bench", "--out", str(blocker)]):
        result = run(*args)
        assert result.returncode == 2 and "cannot write to" in result.stderr, result.stderr
    assert blocker.read_text() == ""


def test_a_second_driver_on_the_same_folder_is_refused_naming_the_first(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from lipsweep.lock import driver_lock\n"
         f"with driver_lock(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {"OMP_NUM_THREADS": "1", "LIPSWEEP_CACHE": str(tmp_path / "cache")}
        result = run("launch", "--preset", "quickstart", "--out", str(out), env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"is driven by pid {holder.pid}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (out / "results").exists()
    finally:
        holder.kill()
        holder.wait()


def fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, every atomic write (a temporary file, then a rename) hits a full disk
    half-way."""
    import errno

    real = Path.write_text

    def write_text(self: Path, data: str, *args, **kwargs) -> int:
        if not self.name.endswith(".tmp"):
            return real(self, data, *args, **kwargs)
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", write_text)


def test_a_full_disk_is_one_line_and_exit_1_leaving_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume names the folder and how to go on; a fresh launch, which has no sweep to
    resume yet, leaves no folder behind. Neither leaves a temporary file."""
    from typer.testing import CliRunner

    from lipsweep.cli import app
    from lipsweep.config import SweepConfig

    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path / "cache"))
    sweep = tmp_path / "sweep"
    SweepConfig("t", ("digits",), ("XS",), ("aol",), ("1h",)).save(sweep)  # written whole
    stored = (sweep / "sweep.json").read_text()
    fill_disk(monkeypatch)
    result = CliRunner().invoke(app, ["resume", str(sweep)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"error: no space left on device under {sweep}: free space and run "
        f"`lipsweep resume {sweep}` (finished results are kept)"
    ]
    assert (sweep / "sweep.json").read_text() == stored
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(app, ["launch", "--preset", "quickstart", "--out", str(fresh)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"error: no space left on device under {fresh}: free space and run the command again"
    ]
    assert not fresh.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_an_unreachable_ray_address_fails_fast_in_one_line_writing_nothing(tmp_path: Path) -> None:
    """Nothing listens on port 1: ray.init would retry for minutes; the launch answers in
    seconds, before any calibration or file."""
    import time

    out = tmp_path / "sweep"
    env = {"LIPSWEEP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    result = run("launch", "--preset", "quickstart", "--backend", "ray", "--address",
                 "127.0.0.1:1", "--out", str(out), env=env, cwd=tmp_path)  # fmt: skip
    assert time.monotonic() - start < 15
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no Ray cluster answers at 127.0.0.1:1" in result.stderr
    assert "start it or fix --address" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []
