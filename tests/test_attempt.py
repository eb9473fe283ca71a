"""One attempt end to end on real data: results, NaN handling, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from lipsweep.attempt import TrialSpec, run_attempt
from lipsweep.names import CHECKPOINT, PROGRESS

DIGITS = TrialSpec(
    dataset="digits",
    size="XS",
    method="aol",
    epochs=4,
    lr=0.05,
    weight_decay=1e-5,
    seed=3,
    batch_size=128,
    checkpoint_every_epochs=1,
)


def test_short_cifar10_run_writes_complete_result_and_history(
    tmp_path: Path, shared_data: Path
) -> None:
    spec = TrialSpec(
        dataset="cifar10",
        size="XS",
        method="aol",
        epochs=2,
        lr=0.02,
        weight_decay=1e-5,
        seed=0,
        batch_size=64,
        data_dir=str(shared_data),
        max_examples=128,
    )
    rows: list[dict[str, float]] = []
    outcome = run_attempt(spec, tmp_path, on_epoch=rows.append)
    assert outcome.status == "completed", outcome.error
    assert outcome.epochs_done == 2 and [r["epoch"] for r in outcome.history] == [1, 2]
    assert rows == outcome.history
    for key in ("accuracy", "cra_36", "cra_72", "cra_108", "cra_255"):
        assert 0 <= outcome.metrics[key] <= 1, key
    # Margins are clamped at 0 for wrong predictions: the median is positive iff most are right.
    assert (outcome.metrics["median_margin"] > 0) == (outcome.metrics["accuracy"] > 0.5)
    assert outcome.metrics["cra_255"] <= outcome.metrics["cra_36"] <= outcome.metrics["accuracy"]
    assert outcome.device_seconds >= outcome.train_seconds > 0
    # The trained 1-Lipschitz model's bound, by Lanczos per layer (final stage only).
    assert outcome.lipschitz_bound is not None and 0 < outcome.lipschitz_bound <= 1 + 1e-4
    assert (tmp_path / CHECKPOINT).exists()
    # The checkpoint loads without unpickling arbitrary objects.
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2


def test_absurd_learning_rate_ends_as_nan_within_one_epoch(tmp_path: Path) -> None:
    spec = replace(DIGITS, method="standard", lr=1e12, epochs=5)
    outcome = run_attempt(spec, tmp_path)
    assert outcome.status == "nan", (outcome.status, outcome.error)
    assert outcome.epochs_done == 0 and "epoch 1" in outcome.error


def test_other_errors_are_reported_not_raised(tmp_path: Path) -> None:
    outcome = run_attempt(replace(DIGITS, data_dir=str(tmp_path)), tmp_path / "a")
    assert outcome.status == "completed"  # digits need no data dir
    outcome = run_attempt(
        replace(DIGITS, dataset="cifar10", data_dir=str(tmp_path)), tmp_path / "b"
    )
    assert outcome.status == "failed" and "cifar10 not found" in outcome.error


def test_search_stage_evaluates_on_the_validation_split(tmp_path: Path) -> None:
    outcome = run_attempt(replace(DIGITS, epochs=1, stage="search"), tmp_path)
    assert outcome.status == "completed"
    assert 0.0 <= outcome.metrics["accuracy"] <= 1.0


def _train_command(out: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lipsweep",
        "train",
        "--dataset",
        "digits",
        "--method",
        "aol",
        "--size",
        "XS",
        "--epochs",
        str(epochs),
        "--lr",
        "0.05",
        "--wd",
        "1e-5",
        "--seed",
        "3",
        "--batch-size",
        "128",
        "--checkpoint-every",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def test_sigkill_then_resume_completes_with_a_consistent_history(tmp_path: Path) -> None:
    epochs = 6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIPSWEEP_CACHE": str(tmp_path / "cache")}
    workdir = tmp_path / "runs" / "digits-XS-aol-seed3"
    process = subprocess.Popen(
        _train_command(tmp_path / "runs", epochs),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = workdir / PROGRESS
        ready = (workdir / CHECKPOINT).exists() and progress.exists()
        if ready and json.loads(progress.read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(workdir / CHECKPOINT, weights_only=True)["epoch"]
    assert 2 <= killed_at < epochs, "the run finished before it could be killed"

    resumed_at = datetime.now(UTC)
    resumed = subprocess.run(
        _train_command(tmp_path / "runs", epochs),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    result = json.loads((workdir / "result.json").read_text())["outcome"]
    assert result["status"] == "completed"
    assert result["resumed_from_epoch"] == killed_at
    assert datetime.fromisoformat(result["started_at"]) < resumed_at  # the first run's start
    assert [row["epoch"] for row in result["history"]] == list(range(1, epochs + 1))
    # The history says which run trained each epoch: the killed one, then the resumed one.
    runs = [row["run"] for row in result["history"]]
    assert runs == [0] * killed_at + [1] * (epochs - killed_at)

    # The resumed attempt trained exactly as an uninterrupted one would have.
    uninterrupted = run_attempt(replace(DIGITS, epochs=epochs), tmp_path / "straight")
    for resumed_row, straight_row in zip(result["history"], uninterrupted.history, strict=True):
        assert resumed_row["train_loss"] == pytest.approx(straight_row["train_loss"], rel=1e-5)
    assert result["metrics"]["accuracy"] == pytest.approx(uninterrupted.metrics["accuracy"])
    assert result["device_seconds"] >= sum(r["train_seconds"] for r in result["history"])


def test_a_checkpoint_from_another_plan_is_refused(tmp_path: Path) -> None:
    assert run_attempt(replace(DIGITS, epochs=2), tmp_path).status == "completed"
    outcome = run_attempt(replace(DIGITS, epochs=3), tmp_path)
    assert outcome.status == "failed" and "planned for 2 epochs" in outcome.error


def test_the_unconstrained_standard_conv_certifies_nothing() -> None:
    """A standard conv has no Lipschitz bound during training: certificates use L = inf."""
    from lipsweep.attempt import assumed_lipschitz
    from lipsweep.certify import evaluate

    assert assumed_lipschitz(replace(DIGITS, method="standard")) == float("inf")
    assert assumed_lipschitz(DIGITS) == 1.0
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    with_bound = evaluate(torch.nn.Identity(), [(logits, labels)], lipschitz=1.0)
    without = evaluate(torch.nn.Identity(), [(logits, labels)], lipschitz=float("inf"))
    assert with_bound["cra_36"] == pytest.approx(2 / 3)
    assert without["accuracy"] == with_bound["accuracy"] == pytest.approx(2 / 3)
    assert without["cra_36"] == without["cra_255"] == 0.0


def test_a_truncated_checkpoint_is_set_aside_and_the_attempt_restarts(tmp_path: Path) -> None:
    """A checkpoint cut short (a kill during a copy, a full disk elsewhere) does not fail the
    attempt: it is renamed, the row says so, and the attempt trains from scratch."""
    spec = replace(DIGITS, epochs=2, max_examples=256)
    first = run_attempt(spec, tmp_path)
    assert first.status == "completed", first.error
    data = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(data[: len(data) // 3])
    again = run_attempt(spec, tmp_path)
    assert again.status == "completed", again.error
    assert again.resumed_from_epoch == 0 and again.epochs_done == 2
    (aside,) = tmp_path.glob(f"{CHECKPOINT}.damaged-*")
    assert aside.read_bytes() == data[: len(data) // 3]
    assert "did not load" in again.error and aside.name in again.error
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 2
    # Same seed, same data order: the restart reproduces the first run's result.
    assert again.metrics["accuracy"] == first.metrics["accuracy"]


def test_device_time_of_a_run_killed_before_its_first_checkpoint_counts(tmp_path: Path) -> None:
    """The progress record of a killed run (no checkpoint yet) still charges its time."""
    progress = {"epoch": 0, "device_seconds": 1234.5, "pid": 1, "host": "elsewhere"}
    (tmp_path / PROGRESS).write_text(json.dumps(progress))
    outcome = run_attempt(replace(DIGITS, epochs=1, max_examples=128), tmp_path)
    assert outcome.status == "completed", outcome.error
    assert 1234.5 < outcome.device_seconds < 1234.5 + 120
    assert outcome.train_seconds > 0 and outcome.eval_seconds > 0


def test_a_final_run_records_its_float32_logit_deviation(tmp_path: Path) -> None:
    """certify_final keeps how far the float32 model's test logits are from the float64 ones
    it was certified with; the row carries it, a search row leaves it empty."""
    from lipsweep.names import Cell, TrialId
    from lipsweep.results import read_attempts, write_attempt
    from lipsweep.results.rows import Provenance, attempt_row

    spec = replace(DIGITS, epochs=2, max_examples=256)
    final = run_attempt(spec, tmp_path / "final")
    assert final.status == "completed", final.error
    deviation = final.float32_logit_deviation
    assert deviation is not None and 0 < deviation < 1e-3
    search = run_attempt(replace(spec, stage="search"), tmp_path / "search")
    assert search.status == "completed" and search.float32_logit_deviation is None
    provenance = Provenance("t", "measure", "", "")
    for outcome, stage in ((final, "final"), (search, "search")):
        trial = TrialId(stage, Cell("digits", "XS", "aol"), "1h", 0)
        write_attempt(tmp_path, attempt_row(trial, 0, spec, outcome, 0.0, provenance), [])
    rows = read_attempts(tmp_path).set_index("stage")["float32_logit_deviation"]
    assert rows["final"] == deviation and rows.isna()["search"]
