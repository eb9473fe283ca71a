"""The sweep end to end on real data with real Ray, real Optuna storage and real files."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import lipsweep
from lipsweep.attempt import TrialSpec, load_data
from lipsweep.backends.local import LocalBackend
from lipsweep.calibrate import make_plans, plan_cell
from lipsweep.certify import certify_model, evaluate
from lipsweep.cli import app
from lipsweep.cli.render import status_table
from lipsweep.config import LR_RANGE, WEIGHT_DECAY_RANGE, SweepConfig
from lipsweep.data import Batches, load_split
from lipsweep.errors import InputError
from lipsweep.names import Cell, TrialId
from lipsweep.plan import CellPlan, planned_trials, save_plan
from lipsweep.results import read_attempts, read_history
from lipsweep.results.artifacts import load_model
from lipsweep.results.rows import Provenance
from lipsweep.status import sweep_status
from lipsweep.trainable import TrialTask, retry_seed, run_trial

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


AOL_PLAN = CellPlan("digits", "XS", "aol", 1.0, {"1h": 2})


def launch(config: SweepConfig, out: Path, lines: list[str] | None = None) -> None:
    """Run a sweep on the local backend (the test session's Ray), its news into ``lines``."""
    LocalBackend().launch(config, out, (lines if lines is not None else []).append)


def status_text(out: Path) -> str:
    recorder = Console(record=True, width=250, file=open(os.devnull, "w"))  # noqa: SIM115
    recorder.print(status_table(sweep_status(out)))
    return " ".join(recorder.export_text().split())


def cifar_config(shared_data: Path, **changes: object) -> SweepConfig:
    """Tiny models on the real CIFAR-10 subset: 64 examples per split, 2 epochs."""
    base = replace(
        CONFIG,
        datasets=("cifar10",),
        data_dir=str(shared_data),
        max_examples=64,
        batch_size=64,
    )
    return replace(base, **changes)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path / "cache"))


def test_sweep_runs_search_select_final_into_parquet(tmp_path: Path, ray_session) -> None:
    """The whole protocol on digits (bundled with scikit-learn: runs on a fresh clone)."""
    config = replace(CONFIG, max_examples=256, batch_size=64)
    launch(config, tmp_path)
    attempts = read_attempts(tmp_path)
    search = attempts[attempts["stage"] == "search"]
    finals = attempts[attempts["stage"] == "final"]
    assert len(search) == 4 and len(finals) == 2
    assert set(attempts["status"]) == {"completed"}
    assert attempts["attempt_id"].is_unique
    assert set(attempts["dataset"]) == {"digits"}
    assert (search["eval_split"] == "val").all() and (finals["eval_split"] == "test").all()
    assert search["lr"].between(*LR_RANGE).all()
    assert search["weight_decay"].between(*WEIGHT_DECAY_RANGE).all()
    assert (attempts["epochs_done"] == 2).all() and (attempts["gpu_hours"] > 0).all()
    assert (attempts["cra_36"] <= attempts["accuracy"]).all()
    assert (attempts["cra_255"] <= attempts["cra_36"]).all()
    # Speed and memory of every attempt, measured while it trained.
    assert (attempts["train_throughput"] > 0).all() and (attempts["inference_throughput"] > 0).all()
    assert (attempts["train_peak_bytes"] > 0).all() and attempts[
        "inference_peak_bytes"
    ].notna().all()
    # Finals are certified with their guaranteed bound; search rows certify nothing.
    assert (finals["lipschitz_bound"] <= 1 + 1e-6).all()
    assert (finals["certified_lipschitz"] == finals["lipschitz_bound"].clip(lower=1.0)).all()
    assert search["lipschitz_bound"].isna().all() and search["certified_lipschitz"].isna().all()
    for method in ("aol", "sll"):
        mine = search[search["method"] == method]
        # Best validation CRA; ties go to the higher accuracy, then the lower trial index.
        best = mine.sort_values(
            ["cra_36", "accuracy", "trial_index"], ascending=[False, False, True]
        ).iloc[0]
        final = finals[finals["method"] == method].iloc[0]
        assert (final["lr"], final["weight_decay"]) == (best["lr"], best["weight_decay"])
    history = read_history(tmp_path)
    assert len(history) == 2 * len(attempts) and (history["run"] == 0).all()
    assert (history["eval_seconds"] > 0).all()
    # The Optuna studies are durable, hold the trials that ran and know every result.
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
    )
    study = optuna.load_study(study_name="t/digits-XS-aol", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    ran = search[search["method"] == "aol"].sort_values("trial_index")
    assert [t.params["lr"] for t in study.trials] == ran["lr"].tolist()
    assert [t.value for t in study.trials] == ran["cra_36"].tolist()
    # The final model is kept and reloads, ready to certify: it scores what its run scored.
    model = load_model(tmp_path, "digits", "XS", "aol")
    assert not model.training
    spec = TrialSpec("digits", "XS", "aol", 1, 0.1, 0.0, 0)
    _, test_split = load_data(replace(spec, max_examples=config.max_examples))
    batches = Batches(test_split, 64, False, torch.Generator(), torch.device("cpu"))
    certificate = certify_model(model, batches, attack=False)
    final_aol = finals[finals["method"] == "aol"].iloc[0]
    assert certificate.lipschitz_bound == final_aol["lipschitz_bound"]
    for key in ("accuracy", "cra_36", "cra_72", "cra_108"):
        assert certificate.metrics[key] == final_aol[key], key
    assert evaluate(model, batches)["accuracy"] == pytest.approx(final_aol["accuracy"])
    # The same through the top-level API, as the README shows it: a split, not batches.
    top = lipsweep.load_model(tmp_path, "digits", "XS", "aol")
    split = load_split("digits", "test").subset(range(config.max_examples))
    public = lipsweep.certify_model(top, split, attack_steps=5)
    assert public.lipschitz_bound == final_aol["lipschitz_bound"] and public.flipped == 0
    assert public.metrics["cra_36"] == final_aol["cra_36"]
    assert all(check.attacked == check.certified for check in public.radii)
    assert 0 < public.float32_logit_deviation < 1e-3
    assert finals["float32_logit_deviation"].between(0, 1e-3, inclusive="neither").all()
    assert search["float32_logit_deviation"].isna().all()
    # `lipsweep certify` finds the sweep's final models and attacks their certified points.
    result = CliRunner().invoke(
        app,
        ["certify", str(tmp_path), "--attack-steps", "5", "--max-examples", "256",
         "--out", str(tmp_path / "c.parquet")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "c.parquet").to_pandas()
    assert sorted(set(rows["method"])) == ["aol", "sll"] and len(rows) == 2 * 4
    assert (rows["flipped"] == 0).all() and (rows["attacked"] == rows["certified"]).all()
    aol_36 = rows[(rows["method"] == "aol") & (rows["radius"] == "cra_36")].iloc[0]
    assert aol_36["model"] == final_aol["attempt_id"]
    assert (aol_36["cra"], aol_36["accuracy"]) == (final_aol["cra_36"], final_aol["accuracy"])
    # Status reads the folder alone and shows every cell done.
    text = status_text(tmp_path)
    assert "digits-XS-aol" in text and "digits-XS-sll" in text
    assert text.count("2/2") == 2 and text.count("1/1") == 2 and "6 attempts finished" in text
    assert "nothing left to run" in text
    share = sweep_status(tmp_path).train_share
    assert share is not None and 0 < share < 1
    assert f"{share:.0%} training, the rest evaluation and certificates" in text
    # Launching again finds everything done and runs nothing.
    launch(config, tmp_path)
    again = read_attempts(tmp_path)
    assert sorted(again["attempt_id"]) == sorted(attempts["attempt_id"])
    assert (
        again.set_index("attempt_id")["ended_at"] == attempts.set_index("attempt_id")["ended_at"]
    ).all()
    # A lost search result (its Parquet file deleted; the study still says COMPLETE) runs
    # again under its number and hyperparameters, and nothing else does.
    lost = search.sort_values("attempt_id").iloc[0]
    (path,) = (tmp_path / "results" / "attempts").rglob(f"{lost['attempt_id']}.parquet")
    path.unlink()
    assert lost["attempt_id"] not in set(read_attempts(tmp_path)["attempt_id"])
    launch(config, tmp_path)
    rerun = read_attempts(tmp_path).set_index("attempt_id")
    assert sorted(rerun.index) == sorted(attempts["attempt_id"])
    back = rerun.loc[lost["attempt_id"]]
    assert back["status"] == "completed" and back["ended_at"] > lost["ended_at"]
    for key in ("lr", "weight_decay", "seed", "trial_index", "epochs_done"):
        assert back[key] == lost[key], key
    others = attempts.set_index("attempt_id").drop(index=lost["attempt_id"])
    assert (rerun.loc[others.index, "ended_at"] == others["ended_at"]).all()
    cell = f"t/digits-XS-{lost['method']}"
    assert len(optuna.load_study(study_name=cell, storage=storage).trials) == 2


def test_final_seeds_train_each_budget_with_several_seeds(tmp_path: Path, ray_session) -> None:
    """--final-seeds 2: two final runs of the selected hyperparameters, each its own seed and
    row; plans, status and the model table count them, and the analysis gives an interval."""
    from analysis.load import load_trials, model_results

    config = replace(CONFIG, methods=("aol",), trials=1, final_seeds=2, max_examples=128)
    assert sum(t.stage == "final" for t in planned_trials(config, [AOL_PLAN])) == 2
    launch(config, tmp_path)
    finals = read_attempts(tmp_path).query("stage == 'final'").sort_values("trial_index")
    assert finals["trial_index"].tolist() == [0, 1] and set(finals["status"]) == {"completed"}
    assert finals["seed"].nunique() == 2
    assert finals["lr"].nunique() == 1 and finals["weight_decay"].nunique() == 1
    assert "2/2" in status_text(tmp_path) and "nothing left to run" in status_text(tmp_path)
    (model,) = model_results(load_trials([tmp_path])).itertuples()
    assert model.seeds == 2 and not math.isnan(model.accuracy_ci95)
    ranked = CliRunner().invoke(app, ["rank", str(tmp_path)])
    assert ranked.exit_code == 0, ranked.output
    assert "ranking stability, budget 1h" in ranked.output and " ± " in ranked.output


def test_nan_and_out_of_memory_attempts_are_recorded_while_the_sweep_goes_on(
    tmp_path: Path, shared_data: Path, ray_session
) -> None:
    """The standard conv diverges at these learning rates (every retry too); LOT needs about
    3 GB here (its parametrization, measured) and is capped at 1 GiB; AOL trains on to its
    final run."""
    config = cifar_config(
        shared_data,
        methods=("standard", "lot", "aol"),
        trials=1,
        batch_size=16,
        lr_range=(1e4, 1e6),
        memory_per_trial_gib=1.0,
        cpus_per_trial=2,
    )
    for method in config.methods:  # stored plans, as a resumed sweep has: no calibration
        save_plan(tmp_path, CellPlan("cifar10", "XS", method, 1.0, {"1h": 2}))
    launch(config, tmp_path)
    attempts = read_attempts(tmp_path).sort_values(["method", "stage", "attempt"])
    standard = attempts[attempts["method"] == "standard"]
    assert list(standard["status"]) == ["nan"] * 3 and standard["seed"].nunique() == 3
    assert standard["error"].str.contains("non-finite").all()
    lot = attempts[attempts["method"] == "lot"]
    assert list(lot["status"]) == ["oom"] and list(lot["stage"]) == ["search"]
    assert "can't allocate memory" in lot.iloc[0]["error"]
    aol = attempts[attempts["method"] == "aol"]
    assert list(aol["stage"]) == ["final", "search"] and set(aol["status"]) == {"completed"}
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
    )
    states = {
        method: [t.state.name for t in optuna.load_study(
            study_name=f"t/cifar10-XS-{method}", storage=storage
        ).trials]
        for method in ("standard", "lot", "aol")
    }  # fmt: skip
    assert states == {"standard": ["FAIL"], "lot": ["FAIL"], "aol": ["COMPLETE"]}


def test_a_different_launch_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    CONFIG.save(tmp_path)
    with pytest.raises(InputError, match="other settings \\(trials\\)"):
        launch(replace(CONFIG, trials=3), tmp_path)


def task(folder: Path, cell: Cell, spec: TrialSpec) -> TrialTask:
    return TrialTask(
        folder=str(folder),
        trial=TrialId("search", cell, "1h", 0),
        spec=spec,
        gpus=0.0,
        cpus=1,
        max_retries=2,
        max_gpu_hours=None,
        estimated_hours=0.001,
        provenance=Provenance("t", "measure", "", ""),
    )


def test_nan_attempts_are_retried_with_new_seeds_and_all_recorded(tmp_path: Path) -> None:
    spec = TrialSpec("digits", "XS", "standard", 2, 1e12, 0.0, 5, stage="search")
    result = run_trial({"trial": task(tmp_path, Cell("digits", "XS", "standard"), spec)})
    assert result["status"] == "nan"
    attempts = read_attempts(tmp_path).sort_values("attempt")
    assert list(attempts["attempt"]) == [0, 1, 2]
    assert list(attempts["status"]) == ["nan"] * 3
    assert list(attempts["seed"]) == [retry_seed(5, a) for a in range(3)]
    assert attempts["seed"].nunique() == 3
    # A failure (here: data that cannot be read) is recorded too, not raised.
    spec = replace(spec, dataset="cifar10", method="aol", lr=0.01, data_dir=str(tmp_path / "none"))
    assert (
        run_trial({"trial": task(tmp_path, Cell("cifar10", "XS", "aol"), spec)})["status"]
        == "failed"
    )
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
    estimate = plan_cell(config, Cell("digits", "XS", "aol")).seconds_per_epoch / 3600
    config = replace(config, max_gpu_hours=2.5 * estimate)
    lines: list[str] = []
    launch(config, tmp_path, lines)
    attempts = read_attempts(tmp_path)
    spent = attempts["gpu_hours"].sum()
    assert 0 < len(attempts) < 5, "the cap should stop some attempts, not all"
    assert spent <= config.max_gpu_hours + attempts["gpu_hours"].max()
    assert any("would pass --max-gpu-hours" in line for line in lines)


def _launch_command(out: Path, shared_data: Path) -> list[str]:
    """A small CIFAR-10 sweep through the CLI: 2 cells x 2 trials of 3 epochs, then finals."""
    return [
        sys.executable,
        "-m",
        "lipsweep",
        "launch",
        "--out",
        str(out),
        "--datasets",
        "cifar10",
        "--data-dir",
        str(shared_data),
        "--sizes",
        "XS",
        "--methods",
        "aol,cpl",
        "--trials",
        "2",
        "--search-budget",
        "1h",
        "--budget",
        "1h",
        "--max-epochs",
        "3",
        "--max-examples",
        "64",
        "--batch-size",
        "64",
        "--checkpoint-every",
        "1",
    ]


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (Ray's), by PID, and wait until they
    are gone."""
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(children, timeout=10)


@pytest.mark.slow
def test_sigkill_driver_mid_sweep_then_resume_runs_every_attempt_once(
    tmp_path: Path, shared_data: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIPSWEEP_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "sweep"
    process = subprocess.Popen(
        _launch_command(out, shared_data),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and process.poll() is None:
        finished = set(read_attempts(out)["attempt_id"]) if (out / "results").exists() else set()
        midway = [
            p.parent.name
            for p in (out / "attempts").glob("*/progress.json")
            if p.parent.name not in finished and json.loads(p.read_text())["epoch"] >= 1
        ]
        if finished and midway:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the sweep finished before it could be killed"
    _kill_tree(process)
    before = read_attempts(out)
    midway = [a for a in midway if a not in set(before["attempt_id"])]
    assert midway, "every attempt caught mid-way finished before the kill"
    text = status_text(out)
    assert "0 running" in text and "nothing running now" in text, text

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
    # The attempts caught mid-way resumed from their checkpoints: their history says so.
    resumed_rows = attempts.set_index("attempt_id").loc[midway]
    assert (resumed_rows["resumed_from_epoch"] >= 1).all()
    history = read_history(out)
    assert set(history[history["attempt_id"].isin(midway)]["run"]) == {0, 1}


def test_a_stored_plan_is_reused_instead_of_recalibrating(tmp_path: Path) -> None:
    """A resume (or requeue on other hardware) must train the epochs the sweep started with."""
    stored = CellPlan("digits", "XS", "aol", 123.0, {"1h": 7})
    save_plan(tmp_path, stored)
    config = replace(CONFIG, methods=("aol",), max_epochs=None)
    assert make_plans(config, tmp_path) == ([stored], [])


def test_tpe_is_asked_only_when_a_slot_is_free(tmp_path: Path, ray_session) -> None:
    """With one slot, TPE's second trial is asked only once the first is told, so it
    conditions on the first result."""
    config = replace(
        CONFIG, methods=("aol",), sampler="tpe", cpus_per_trial=2, max_epochs=1, trials=2
    )
    launch(config, tmp_path)
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
    out = tmp_path / "sweep"
    attempts = read_attempts(out)
    assert sorted(attempts["stage"]) == ["final", "search"]
    assert set(attempts["status"]) == {"completed"}
    stored = SweepConfig.load(out)
    assert (stored.backend, stored.address) == ("ray", address)
    # Resume runs on the stored backend: the final run whose result went missing runs again
    # on the same cluster, not on a new local Ray.
    final = attempts[attempts["stage"] == "final"].iloc[0]
    for table in ("attempts", "history"):
        next((out / "results" / table).rglob(f"{final['attempt_id']}.parquet")).unlink()
    resumed = subprocess.run(
        [sys.executable, "-m", "lipsweep", "resume", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Connecting to existing Ray cluster" in resumed.stderr
    again = read_attempts(out)
    assert sorted(again["attempt_id"]) == sorted(attempts["attempt_id"])
