"""Calibration: the paper's epoch table, measured timings, memory, the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipsweep.measure import (
    Calibration,
    CalibrationCache,
    CalibrationError,
    PeakMemory,
    epochs_for_budget,
    measure_model,
    paper_epochs,
    time_training,
)


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


def test_training_timing_is_positive_and_memory_seen() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU())
    seconds, peak = time_training(model, torch.randn(32, 3, 32, 32), batches=3)
    assert seconds > 0 and peak >= 0


def test_cpu_peak_memory_sees_a_large_allocation() -> None:
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
        del block
    assert memory.peak_bytes >= 48 * 2**20


def test_measure_model_reports_inference_and_caching() -> None:
    from lipsweep.layers import LAYERS

    timing = measure_model(
        lambda: LAYERS["cayley"](8, 8, 3),
        (8, 16, 16),
        batch_size=16,
        device=torch.device("cpu"),
        batches=3,
    )
    assert timing.train_batch_s > 0 and timing.inference_batch_s > 0
    assert timing.caching_s >= 0 and timing.inference_throughput > 0


def test_calibration_cache_round_trip(tmp_path: Path) -> None:
    cache = CalibrationCache(tmp_path / "c.json")
    calibration = Calibration("cpu:x", "cifar10", "XS", "aol", 256, 50000, 0.25)
    assert calibration.batches_per_epoch == 196
    assert calibration.seconds_per_epoch == pytest.approx(49.0)
    assert calibration.epochs(7200) == 146
    cache.put(calibration)
    assert cache.get("cpu:x", "cifar10", "XS", "aol", 256) == calibration
    assert cache.get("cpu:x", "cifar10", "XS", "aol", 128) is None
