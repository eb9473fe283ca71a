"""The SLURM backend against a real single-node SLURM (cluster/slurm-single-node.sh).

The module is skipped when slurmctld/munged are not installed (``apt-get install -y
--no-install-recommends slurm-wlm munge``) or when not run as root (the daemons run as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from lipsweep.backends.slurm import (
    SlurmOptions,
    job_states,
    launch_slurm,
    read_jobs,
    time_minutes,
    wait_for_jobs,
)
from lipsweep.launch_command import launch
from lipsweep.results import read_attempts
from lipsweep.status_command import status_table
from lipsweep.sweep import SweepConfig
from tests.test_sweep import CONFIG as SWEEP_CONFIG

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "slurm-single-node.sh"
QUIET = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives for the session
CONFIG = replace(SWEEP_CONFIG, sweep_id="s")  # the local sweep tests' config, another id
OPTIONS = SlurmOptions(cpus_per_task=1, time="20:00")
COMPARED = ["attempt_id", "trial_id", "stage", "lr", "weight_decay", "seed", "status"]


@pytest.fixture(scope="module")
def slurm() -> Iterator[str]:
    """A private single-node SLURM for this module, stopped by PID at the end."""
    missing = [name for name in ("slurmctld", "slurmd", "munged") if not shutil.which(name)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM daemons need root")
    # munged wants every folder above its socket searchable by all: not pytest's 0700 ones.
    folder = Path(tempfile.mkdtemp(prefix="lipsweep-slurm-"))
    folder.chmod(0o755)
    started = subprocess.run(
        [str(SCRIPT), "start", str(folder)], capture_output=True, text=True, check=False
    )
    assert started.returncode == 0, started.stderr
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    yield os.environ["SLURM_CONF"]
    subprocess.run([str(SCRIPT), "stop", str(folder)], check=False)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path / "cache"))  # jobs inherit it


def run_to_end(config: SweepConfig, out: Path, options: SlurmOptions) -> dict[str, str]:
    submitted = launch_slurm(config, out, options, QUIET)
    wait_for_jobs(out, list(submitted.values()), timeout_s=300)
    return submitted


def status_text(out: Path) -> str:
    recorder = Console(record=True, width=250, file=open(os.devnull, "w"))  # noqa: SIM115
    recorder.print(status_table(out))
    return recorder.export_text()


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def mid_attempt(out: Path) -> str | None:
    """An attempt with a checkpoint after epoch >= 1 and no result yet."""
    finished = set(read_attempts(out)["attempt_id"]) if (out / "results").exists() else set()
    for progress in (out / "attempts").glob("*/progress.json"):
        epoch = json.loads(progress.read_text())["epoch"]
        if progress.parent.name not in finished and epoch >= 1:
            return progress.parent.name
    return None


def test_time_limits_parse() -> None:
    assert time_minutes("30") == 30
    assert time_minutes("2:00:00") == 120
    assert time_minutes("1-00") == 1440
    assert time_minutes("1-12:00:00") == 2160
    with pytest.raises(ValueError):
        time_minutes("soon")


def test_options_file(tmp_path: Path) -> None:
    path = tmp_path / "slurm.toml"
    path.write_text('[slurm]\npartition = "gpu"\ngpus_per_node = 4\narray_parallelism = 8\n')
    options = SlurmOptions.from_file(path).with_overrides(partition="a100", qos=None)
    assert (options.partition, options.gpus_per_node, options.array_parallelism) == ("a100", 4, 8)
    path.write_text('{"partitoin": "gpu"}')
    path = path.rename(tmp_path / "slurm.json")
    with pytest.raises(ValueError, match="partitoin"):
        SlurmOptions.from_file(path)


def test_cli_refuses_bad_slurm_options_and_cancel_without_jobs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lipsweep.cli import app

    runner = CliRunner()
    out = str(tmp_path / "sweep")
    result = runner.invoke(app, ["launch", "--backend", "slurm", "--out", out, "--time", "soon"])
    assert result.exit_code == 2 and "--time 'soon'" in result.output
    result = runner.invoke(app, ["cancel", out])
    assert result.exit_code == 2 and "no SLURM jobs" in result.output


@pytest.mark.slow
def test_array_over_cells_equals_the_local_sweep(slurm: str, tmp_path: Path, ray_session) -> None:
    # Two cells, one slot: the array runs its tasks one after the other.
    out = tmp_path / "slurm-sweep"
    submitted = run_to_end(CONFIG, out, replace(OPTIONS, array_parallelism=1))
    assert set(submitted) == {"digits-XS-aol", "digits-XS-sll"}
    assert all("_" in job_id for job_id in submitted.values())  # one array
    assert read_jobs(out) == {cell: [job_id] for cell, job_id in submitted.items()}
    remote = read_attempts(out)
    assert set(remote["slurm_job_id"]) <= {j.split("_")[0] for j in submitted.values()} | {
        str(int(j.split("_")[0]) + i) for j in submitted.values() for i in range(1, 3)
    }
    local_out = tmp_path / "local-sweep"
    launch(CONFIG, local_out, None, QUIET)
    local = read_attempts(local_out)
    key = ["attempt_id"]
    assert len(remote) == len(local) == 6
    assert (
        remote[COMPARED]
        .sort_values(key)
        .reset_index(drop=True)
        .equals(local[COMPARED].sort_values(key).reset_index(drop=True))
    )
    text = status_text(out)
    assert "SLURM job" in text and text.count("2/2") == 2
    assert "SLURM job" not in status_text(local_out)


def running_job(out: Path) -> str:
    """The sweep's only job id, once an attempt of it has checkpointed mid-way."""
    wait_until(lambda: mid_attempt(out) is not None, 240, "an attempt past its first epoch")
    (job_id,) = [ids[-1] for ids in read_jobs(out).values()]
    assert job_states([job_id])[job_id] == "RUNNING"
    return job_id


@pytest.mark.slow
def test_requeued_job_resumes_its_attempt_and_runs_each_attempt_once(
    slurm: str, tmp_path: Path
) -> None:
    config = replace(CONFIG, methods=("aol",), max_epochs=8)
    out = tmp_path / "sweep"
    launch_slurm(config, out, replace(OPTIONS, cpus_per_task=2), QUIET)
    job_id = running_job(out)
    interrupted = mid_attempt(out)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # A requeued job waits ~2 minutes (BeginTime) before it is eligible again: start it now.
    wait_until(lambda: job_states([job_id]).get(job_id) == "PENDING", 60, "the requeue")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    wait_for_jobs(out, [job_id], timeout_s=300)
    attempts = read_attempts(out)
    assert attempts["attempt_id"].is_unique and len(attempts) == 3
    assert set(attempts["status"]) == {"completed"}
    assert (attempts["slurm_job_id"] == job_id).all()
    resumed = attempts.set_index("attempt_id").loc[interrupted]
    assert resumed["resumed_from_epoch"] > 0 and resumed["epochs_done"] == 8
    # GPU-hours: one row per attempt, no reservation left behind by the killed run.
    assert not list((out / "ledger").glob("*.json"))
    assert len(list((out / "results" / "attempts").rglob("*.parquet"))) == 3
    assert read_jobs(out) == {"digits-XS-aol": [job_id]}


@pytest.mark.slow
def test_cancelled_job_shows_in_status_and_a_relaunch_finishes(slurm: str, tmp_path: Path) -> None:
    from lipsweep.backends.slurm import cancel_sweep

    config = replace(CONFIG, methods=("sll",), max_epochs=3)
    out = tmp_path / "sweep"
    launch_slurm(config, out, replace(OPTIONS, cpus_per_task=2), QUIET)
    job_id = running_job(out)
    assert cancel_sweep(out) == [job_id]
    wait_for_jobs(out, [job_id], timeout_s=60)
    assert f"{job_id} CANCELLED" in status_text(out)
    again = run_to_end(config, out, replace(OPTIONS, cpus_per_task=2))
    assert list(again) == ["digits-XS-sll"] and again["digits-XS-sll"] != job_id
    attempts = read_attempts(out)
    assert attempts["attempt_id"].is_unique and len(attempts) == 3
    assert set(attempts["status"]) == {"completed"}
    assert read_jobs(out) == {"digits-XS-sll": [job_id, again["digits-XS-sll"]]}
    text = status_text(out)
    assert f"{again['digits-XS-sll']} COMPLETED" in text and "1/1" in text
    # `lipsweep resume` of a finished SLURM sweep submits nothing and exits 0.
    resumed = subprocess.run(
        [sys.executable, "-m", "lipsweep", "resume", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "no cell to submit" in " ".join(resumed.stdout.split())
    assert read_jobs(out) == {"digits-XS-sll": [job_id, again["digits-XS-sll"]]}


def test_finished_cells_are_not_resubmitted(tmp_path: Path) -> None:
    """A cell whose every final run has ended for good needs no new job on a relaunch; a NaN
    final with retries left, or a missing budget, keeps the cell open."""
    from datetime import UTC, datetime

    from lipsweep.backends.slurm import finished_cells
    from lipsweep.results import write_attempt
    from lipsweep.sweep import SweepConfig

    config = SweepConfig(
        sweep_id="s",
        datasets=("digits",),
        sizes=("XS",),
        methods=("aol", "cpl", "sll"),
        budgets=("1h", "2h"),
        max_retries=1,
    )

    def final(method: str, budget: str, status: str, attempt: int = 0) -> None:
        trial = f"final-digits-XS-{method}-{budget}-t0"
        row = {
            "sweep": "s",
            "dataset": "digits",
            "method": method,
            "size": "XS",
            "stage": "final",
            "budget": budget,
            "trial_id": trial,
            "attempt": attempt,
            "attempt_id": f"{trial}-a{attempt}",
            "status": status,
            "ended_at": datetime.now(UTC),
        }
        write_attempt(tmp_path, row, [])

    final("aol", "1h", "completed")
    final("aol", "2h", "oom")
    final("cpl", "1h", "completed")
    final("cpl", "2h", "nan")  # one retry left
    final("sll", "1h", "completed")  # 2h not run yet
    assert finished_cells(config, tmp_path) == {"digits-XS-aol"}
    final("cpl", "2h", "nan", attempt=1)  # retries used up
    assert finished_cells(config, tmp_path) == {"digits-XS-aol", "digits-XS-cpl"}
