"""Performance targets of issue #9, each a ratio measured side by side in one run.

    .venv/bin/python benchmarks/targets.py --threads 1

1. cached inference of AOL, BCOP and AOC <= 1.05x the standard conv (models at XS and S); the
   FFT-domain layers' cached inference (Cayley, LOT, BRO, Sandwich) is printed beside it;
2. cached inference of Cayley and LOT >= 3x faster than their uncached forward (train mode
   under no_grad);
3. the parameter transforms make the same number of torch calls at every channel count and
   input size (no Python loop over channels or frequencies);
4. the elements autograd keeps per layer beyond its parameters and buffers (its activations)
   are within Table 1's memory (ratio measured / Table 1, ``lipsweep.scaling.table1_memory``).

Timings are interleaved (one batch of each model in turn, repeated) and the median is used,
so machine noise hits every model alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from lipsweep.layers import LAYERS, METHODS
from lipsweep.model import build_model
from lipsweep.scaling import count_torch_calls, layer_costs, table1_memory


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each call, timed in turn ``rounds`` times after one warm-up each."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def forward(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


ONE_CONV = ("aol", "bcop", "aoc")  # inference is one plain conv with the cached kernel
SPECTRAL = ("cayley", "lot", "bro", "sandwich")  # inference applies per-frequency matrices


def cached_inference(
    size: str, batch: int, rounds: int, methods: tuple[str, ...] = ONE_CONV
) -> dict[str, float]:
    """Cached eval forward of the standard conv and ``methods``; ratios to standard."""
    x = torch.randn(batch, 3, 32, 32)
    models = {m: build_model(m, size, "cifar10").eval() for m in ("standard", *methods)}
    medians = interleaved_medians({m: forward(model, x) for m, model in models.items()}, rounds)
    return {m: medians[m] / medians["standard"] for m in medians}


def cache_speedups(size: str, batch: int, rounds: int) -> dict[str, float]:
    """Uncached (train-mode, no_grad) over cached (eval) forward time of Cayley and LOT."""
    x = torch.randn(batch, 3, 32, 32)
    calls = {}
    for method in ("cayley", "lot"):
        calls[f"{method} cached"] = forward(build_model(method, size, "cifar10").eval(), x)
        calls[f"{method} uncached"] = forward(build_model(method, size, "cifar10").train(), x)
    medians = interleaved_medians(calls, rounds)
    return {m: medians[f"{m} uncached"] / medians[f"{m} cached"] for m in ("cayley", "lot")}


def transform_calls(method: str) -> tuple[int, int, int]:
    """Torch calls of one training parameter transform at (c, s) = (8, 8), (32, 8), (8, 16),
    after one transform that warms the layer's state (CPL's first power step converges)."""

    def calls(channels: int, size: int) -> int:
        layer = LAYERS[method](channels, channels, 3)
        spatial = (size, size) if getattr(layer, "size_dependent", False) else ()
        layer.parametrize(True, *spatial)
        return count_torch_calls(lambda: layer.parametrize(True, *spatial))

    return calls(8, 8), calls(32, 8), calls(8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["XS", "S"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console(width=200)
    note = f"batch {args.batch_size}, CPU, {torch.get_num_threads()} thread(s)"

    table = Table(title=f"1. cached inference / standard conv ({note}); target <= 1.05")
    for column in ("size", *ONE_CONV):
        table.add_column(column)
    for size in args.sizes:
        ratios = cached_inference(size, args.batch_size, args.rounds)
        table.add_row(size, *(f"{ratios[m]:.3f}" for m in ONE_CONV))
    console.print(table)

    table = Table(title=f"1b. cached inference of the FFT-domain layers / standard conv ({note})")
    for column in ("size", *SPECTRAL):
        table.add_column(column)
    for size in args.sizes:
        ratios = cached_inference(size, args.batch_size, max(3, args.rounds // 2), SPECTRAL)
        table.add_row(size, *(f"{ratios[m]:.2f}" for m in SPECTRAL))
    console.print(table)

    table = Table(title=f"2. uncached / cached forward ({note}); target >= 3")
    for column in ("size", "cayley", "lot"):
        table.add_column(column)
    for size in args.sizes:
        speedups = cache_speedups(size, args.batch_size, max(3, args.rounds // 2))
        table.add_row(size, f"{speedups['cayley']:.2f}", f"{speedups['lot']:.2f}")
    console.print(table)

    table = Table(title="3. torch calls of one training transform; equal = no channel loop")
    for column in ("method", "c=8 s=8", "c=32 s=8", "c=8 s=16", "batched"):
        table.add_column(column)
    for method in METHODS:
        counts = transform_calls(method)
        table.add_row(method, *map(str, counts), "yes" if len(set(counts)) == 1 else "NO")
    console.print(table)

    for b, c, s in ((8, 32, 16), (8, 16, 32)):
        console.print(memory_table(b, c, s))


def memory_table(b: int, c: int, s: int) -> Table:
    """Target 4 at one (b, c, s): saved elements per layer beside Table 1, and their ratio."""
    table = Table(title=f"4. saved-for-backward elements per layer / Table 1 (b={b}, c={c}, s={s})")
    for column in ("method", "param saved", "Table 1", "ratio", "input saved", "Table 1", "ratio"):
        table.add_column(column)
    for method in LAYERS:
        costs = layer_costs(method, c, s, b, repeats=1)
        param_t1, input_t1 = table1_memory(method, b, c, s)
        param, inputs = costs["param_saved_elements"], costs["input_saved_elements"]
        table.add_row(method, f"{param:.0f}", f"{param_t1:.0f}", f"{param / param_t1:.2f}",
                      f"{inputs:.0f}", f"{input_t1:.0f}", f"{inputs / input_t1:.2f}")  # fmt: skip
    return table


if __name__ == "__main__":
    main()
