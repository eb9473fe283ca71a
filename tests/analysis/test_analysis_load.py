"""Loading sweep folders: last completed attempt per trial, model rows, GPU-hours."""

import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from analysis.load import (
    ci95_half_width,
    gpu_hours_spent,
    load_attempts,
    load_trials,
    model_results,
)
from lipsweep.results import write_attempt


def write(root: Path, method: str, stage: str, index: int, attempt: int, **values) -> None:
    trial = f"{stage}-cifar10-S-{method}-24h-t{index}"
    row = {
        "sweep": "s1", "dataset": "cifar10", "method": method, "size": "S", "budget": "24h",
        "trial_id": trial, "attempt_id": f"{trial}-a{attempt}", "stage": stage,
        "trial_index": index, "attempt": attempt, "status": "completed", "gpu_hours": 1.0,
        "ended_at": datetime(2024, 1, 1, 0, attempt, tzinfo=UTC),
    } | values  # fmt: skip
    write_attempt(root, row, [])


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    write(tmp_path, "aol", "final", 0, 0, status="nan", cra_36=None)
    write(tmp_path, "aol", "final", 0, 1, cra_36=0.60, accuracy=0.7)
    write(tmp_path, "aol", "final", 0, 2, status="preempted", cra_36=None)
    write(tmp_path, "aol", "final", 1, 0, cra_36=0.50, accuracy=0.6)  # a second seed
    write(tmp_path, "lot", "final", 0, 0, status="oom")
    write(tmp_path, "aol", "search", 0, 0, cra_36=0.40)
    write(tmp_path, "aol", "search", 1, 0, cra_36=0.45)
    return tmp_path


def test_last_completed_attempt_per_trial(sweep: Path) -> None:
    trials = load_trials([sweep]).set_index("trial_id")
    assert len(trials) == 3
    assert trials.loc["final-cifar10-S-aol-24h-t0", "attempt"] == 1
    assert trials.loc["final-cifar10-S-lot-24h-t0", "status"] == "oom"  # stays visible
    assert len(load_trials([sweep], stage="search")) == 2
    assert len(load_trials([sweep], stage=None)) == 5


def test_model_rows(sweep: Path) -> None:
    final = model_results(load_trials([sweep])).set_index("method")
    assert final.loc["aol", "cra_36"] == pytest.approx(0.55)  # mean of the two seeds
    assert final.loc["aol", "trials"] == 2
    assert final.loc["lot", "status"] == "oom" and final["cra_36"].isna()["lot"]
    search = model_results(load_trials([sweep], "search"), select="best")
    assert search["cra_36"].item() == pytest.approx(0.45)


def test_gpu_hours_count_every_attempt(sweep: Path) -> None:
    spent = gpu_hours_spent(load_attempts([sweep])).set_index("method")
    assert spent.loc["aol", "gpu_hours_spent"] == 6.0
    assert spent.loc["lot", "gpu_hours_spent"] == 1.0


def test_several_sweeps_and_empty(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    write(other, "soc", "final", 0, 0, cra_36=0.7)
    assert set(load_trials([sweep, other])["method"]) == {"aol", "lot", "soc"}
    empty = tmp_path_factory.mktemp("empty")
    assert load_trials([empty]).empty
    assert model_results(load_trials([empty])).empty


def test_seed_intervals(sweep: Path) -> None:
    """Two seeds of aol: 0.60 and 0.50, mean 0.55, s = 0.0707, t(0.975, 1) = 12.706:
    half-width 12.706 x 0.0707 / sqrt(2) = 0.6353. One seed: no interval."""
    final = model_results(load_trials([sweep])).set_index("method")
    assert final.loc["aol", "seeds"] == 2
    assert final.loc["aol", "cra_36_ci95"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    assert final.loc["aol", "accuracy_ci95"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    assert final.loc["lot", "seeds"] == 0 and math.isnan(final.loc["lot", "cra_36_ci95"])
    assert ci95_half_width(pd.Series([0.5])) != ci95_half_width(pd.Series([0.5]))  # NaN
    three = ci95_half_width(pd.Series([0.1, 0.2, 0.3]))
    assert three == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)
