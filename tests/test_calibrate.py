"""Calibration: the paper's epoch table, measured timings in a trial's conditions, the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipsweep.calibrate import (
    Calibration,
    CalibrationCache,
    CalibrationError,
    calibrate_cell,
    epochs_for_budget,
    make_plans,
    paper_epochs,
)
from lipsweep.config import SweepConfig
from lipsweep.errors import InputError


@pytest.mark.parametrize(
    "dataset,size,method,budget_h,epochs",
    [
        ("cifar10", "XS", "aol", 24, 10044),
        ("cifar10", "S", "aol", 24, 9156),
        ("cifar10", "M", "aol", 24, 4404),
        ("cifar10", "L", "aol", 24, 996),
        ("cifar100", "XS", "lot", 24, 2664),
        ("cifar10", "XS", "cayley", 24, 4272),
        ("cifar10", "XS", "bcop", 2, 127),
        ("cifar10", "M", "soc", 10, 1005),
        ("tiny-imagenet", "L", "cayley", 2, 8),
        ("tiny-imagenet", "XS", "sll", 24, 2904),
    ],
)
def test_paper_epoch_table(
    dataset: str, size: str, method: str, budget_h: int, epochs: int
) -> None:
    assert paper_epochs(dataset, size, method, budget_h * 3600) == epochs


def test_paper_table_refuses_what_it_does_not_have() -> None:
    with pytest.raises(CalibrationError, match="did not fit"):
        paper_epochs("cifar10", "L", "lot", 7200)
    with pytest.raises(CalibrationError, match="measure"):
        paper_epochs("digits", "XS", "aol", 7200)


def test_epochs_for_budget_floors() -> None:
    assert epochs_for_budget(8.6, 7200) == 837
    assert epochs_for_budget(100.0, 99.0) == 0


def test_calibration_cache_round_trip(tmp_path: Path) -> None:
    cache = CalibrationCache(tmp_path / "c.json")
    calibration = Calibration("cpu:x", "cifar10", "XS", "aol", 256, 50000, 0.25)
    assert calibration.batches_per_epoch == 196
    assert calibration.seconds_per_epoch == pytest.approx(49.0)
    assert calibration.epochs(7200) == 146
    cache.put(calibration)
    assert cache.get("cpu:x", "cifar10", "XS", "aol", 256, 50000) == calibration
    assert cache.get("cpu:x", "cifar10", "XS", "aol", 128, 50000) is None
    assert cache.get("cpu:x", "cifar10", "XS", "aol", 256, 1000) is None
    cache.forget("cifar10", "XS", "aol", 256)
    assert cache.load() == {}


def test_an_epochs_short_last_batch_counts_at_its_own_time() -> None:
    """1437 examples at batch 256: five full batches and one of 157, timed on its own."""
    calibration = Calibration("cpu:x", "digits", "XS", "aol", 256, 1437, 0.5, last_batch_s=0.2)
    assert calibration.batches_per_epoch == 6
    assert calibration.seconds_per_epoch == pytest.approx(5 * 0.5 + 0.2)
    assert calibration.epochs(27.0) == 10  # 27 / 2.7; six full batches would buy 9
    untimed = Calibration("cpu:x", "digits", "XS", "aol", 256, 1437, 0.5)
    assert untimed.seconds_per_epoch == pytest.approx(3.0)


def test_calibration_runs_with_the_trials_threads_and_restores_the_drivers(tmp_path: Path) -> None:
    """The driver may run torch with any thread count; a calibration must time batches with
    the threads each trial pins (--cpus-per-trial), and key its cache entry on them."""
    cache = CalibrationCache(tmp_path / "c.json")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        measured = calibrate_cell(
            "digits", "XS", "aol", 64, 128, torch.device("cpu"), cache, batches=1, threads=1
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert measured.device.endswith(":1threads")
    assert list(cache.load()) == [
        CalibrationCache.key(measured.device, "digits", "XS", "aol", 64, 128)
    ]
    assert measured.train_batch_s > 0 and measured.batches_per_epoch == 2
    assert measured.last_batch_s is None  # 128 = 2 x 64: no short batch
    short = calibrate_cell(
        "digits", "XS", "aol", 64, 100, torch.device("cpu"), batches=2, threads=1
    )
    assert short.last_batch_s is not None and short.last_batch_s > 0
    assert short.seconds_per_epoch == pytest.approx(short.train_batch_s + short.last_batch_s)


def test_a_budget_that_buys_no_epoch_stops_planning_at_the_first_cell(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path))
    config = SweepConfig(
        "t",
        ("digits",),
        ("L",),
        ("aol", "sll"),
        ("1s",),
        trials=1,
        search_budget="1s",
        max_examples=256,
    )
    seen = []
    with pytest.raises(InputError, match="buys 0 epochs of aol-L"):
        make_plans(config, progress=lambda done, total, cell: seen.append(cell.name))
    assert seen == ["digits-L-aol"]  # sll was never calibrated


def test_a_measurement_records_its_spread_and_load_and_recalibrate_forgets_it(
    tmp_path: Path,
) -> None:
    from lipsweep.calibrate import MAX_SPREAD, relative_spread

    cache = CalibrationCache(tmp_path / "c.json")
    device = torch.device("cpu")
    first = calibrate_cell("digits", "XS", "sll", 64, 256, device, cache, batches=3, threads=1)
    assert first.timed_batches == 3 and first.load >= 0
    assert first.stable == (first.spread <= MAX_SPREAD)
    if first.stable:  # only a stable measurement is kept
        assert cache.get(first.device, "digits", "XS", "sll", 64, 256) == first
    cache.forget("digits", "XS", "sll", 64)
    assert cache.get(first.device, "digits", "XS", "sll", 64, 256) is None
    assert relative_spread([1.0, 1.0, 3.0]) == pytest.approx(2.0)
    (tmp_path / "c.json").write_text("{ damaged")
    assert cache.load() == {}  # a damaged cache costs a re-measurement, not the launch
