"""The sweep end to end on real data with real Ray, real Optuna storage and real files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import psutil
import pytest
from rich.console import Console

from lipsweep.engine import load_model, retry_seed, run_trial
from lipsweep.launch_command import launch
from lipsweep.results import read_attempts, read_history
from lipsweep.status_command import status_table
from lipsweep.sweep import SEARCH_SPACE, SweepConfig, plan_cell

CONFIG = SweepConfig(
    sweep_id="t",
    datasets=("digits",),
    sizes=("XS",),
    methods=("aol", "sll"),
    budgets=("1h",),
    trials=2,
    search_budget="1h",
    max_epochs=2,
    batch_size=256,
    checkpoint_every_epochs=1,
)
QUIET = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives for the session


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path / "cache"))


def test_sweep_runs_search_select_final_into_parquet(tmp_path: Path, ray_session) -> None:
    launch(CONFIG, tmp_path, None, QUIET)
    attempts = read_attempts(tmp_path)
    search = attempts[attempts["stage"] == "search"]
    finals = attempts[attempts["stage"] == "final"]
    assert len(search) == 4 and len(finals) == 2
    assert set(attempts["status"]) == {"completed"}
    assert attempts["attempt_id"].is_unique
    assert (search["eval_split"] == "val").all() and (finals["eval_split"] == "test").all()
    assert search["lr"].between(*SEARCH_SPACE["lr"]).all()
    assert search["weight_decay"].between(*SEARCH_SPACE["weight_decay"]).all()
    assert (attempts["epochs_done"] == 2).all() and (attempts["gpu_hours"] > 0).all()
    assert (attempts["cra_36"] <= attempts["accuracy"]).all()
    for method in ("aol", "sll"):
        mine = search[search["method"] == method]
        # Best validation CRA; ties go to the lower trial index.
        best = mine.sort_values(["cra_36", "trial_index"], ascending=[False, True]).iloc[0]
        final = finals[finals["method"] == method].iloc[0]
        assert (final["lr"], final["weight_decay"]) == (best["lr"], best["weight_decay"])
    assert len(read_history(tmp_path)) == 2 * len(attempts)
    # The Optuna studies are durable and know every result.
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
    )
    study = optuna.load_study(study_name="t/digits-XS-aol", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    # The final model is kept and reloads, ready to certify.
    model = load_model(tmp_path, "digits", "XS", "aol")
    assert not model.training
    # Status reads the folder alone and shows every cell done.
    recorder = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    recorder.print(status_table(tmp_path))
    text = recorder.export_text()
    assert "digits-XS-aol" in text and "digits-XS-sll" in text
    assert text.count("2/2") == 2 and text.count("1/1") == 2 and "6 attempts finished" in text
    # Launching again finds everything done and runs nothing.
    launch(CONFIG, tmp_path, None, QUIET)
    again = read_attempts(tmp_path)
    assert sorted(again["attempt_id"]) == sorted(attempts["attempt_id"])
    assert (
        again.set_index("attempt_id")["ended_at"] == attempts.set_index("attempt_id")["ended_at"]
    ).all()


def test_a_different_launch_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    CONFIG.save(tmp_path)
    with pytest.raises(ValueError, match="other settings \\(trials\\)"):
        launch(replace(CONFIG, trials=3), tmp_path, None, QUIET)


def test_nan_attempts_are_retried_with_new_seeds_and_all_recorded(tmp_path: Path) -> None:
    parameters = {
        "trial_id": "search-digits-XS-standard-1h-t0",
        "stage": "search",
        "index": 0,
        "sweep": "t",
        "dataset": "digits",
        "method": "standard",
        "budget": "1h",
        "budget_s": 3600.0,
        "folder": str(tmp_path),
        "cpus": 1,
        "gpus": 0.0,
        "max_retries": 2,
        "max_gpu_hours": None,
        "calibration": "measure",
        "estimated_hours": 0.001,
        "train_examples": 1294,
        "versions": "",
        "git_commit": "",
        "spec": {
            "dataset": "digits",
            "size": "XS",
            "method": "standard",
            "epochs": 2,
            "lr": 1e12,
            "weight_decay": 0.0,
            "seed": 5,
            "stage": "search",
            "batch_size": 256,
        },
    }
    result = run_trial({"trial": parameters})
    assert result["status"] == "nan"
    attempts = read_attempts(tmp_path).sort_values("attempt")
    assert list(attempts["attempt"]) == [0, 1, 2]
    assert list(attempts["status"]) == ["nan"] * 3
    assert list(attempts["seed"]) == [retry_seed(5, a) for a in range(3)]
    assert attempts["seed"].nunique() == 3
    # A failure (here: data that cannot be read) is recorded too, not raised.
    parameters = {
        **parameters,
        "trial_id": "search-cifar10-XS-aol-1h-t0",
        "dataset": "cifar10",
        "method": "aol",
        "spec": {
            **parameters["spec"],
            "dataset": "cifar10",
            "method": "aol",
            "lr": 0.01,
            "data_dir": str(tmp_path / "none"),
        },
    }
    assert run_trial({"trial": parameters})["status"] == "failed"
    failed = read_attempts(tmp_path).query("status == 'failed'")
    assert len(failed) == 1 and "cifar10 not found" in failed.iloc[0]["error"]


def test_gpu_hour_cap_is_respected_within_one_attempt(tmp_path: Path, ray_session) -> None:
    # One attempt at a time (2 CPUs each on the 2-CPU Ray session): reservations keep the sum
    # of *estimates* under the cap, so the overshoot is at most the attempts running at once,
    # here one. A cap of 2.5 estimated attempts, from the cell's calibration (cached: the
    # launch reuses it).
    config = replace(
        CONFIG, methods=("aol",), trials=4, budgets=("1h",), max_epochs=1, cpus_per_trial=2
    )
    estimate = plan_cell(config, "digits", "XS", "aol", "cpu").seconds_per_epoch / 3600
    config = replace(config, max_gpu_hours=2.5 * estimate)
    output = Console(record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    launch(config, tmp_path, None, output)
    attempts = read_attempts(tmp_path)
    spent = attempts["gpu_hours"].sum()
    assert 0 < len(attempts) < 5, "the cap should stop some attempts, not all"
    assert spent <= config.max_gpu_hours + attempts["gpu_hours"].max()
    assert "would pass --max-gpu-hours" in output.export_text()


def _launch_command(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lipsweep",
        "launch",
        "--out",
        str(out),
        "--datasets",
        "digits",
        "--sizes",
        "XS",
        "--methods",
        "aol,cpl",
        "--trials",
        "2",
        "--search-budget",
        "8s",
        "--budget",
        "8s",
        "--batch-size",
        "128",
    ]


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (Ray's), by PID."""
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_sigkill_driver_mid_sweep_then_resume_runs_every_attempt_once(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIPSWEEP_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "sweep"
    process = subprocess.Popen(
        _launch_command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        finished = len(read_attempts(out)) if (out / "results").exists() else 0
        checkpoints = list((out / "attempts").glob("*/progress.json"))
        if finished >= 1 and any(json.loads(p.read_text())["epoch"] >= 1 for p in checkpoints):
            break
        time.sleep(0.2)
    assert process.poll() is None, "the sweep finished before it could be killed"
    _kill_tree(process)
    before = read_attempts(out)

    resumed = subprocess.run(
        [sys.executable, "-m", "lipsweep", "resume", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    attempts = read_attempts(out)
    assert attempts["attempt_id"].is_unique
    assert len(attempts[attempts["stage"] == "search"]) == 4
    assert len(attempts[attempts["stage"] == "final"]) == 2
    assert set(attempts["status"]) == {"completed"}
    # Attempts finished before the kill were not run again.
    kept = attempts.set_index("attempt_id").loc[before["attempt_id"], "ended_at"]
    assert kept.tolist() == before.set_index("attempt_id")["ended_at"].tolist()
    files = list((out / "results" / "attempts").rglob("*.parquet"))
    assert len(files) == len(attempts)


def test_a_stored_plan_is_reused_instead_of_recalibrating(tmp_path: Path) -> None:
    """A resume (or requeue on other hardware) must train the epochs the sweep started with."""
    from lipsweep.launch_command import make_plans
    from lipsweep.sweep import CellPlan, save_plan

    stored = CellPlan("digits", "XS", "aol", 123.0, {"1h": 7})
    save_plan(tmp_path, stored)
    config = replace(CONFIG, methods=("aol",), max_epochs=None)
    assert make_plans(config, QUIET, tmp_path) == [stored]


def test_tpe_asks_each_wave_after_telling_the_last(tmp_path: Path, ray_session) -> None:
    """With one trial at a time, TPE's second trial is asked only once the first is told."""
    config = replace(
        CONFIG, methods=("aol",), sampler="tpe", cpus_per_trial=2, max_epochs=1, trials=2
    )
    launch(config, tmp_path, None, QUIET)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
    )
    first, second = optuna.load_study(study_name="t/digits-XS-aol", storage=storage).trials
    assert first.state.name == second.state.name == "COMPLETE"
    assert second.datetime_start >= first.datetime_complete
    assert len(read_attempts(tmp_path)) == 3


def test_backend_ray_joins_an_existing_cluster(tmp_path: Path, ray_session) -> None:
    """A second driver process runs the sweep on this test session's Ray cluster."""
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIPSWEEP_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-m",
        "lipsweep",
        "launch",
        "--backend",
        "ray",
        "--address",
        address,
        "--datasets",
        "digits",
        "--sizes",
        "XS",
        "--methods",
        "aol",
        "--trials",
        "1",
        "--search-budget",
        "2s",
        "--budget",
        "2s",
        "--out",
        str(tmp_path / "sweep"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Connecting to existing Ray cluster" in result.stderr
    attempts = read_attempts(tmp_path / "sweep")
    assert sorted(attempts["stage"]) == ["final", "search"]
    assert set(attempts["status"]) == {"completed"}
