"""Timing and peak memory (lipsweep.measure)."""

from __future__ import annotations

import subprocess
import sys

import torch

from lipsweep.measure import measure_model, time_training


def test_training_timing_is_positive_and_memory_seen() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU())
    seconds, peak = time_training(model, torch.randn(32, 3, 32, 32), batches=3)
    assert seconds > 0  # its peak memory is checked against an activation in test_bench
    assert isinstance(peak, int)


PEAK_PROBE = """
import torch
from lipsweep.measure import PeakMemory
with PeakMemory(torch.device("cpu")) as memory:
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    block += 1
    del block
print(memory.peak_bytes)
"""


def test_cpu_peak_memory_sees_a_large_allocation() -> None:
    """In a fresh process: one that already trained serves allocations from the heap glibc
    kept, and the resident set does not grow (the reason bench measures memory this way)."""
    answer = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    assert int(answer.stdout.strip()) >= 48 * 2**20


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
