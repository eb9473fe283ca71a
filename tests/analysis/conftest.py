"""A small real sweep output: 1-epoch digits trials written in the results schema."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lipsweep.results import HISTORY_SCHEMA, METRICS, write_attempt
from lipsweep.trial import Outcome, TrialSpec, now, run_attempt

SWEEP = "testsweep"
REAL_METHODS = ("aol", "cpl", "soc")


def attempt_row(spec: TrialSpec, outcome: Outcome, budget: str = "24h") -> dict[str, Any]:
    """The results row of one attempt (what the sweep driver writes, as far as known here)."""
    trial_id = f"{spec.stage}-{spec.dataset}-{spec.size}-{spec.method}-{budget}-t0"
    return {
        "sweep": SWEEP,
        "dataset": spec.dataset,
        "method": spec.method,
        "attempt_id": f"{trial_id}-a0",
        "trial_id": trial_id,
        "stage": spec.stage,
        "size": spec.size,
        "budget": budget,
        "budget_s": float(budget.removesuffix("h")) * 3600,
        "trial_index": 0,
        "attempt": 0,
        "epochs_planned": spec.epochs,
        "epochs_done": outcome.epochs_done,
        "lr": spec.lr,
        "weight_decay": spec.weight_decay,
        "seed": spec.seed,
        "batch_size": spec.batch_size,
        "status": outcome.status,
        "error": outcome.error,
        "eval_split": "test" if spec.stage == "final" else "val",
        **{name: outcome.metrics.get(name) for name in METRICS},
        "seconds_per_epoch": outcome.seconds_per_epoch,
        "calibration": "measure",
        "device_seconds": outcome.device_seconds,
        "gpus": 0.0,
        "gpu_hours": outcome.device_seconds / 3600,
        "device": spec.device,
        "started_at": datetime.fromisoformat(outcome.started_at) if outcome.started_at else None,
        "ended_at": datetime.fromisoformat(outcome.ended_at) if outcome.ended_at else None,
    }


def history_rows(outcome: Outcome) -> list[dict[str, Any]]:
    keep = set(HISTORY_SCHEMA.names)
    return [{k: v for k, v in row.items() if k in keep} for row in outcome.history]


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder with 1-epoch final trials of AOL, CPL and SOC (XS, the first 256 digits, CPU), plus
    one OOM trial of LOT (a synthetic failure row) that the analysis must leave out."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = tmp_path_factory.mktemp("sweep")
    for method in REAL_METHODS:
        spec = TrialSpec(
            dataset="digits", size="XS", method=method, epochs=1, lr=0.05,
            weight_decay=1e-5, seed=0, batch_size=256, max_examples=256,
        )  # fmt: skip
        outcome = run_attempt(spec, root / "work" / method)
        assert outcome.status == "completed", outcome.error
        write_attempt(root, attempt_row(spec, outcome), history_rows(outcome))
    failed = TrialSpec("digits", "XS", "lot", epochs=1, lr=0.05, weight_decay=1e-5, seed=0)
    stamp = now()
    outcome = Outcome(status="oom", error="synthetic", started_at=stamp, ended_at=stamp)
    write_attempt(root, attempt_row(failed, outcome), [])
    return root
