"""The methods newer than the paper (AOC, BRO, Sandwich) in the commands that plan sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import run as run_cli


@pytest.mark.parametrize("method", ["aoc", "bro", "sandwich"])
def test_newer_methods_have_no_paper_epochs_and_say_so(method: str, tmp_path: Path) -> None:
    """Not in the paper's A100 table: `plan` (paper-a100 by default) refuses them in one line,
    naming the way out, and writes nothing."""
    out = tmp_path / "plan"
    done = run_cli(
        "plan", "--methods", method, "--sizes", "XS", "--budget", "2h", "--out", str(out)
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"has no {method}" in done.stderr and "--calibration measure" in done.stderr
    assert not out.exists()
