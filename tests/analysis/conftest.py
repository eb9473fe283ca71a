"""A small real sweep output: 1-epoch digits trials written in the results schema."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lipsweep.attempt import Outcome, TrialSpec, now, run_attempt
from lipsweep.names import AttemptStatus, Cell, TrialId
from lipsweep.results import HISTORY_SCHEMA, write_attempt
from lipsweep.results.rows import Provenance, attempt_row

SWEEP = "testsweep"
REAL_METHODS = ("aol", "cpl", "soc")


def row_of(
    spec: TrialSpec, outcome: Outcome, budget: str = "24h", index: int = 0
) -> dict[str, Any]:
    """The results row of one attempt, from the sweep's own row builder."""
    trial = TrialId(spec.stage, Cell(spec.dataset, spec.size, spec.method), budget, index)
    return attempt_row(trial, 0, spec, outcome, 0.0, Provenance(SWEEP, "measure", "", ""))


def history_rows(outcome: Outcome) -> list[dict[str, Any]]:
    keep = set(HISTORY_SCHEMA.names)
    return [{k: v for k, v in row.items() if k in keep} for row in outcome.history]


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder with 1-epoch final trials of AOL (two seeds), CPL and SOC (XS, the first
    256 digits, CPU), plus one OOM trial of LOT (a synthetic failure row) that the analysis must
    leave out."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = tmp_path_factory.mktemp("sweep")
    for method in REAL_METHODS:
        spec = TrialSpec(
            dataset="digits", size="XS", method=method, epochs=1, lr=0.05,
            weight_decay=1e-5, seed=0, batch_size=256, max_examples=256,
        )  # fmt: skip
        outcome = run_attempt(spec, root / "work" / method)
        assert outcome.status == "completed", outcome.error
        write_attempt(root, row_of(spec, outcome), history_rows(outcome))
    # A second final seed of AOL (as --final-seeds 2 makes): intervals and stability.
    second = replace(spec, method="aol", seed=1)
    outcome = run_attempt(second, root / "work" / "aol-seed1")
    write_attempt(root, row_of(second, outcome, index=1), history_rows(outcome))
    failed = TrialSpec("digits", "XS", "lot", epochs=1, lr=0.05, weight_decay=1e-5, seed=0)
    stamp = now()
    outcome = Outcome(status=AttemptStatus.OOM, error="synthetic", started_at=stamp, ended_at=stamp)
    write_attempt(root, row_of(failed, outcome), [])
    return root
