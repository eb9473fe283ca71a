"""README command 1, the quickstart, as a user runs it: every method it ranks has learned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lipsweep.results import read_attempts

# Digits has 10 balanced classes: chance is 10% accuracy and 0% CRA.
MIN_ACCURACY, MIN_CRA = 0.90, 0.70


@pytest.mark.slow
def test_quickstart_ranks_methods_that_all_learned(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIPSWEEP_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-m",
        "lipsweep",
        "launch",
        "--preset",
        "quickstart",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = " ".join(result.stdout.split())
    assert "ranking by cra_36" in text and f"figures in {out / 'analysis'}" in text
    assert "does not separate them" not in text
    finals = read_attempts(out).query("stage == 'final'")
    assert sorted(finals["method"]) == ["aol", "cpl", "sll", "soc"]
    assert set(finals["status"]) == {"completed"}
    for row in finals.itertuples():
        assert row.accuracy >= MIN_ACCURACY, (row.method, row.accuracy)
        assert row.cra_36 >= MIN_CRA, (row.method, row.cra_36)
