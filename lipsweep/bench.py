"""Speed and memory benchmarks of every method against the standard conv (PAPER.md 4, 5.4, 5.6).

``run_bench`` measures each (method, size) model on one device in one run: training time per
batch (forward + sum().backward() + SGD step), cached inference time per batch, the first eval
batch's caching time, the uncached forward (train mode under no_grad), peak memories and
throughputs. On a CPU the memories come from a second pass, one fresh process per model (see
``cpu_memory_in_fresh_process``). Every figure is also given as a ratio to the standard conv of the same size,
measured in the same run, because absolute timings on a shared machine are noisy. Results go
to ``out/results/bench/dataset=<d>/method=<m>/<run-id>.parquet`` (atomic, hive-partitioned).
Single-layer costs and the scaling fits against the paper's Table 1 are in ``lipsweep.scaling``.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import sys
import uuid
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch
from rich import box
from rich.console import Console
from rich.table import Table

from lipsweep.data import DATASETS
from lipsweep.measure import measure_model, time_inference, time_training, timed
from lipsweep.model import build_model
from lipsweep.results.store import read_partitioned, write_partitioned

# Training-set sizes used for seconds per epoch (the paper trains on the full training set).
TRAIN_EXAMPLES = {"cifar10": 50_000, "cifar100": 50_000, "tiny-imagenet": 100_000, "digits": 1437}
BASELINE = "standard"
# Figures that get a ratio to the standard conv (column "<figure>_ratio").
RATIO_FIGURES = (
    "train_batch_s",
    "inference_batch_s",
    "caching_s",
    "seconds_per_epoch",
    "train_throughput",
    "inference_throughput",
    "train_peak_bytes",
    "inference_peak_bytes",
)
BENCH_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("size", pa.string()),
        ("batch_size", pa.int64()),
        ("device", pa.string()),
        ("threads", pa.int64()),
        ("train_batch_s", pa.float64()),
        ("inference_batch_s", pa.float64()),
        ("uncached_inference_batch_s", pa.float64()),
        ("caching_s", pa.float64()),
        ("seconds_per_epoch", pa.float64()),
        ("train_throughput", pa.float64()),
        ("inference_throughput", pa.float64()),
        ("train_peak_bytes", pa.int64()),
        ("inference_peak_bytes", pa.int64()),
        ("cache_speedup", pa.float64()),  # uncached / cached inference time
        *[(f"{name}_ratio", pa.float64()) for name in RATIO_FIGURES],
        ("measured_at", pa.timestamp("s", tz="UTC")),
    ]
)
PARTITIONS = ("dataset", "method")


def honest_cpu_memory() -> bool:
    """Make the CPU peak-RSS sampler track live tensors: glibc then serves every allocation
    of 128 KiB or more by mmap and unmaps it on free (instead of keeping freed memory in its
    heap, which would hide the peak of later batches). It holds for the rest of the process
    and slows allocation-heavy code (training ~2x on a CPU). Returns False where unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 128 * 1024) and libc.mallopt(m_trim_threshold, 0)
    return bool(ok)


def time_uncached_inference(model: torch.nn.Module, inputs: torch.Tensor, batches: int) -> float:
    """Mean seconds of a train-mode forward under no_grad: the weight is recomputed for every
    batch, as an implementation without an eval cache would do."""
    model.train()
    with torch.no_grad():
        model(inputs)  # warm-up
        with timed(inputs.device) as elapsed:
            for _ in range(batches):
                model(inputs)
    return elapsed[0] / batches


def bench_cell(
    method: str,
    size: str,
    dataset: str,
    batch_size: int,
    device: torch.device,
    batches: int,
    warmup: int = 1,
) -> dict[str, Any]:
    """One row of the benchmark: every figure of ``method`` at ``size`` on ``device``."""
    info = DATASETS[dataset]
    shape = (info.channels, info.image_size, info.image_size)

    def build() -> torch.nn.Module:
        return build_model(method, size, dataset)

    timing = measure_model(build, shape, batch_size, device, batches, warmup)
    inputs = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0))
    uncached = time_uncached_inference(build().to(device), inputs.to(device), batches)
    batches_per_epoch = math.ceil(TRAIN_EXAMPLES.get(dataset, 50_000) / batch_size)
    return {
        "dataset": dataset,
        "method": method,
        "size": size,
        "batch_size": batch_size,
        "device": timing.device,
        "threads": torch.get_num_threads(),
        "train_batch_s": timing.train_batch_s,
        "inference_batch_s": timing.inference_batch_s,
        "uncached_inference_batch_s": uncached,
        "caching_s": timing.caching_s,
        "seconds_per_epoch": timing.train_batch_s * batches_per_epoch,
        "train_throughput": timing.train_throughput,
        "inference_throughput": timing.inference_throughput,
        "train_peak_bytes": timing.train_peak_bytes,
        "inference_peak_bytes": timing.inference_peak_bytes,
        "cache_speedup": uncached / timing.inference_batch_s,
    }


def cell_memory(
    method: str, size: str, dataset: str, batch_size: int, device: torch.device, batches: int = 3
) -> dict[str, int]:
    """Peak training and inference memory of ``method`` at ``size``, a fresh model for each,
    over ``batches`` batches (the paper's memory_usage.py: 3)."""
    info = DATASETS[dataset]
    shape = (batch_size, info.channels, info.image_size, info.image_size)
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    model = build_model(method, size, dataset).to(device)
    # One warm-up: on a CPU the peak is resident-set growth, which later batches no longer show.
    _, train_bytes = time_training(model, inputs, batches, warmup=1)
    del model
    _, _, inference_bytes = time_inference(build_model(method, size, dataset).to(device), inputs, 3)
    return {"train_peak_bytes": train_bytes, "inference_peak_bytes": inference_bytes}


def _fresh_cpu_process(threads: int) -> None:
    if not honest_cpu_memory():
        raise RuntimeError("cannot set glibc's mmap threshold: CPU peak memory is not measurable")
    torch.set_num_threads(threads)


def cpu_memory_in_fresh_process(
    method: str, size: str, dataset: str, batch_size: int
) -> dict[str, int]:
    """``cell_memory`` on the CPU in a new process set up by ``honest_cpu_memory`` first.

    Pitfall: in a process that has already trained, glibc serves large allocations from the
    freed memory it keeps (mmap only happens when no free chunk fits), so the resident set
    hardly grows and the sampled peak reads as a few KiB. A fresh process has no such heap."""
    context = multiprocessing.get_context("spawn")
    setup = (torch.get_num_threads(),)
    with ProcessPoolExecutor(1, context, initializer=_fresh_cpu_process, initargs=setup) as pool:
        cpu = torch.device("cpu")
        return pool.submit(cell_memory, method, size, dataset, batch_size, cpu).result()


def add_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """``<figure>_ratio`` = figure / the standard conv's figure at the same size (NaN when
    the run has no standard row for that size or its figure is 0)."""
    frame = frame.copy()
    baseline = frame[frame["method"] == BASELINE].set_index("size")
    for name in RATIO_FIGURES:
        reference = frame["size"].map(baseline[name]) if len(baseline) else math.nan
        reference = pd.Series(reference, index=frame.index, dtype=float).replace(0.0, math.nan)
        frame[f"{name}_ratio"] = frame[name].astype(float) / reference
    return frame


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _ratio(row: pd.Series, name: str) -> str:
    ratio = row.get(f"{name}_ratio", math.nan)
    return "-" if pd.isna(ratio) else f"{ratio:.2f}"


def render_tables(frame: pd.DataFrame, title: str = "lipsweep bench") -> list[Table]:
    """Two tables that fit 80 columns, training then inference; "x std" columns are the ratio
    to the standard conv of the same size measured in the same run."""
    train = Table(title=f"{title}: training", box=box.SIMPLE_HEAD)
    train.caption = "times in seconds; peak: memory above the start (throughputs: --format csv)"
    infer = Table(title=f"{title}: cached inference", box=box.SIMPLE_HEAD)
    infer.caption = "uncached: s/batch recomputing the weights; caching: s of the first batch"
    for table, headers in (
        (train, ("size", "method", "s/batch", "x std", "s/epoch", "peak", "x std")),
        (infer, ("size", "method", "s/batch", "x std", "uncached", "speedup", "caching", "peak")),
    ):  # fmt: skip
        for header in headers:
            table.add_column(header, justify="left" if header in ("size", "method") else "right")
    for _, row in frame.iterrows():
        train.add_row(
            row["size"], row["method"], f"{row['train_batch_s']:.4f}", _ratio(row, "train_batch_s"),
            f"{row['seconds_per_epoch']:.1f}", _bytes(row["train_peak_bytes"]),
            _ratio(row, "train_peak_bytes"),
        )  # fmt: skip
        infer.add_row(
            row["size"], row["method"], f"{row['inference_batch_s']:.4f}",
            _ratio(row, "inference_batch_s"), f"{row['uncached_inference_batch_s']:.4f}",
            f"{row['cache_speedup']:.2f}x", f"{row['caching_s']:.4f}",
            _bytes(row["inference_peak_bytes"]),
        )  # fmt: skip
    return [train, infer]


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def save_frame(frame: pd.DataFrame, out: Path, run_id: str) -> list[Path]:
    """One Parquet file per (dataset, method) of this run, written atomically:
    ``out/results/bench/dataset=<d>/method=<m>/<run_id>.parquet``."""
    folder = out / "results" / "bench"
    return write_partitioned(frame.assign(run_id=run_id), folder, BENCH_SCHEMA, PARTITIONS, run_id)


def read_bench(out: Path) -> pd.DataFrame:
    """Every benchmark row under ``out``, partition columns included."""
    return read_partitioned(out / "results" / "bench", BENCH_SCHEMA, PARTITIONS)


def make_figures(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The paper-style log-scale speed and memory figures (``analysis.figures``)."""
    from analysis.figures import speed_memory_figures  # matplotlib only when figures are drawn

    return speed_memory_figures(frame, out_dir)


def run_bench(
    methods: Iterable[str],
    sizes: Iterable[str],
    dataset: str = "cifar10",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    out: Path = Path("bench-out"),
    batches: int = 5,
    console: Console | None = None,
    warmup: int = 1,
    output: str = "table",
) -> pd.DataFrame:
    """Benchmark every (method, size), the standard conv always included (first, per size),
    print the table, write Parquet and figures; returns the frame with ratio columns."""
    console = console or Console()
    device = torch.device(device)
    methods = [BASELINE, *[m for m in methods if m != BASELINE]]
    cells = [(method, size) for size in sizes for method in methods]
    rows = []
    for method, size in cells:
        console.print(f"[dim]bench {dataset} {size} {method} (batch {batch_size})[/dim]")
        rows.append(bench_cell(method, size, dataset, batch_size, device, batches, warmup))
    # On a CPU the peak-RSS sampler needs glibc to return freed memory at once, which makes
    # every large allocation a fresh mmap: training then runs ~2x slower, so memory is
    # measured in a second pass, after every timing, each model in a fresh process.
    if device.type == "cpu":
        for row, (method, size) in zip(rows, cells, strict=True):
            console.print(f"[dim]memory {dataset} {size} {method} (fresh process)[/dim]")
            row.update(cpu_memory_in_fresh_process(method, size, dataset, batch_size))
    frame = add_ratios(pd.DataFrame(rows))
    frame["measured_at"] = pd.Timestamp.now(tz="UTC").floor("s")
    if output == "table":
        for table in render_tables(frame, f"bench {dataset}, {frame['device'].iloc[0]}"):
            console.print(table)
    else:  # data on stdout; the progress lines went to ``console`` (the CLI's stderr)
        shown = frame.drop(columns=["measured_at"])
        text = shown.to_csv(index=False) if output == "csv" else shown.to_json(orient="records")
        sys.stdout.write(text.rstrip() + "\n")
    run_id = new_run_id()
    paths = save_frame(frame, Path(out), run_id)
    console.print(f"wrote {len(paths)} Parquet files under {Path(out) / 'results' / 'bench'}")
    figures = make_figures(frame, Path(out) / "figures")
    console.print(f"wrote {len(figures)} figures under {Path(out) / 'figures'}")
    return frame
