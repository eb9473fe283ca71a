"""Speed and memory of a model on this hardware: synchronised timers, peak memory, and the
paper's measurement of training and cached inference (PAPER.md section 4)."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


def device_name(device: torch.device) -> str:
    """A stable name of the hardware, used to key calibrations."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu:{platform.machine()}:{os.cpu_count()}cores:{threads}threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator statistics on a GPU; on a CPU the
    peak resident set size above the entry level, sampled every millisecond by a thread
    (allocations shorter than a millisecond can be missed)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss_bytes()
            self._sampled = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._sampled = max(self._sampled, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self._sampled = max(self._sampled, _rss_bytes())
            self.peak_bytes = self._sampled - self._base


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def timed(device: torch.device) -> Iterator[list[float]]:
    """Wall time of the block with the device synchronised at both ends (seconds in out[0])."""
    out: list[float] = []
    synchronize(device)
    start = time.perf_counter()
    yield out
    synchronize(device)
    out.append(time.perf_counter() - start)


@dataclass
class Timing:
    """One model's speed and memory at one batch size (PAPER.md section 4)."""

    device: str
    batch_size: int
    train_batch_s: float
    inference_batch_s: float
    caching_s: float
    train_peak_bytes: int
    inference_peak_bytes: int

    @property
    def train_throughput(self) -> float:
        return self.batch_size / self.train_batch_s

    @property
    def inference_throughput(self) -> float:
        return self.batch_size / self.inference_batch_s


# A fresh model's first batches run slow (on a CPU: 230, 186, 164, 146, then ~115 ms for AOL-XS
# on digits, as the allocator and caches warm up); a trial's epochs run at the settled speed.
WARMUP_BATCHES = 3


def time_training(
    model: nn.Module, inputs: torch.Tensor, batches: int, warmup: int = WARMUP_BATCHES
) -> tuple[float, int]:
    """Mean seconds of forward + sum().backward() + SGD(momentum) step, and the peak memory of
    the timed batches (optimizer state included), as the paper's evaluator measures them."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(inputs).sum().backward()
        optimizer.step()

    for _ in range(warmup):
        one_step()
    with PeakMemory(inputs.device) as memory, timed(inputs.device) as elapsed:
        for _ in range(batches):
            one_step()
    return elapsed[0] / batches, memory.peak_bytes


def time_inference(
    model: nn.Module, inputs: torch.Tensor, batches: int
) -> tuple[float, float, int]:
    """(mean seconds per cached eval batch, caching time of the first batch, peak memory).

    The first eval batch builds the cached weights; the paper reports its extra cost as
    caching time = t_0 - mean(t_1..t_n)."""
    model.eval()
    with torch.no_grad(), PeakMemory(inputs.device) as memory:
        with timed(inputs.device) as first:
            model(inputs)
        with timed(inputs.device) as rest:
            for _ in range(batches):
                model(inputs)
    mean = rest[0] / batches
    return mean, max(first[0] - mean, 0.0), memory.peak_bytes


def measure_model(
    build: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    batch_size: int,
    device: torch.device,
    batches: int = 10,
    warmup: int = WARMUP_BATCHES,
) -> Timing:
    """Time and memory of training and cached inference; a fresh model for each, as the
    paper builds one per measurement."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, *input_shape, generator=generator).to(device)
    train_s, train_bytes = time_training(build().to(device), inputs, batches, warmup)
    infer_s, caching_s, infer_bytes = time_inference(build().to(device), inputs, batches)
    return Timing(
        device=device_name(device),
        batch_size=batch_size,
        train_batch_s=train_s,
        inference_batch_s=infer_s,
        caching_s=caching_s,
        train_peak_bytes=train_bytes,
        inference_peak_bytes=infer_bytes,
    )
