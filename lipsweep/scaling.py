"""Costs of single layers as the channel count c and the input size s grow, against the
paper's Table 1 (PAPER.md 5.6).

``layer_costs`` splits one layer's work as Table 1 does: the parameter transform (the
training forward of the constrained weight) and the input op (the forward with a ready
weight), each with its time (best of ``repeats``, device synchronised) and the elements
autograd keeps for backward beyond the layer's own parameters and buffers (its activations;
a complex number is one element). ``run_scaling`` measures every method at c in ``channels``
(s fixed) and at s in ``sizes`` (c fixed), fits the log-log slopes (the exponents of c and s)
and prints them beside Table 1's; the fits go to
``out/results/scaling/method=<m>/<run-id>.parquet`` (atomic, hive-partitioned, as bench).

Memory counts are exact, so their exponents differ from Table 1's only by lower-order terms
(padding, the rfft grid's s (s/2 + 1) frequencies, biases). Times at small CPU sizes
under-state exponents (fixed per-call overheads); use the largest sizes the machine allows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch
from rich.console import Console
from rich.table import Table
from torch.overrides import TorchFunctionMode

from lipsweep.bench import BASELINE, new_run_id
from lipsweep.layers.registry import SPECS, Complexity
from lipsweep.measure import device_name, synchronize
from lipsweep.model import make_conv
from lipsweep.results.store import read_partitioned, write_partitioned

# Figure of Table 1 -> column of ``layer_costs``.
FIGURES = {
    "param_s": "param_s",
    "input_s": "input_s",
    "param_mem": "param_saved_elements",
    "input_mem": "input_saved_elements",
}
BCOP_BJORCK_STEPS = 20  # t of BCOP (BCOPConv2d.bjorck_iterations)
LOT_NEWTON_STEPS = 10  # t of LOT (lot.ITERATIONS)
SOC_TRAIN_TERMS = 5  # t1 of SOC (SOCConv2d.train_terms)
# Their conv reads a circularly padded copy of the input.
PADDED = ("standard", "aol", "bcop", "aoc")


def table1_memory(method: str, b: int, c: int, s: int, k: int = 3) -> tuple[float, float]:
    """Table 1's (parameter memory, input memory) of one layer, in elements.

    Read exactly where the paper's leading-order form would mislead: BCOP orthogonalises
    2k - 1 matrices, one c x c iterate each per Bjorck step ((2k - 1) c^2 t, Table 1 writes
    c^2 k t); a circularly padded conv (standard, AOL, BCOP; nn.Conv2d does the same) reads
    the padded image, so its M is b (s + k - 1)^2 c.
    """
    p = c * c * k * k
    m = b * (s + k - 1) ** 2 * c if method in PADDED else b * s * s * c
    return {
        "standard": (p, m),
        "aol": (5 * p, m),
        "bcop": ((2 * k - 1) * c * c * BCOP_BJORCK_STEPS + c * c * k**3, m),
        "cayley": (1.5 * s * s * c * c, 2.5 * m),
        "cpl": (p + s * s * c, 3 * m),
        "lot": (4 * s * s * c * c * LOT_NEWTON_STEPS, 3 * m),
        "bro": (2 * s * s * c * c, 3 * m),  # not in Table 1: our count (V(f), W(f) per frequency)
        # Not in Table 1, our counts: AOC's 2k Bjorck iterates of c x c/2, its 2k projectors and
        # BCOP's composition; Sandwich's spectrum, [A B] and the solve per frequency, and five
        # activation-sized tensors (two spectra, the hidden map, its ReLU, the scaled one).
        "aoc": (k * c * c * BCOP_BJORCK_STEPS + 2 * k * c * c + c * c * k**3, m),
        "sandwich": (4 * s * s * c * c, 6 * m),
        "sll": (5 * p, 3 * m),
        "soc": (p, SOC_TRAIN_TERMS * m),
    }[method]


# Layer-level measurements ---------------------------------------------------------------------


class _CallCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        self.calls += 1
        return func(*args, **(kwargs or {}))


def count_torch_calls(function: Callable[[], Any]) -> int:
    """Number of torch function calls ``function`` makes: equal counts at different channel
    counts or input sizes mean no Python loop over channels or frequencies."""
    with _CallCounter() as counter:
        function()
    return counter.calls


@contextmanager
def saved_tensor_bytes(exclude: Iterable[Any] = ()) -> Iterator[list[int]]:
    """What autograd keeps for backward inside the block, over distinct storages:
    out = [bytes, elements] (a complex number is one element). Storages of the tensors in
    ``exclude`` (e.g. the layer's parameters, or the weight handed to an input op) are not
    counted."""
    skip = {t.untyped_storage().data_ptr() for t in _tensors(exclude)}
    storages: dict[int, tuple[int, int]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = (
                storage.nbytes(),
                storage.nbytes() // tensor.element_size(),
            )
        return tensor

    out: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield out
    out.extend([sum(b for b, _ in storages.values()), sum(e for _, e in storages.values())])


def _tensors(items: Any) -> list[torch.Tensor]:
    if isinstance(items, torch.Tensor):
        return [items]
    if isinstance(items, list | tuple):
        return [t for item in items for t in _tensors(item)]
    return []


def _best_seconds(function: Callable[[], Any], device: torch.device, repeats: int) -> float:
    function()
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def layer_costs(
    method: str,
    channels: int,
    size: int,
    batch_size: int,
    kernel_size: int = 3,
    device: str | torch.device = "cpu",
    repeats: int = 3,
) -> dict[str, Any]:
    """Costs of one ``method`` layer (c channels, s x s input) split as in Table 1."""
    device = torch.device(device)
    layer = make_conv(method, channels, kernel_size, size, "block").to(device).train()
    spatial = (size, size) if getattr(layer, "size_dependent", False) else ()
    x = torch.randn(batch_size, channels, size, size, device=device, requires_grad=True)
    own = [*layer.parameters(), *layer.buffers()]
    if hasattr(layer, "parametrize"):
        layer.parametrize(True, *spatial)  # warm state (CPL's converged first power step)

        def transform() -> Any:
            return layer.parametrize(True, *spatial)

        def input_op(weight: Any) -> torch.Tensor:
            return layer.apply_weight(x, weight)
    else:  # the standard conv: its weight is the parameter itself

        def transform() -> Any:
            return (layer.weight, layer.bias)

        def input_op(weight: Any) -> torch.Tensor:
            return layer(x)

    with saved_tensor_bytes(own) as param_saved:
        weight = transform()
    with saved_tensor_bytes([weight, *own]) as input_saved:
        input_op(weight)
    with torch.no_grad():
        param_s = _best_seconds(transform, device, repeats) if param_saved[1] else 0.0
        ready = transform()
        input_s = _best_seconds(lambda: input_op(ready), device, repeats)
    return {
        "method": method,
        "channels": channels,
        "size": size,
        "batch_size": batch_size,
        "param_s": param_s,
        "input_s": input_s,
        "param_saved_bytes": float(param_saved[0]),
        "param_saved_elements": float(param_saved[1]),
        "input_saved_bytes": float(input_saved[0]),
        "input_saved_elements": float(input_saved[1]),
    }


def fit_exponent(xs: Iterable[float], ys: Iterable[float]) -> float:
    """Least-squares slope of log y against log x (the exponent of y ~ x^a)."""
    x = torch.tensor([math.log(v) for v in xs], dtype=torch.float64)
    y = torch.tensor([math.log(max(v, 1e-12)) for v in ys], dtype=torch.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


# Scaling fits ---------------------------------------------------------------------------------

SCALING_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("figure", pa.string()),  # param_s, input_s, param_mem, input_mem
        ("c_exponent", pa.float64()),
        ("s_exponent", pa.float64()),
        ("c_exponent_top", pa.float64()),  # slope between the two largest c
        ("s_exponent_top", pa.float64()),
        ("table1", pa.string()),
        ("table1_c", pa.int64()),
        ("table1_s", pa.int64()),
        ("channels", pa.string()),  # the c grid, comma-separated, at s = fixed_size
        ("sizes", pa.string()),  # the s grid, at c = fixed_channels
        ("fixed_channels", pa.int64()),
        ("fixed_size", pa.int64()),
        ("batch_size", pa.int64()),
        ("kernel_size", pa.int64()),
        ("device", pa.string()),
        ("threads", pa.int64()),
        ("measured_at", pa.timestamp("s", tz="UTC")),
    ]
)


def lower_median(values: list[int]) -> int:
    return sorted(values)[(len(values) - 1) // 2]


def fit_method(
    method: str,
    channels: list[int],
    sizes: list[int],
    batch_size: int,
    device: torch.device,
    repeats: int,
    kernel_size: int = 3,
) -> list[dict[str, Any]]:
    """One row per Table 1 figure of ``method``: fitted c and s exponents beside Table 1's.

    c varies at s = lower median of ``sizes``, s at c = lower median of ``channels``. Each
    exponent is the least-squares slope over the grid and, as ``*_top``, the slope between
    its two largest points (nearest the asymptote when small sizes are overhead-bound); a
    figure that is 0 anywhere (nothing saved, no transform) has NaN exponents."""
    channels, sizes = sorted(set(channels)), sorted(set(sizes))
    fixed_c, fixed_s = lower_median(channels), lower_median(sizes)

    def costs(c: int, s: int) -> dict[str, Any]:
        return layer_costs(method, c, s, batch_size, kernel_size, device, repeats)

    by_c = [costs(c, fixed_s) for c in channels]
    by_s = [costs(fixed_c, s) for s in sizes]
    rows = []
    for figure, column in FIGURES.items():
        fits = [math.nan] * 4
        if all(row[column] > 0 for row in by_c + by_s):
            c_values, s_values = [r[column] for r in by_c], [r[column] for r in by_s]
            fits = [
                fit_exponent(channels, c_values),
                fit_exponent(sizes, s_values),
                fit_exponent(channels[-2:], c_values[-2:]),
                fit_exponent(sizes[-2:], s_values[-2:]),
            ]
        paper = SPECS[method].table1[figure]
        rows.append(
            {
                "method": method,
                "figure": figure,
                "c_exponent": fits[0],
                "s_exponent": fits[1],
                "c_exponent_top": fits[2],
                "s_exponent_top": fits[3],
                "table1": paper.text,
                "table1_c": paper.c,
                "table1_s": paper.s,
                "channels": ",".join(map(str, channels)),
                "sizes": ",".join(map(str, sizes)),
                "fixed_channels": fixed_c,
                "fixed_size": fixed_s,
                "batch_size": batch_size,
                "kernel_size": kernel_size,
                "device": device_name(device),
                "threads": torch.get_num_threads(),
            }
        )
    return rows


def _exponents(row: pd.Series) -> str:
    if pd.isna(row["c_exponent"]):
        return "-"
    fit = f"c^{row['c_exponent']:.2f} s^{row['s_exponent']:.2f}"
    return f"{fit}\ntop c^{row['c_exponent_top']:.2f} s^{row['s_exponent_top']:.2f}"


def render_scaling(frame: pd.DataFrame) -> Table:
    """Fitted exponents per method and figure, Table 1's beside them."""
    first = frame.iloc[0]
    table = Table(
        title=f"fitted exponents (c^a s^b; top: the two largest points) beside Table 1: c in "
        f"{first['channels']} at s = {first['fixed_size']}, s in {first['sizes']} at "
        f"c = {first['fixed_channels']}, batch {first['batch_size']}, k = {first['kernel_size']}, "
        f"{first['device']}"
    )
    table.add_column("method")
    for figure in FIGURES:
        table.add_column(f"{figure} fit", justify="right")
        table.add_column(f"{figure} Table 1")
    for method, group in frame.groupby("method", sort=False):
        by_figure = group.set_index("figure")
        cells = []
        for figure in FIGURES:
            row = by_figure.loc[figure]
            paper = Complexity(
                row["table1"], _optional(row["table1_c"]), _optional(row["table1_s"])
            )
            cells += [_exponents(row), str(paper)]
        table.add_row(str(method), *cells)
    return table


def _optional(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def save_scaling(frame: pd.DataFrame, out: Path, run_id: str) -> list[Path]:
    """One Parquet file per method of this run, written atomically:
    ``out/results/scaling/method=<m>/<run_id>.parquet``."""
    folder = out / "results" / "scaling"
    return write_partitioned(
        frame.assign(run_id=run_id), folder, SCALING_SCHEMA, ["method"], run_id
    )


def read_scaling(out: Path) -> pd.DataFrame:
    """Every scaling fit under ``out``, the method partition included."""
    return read_partitioned(out / "results" / "scaling", SCALING_SCHEMA, ["method"])


def run_scaling(
    methods: Iterable[str],
    channels: list[int],
    sizes: list[int],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    out: Path = Path("bench-out"),
    repeats: int = 3,
    console: Console | None = None,
    run_id: str | None = None,
) -> pd.DataFrame:
    """Fit every method's exponents, print them beside Table 1 and write the Parquet."""
    console = console or Console()
    device = torch.device(device)
    rows = []
    for method in [BASELINE, *[m for m in methods if m != BASELINE]]:
        console.print(f"[dim]scaling {method}: c in {channels}, s in {sizes}[/dim]")
        rows += fit_method(method, channels, sizes, batch_size, device, repeats)
    frame = pd.DataFrame(rows)
    frame["measured_at"] = pd.Timestamp.now(tz="UTC").floor("s")
    console.print(render_scaling(frame))
    paths = save_scaling(frame, Path(out), run_id or new_run_id())
    console.print(f"wrote {len(paths)} Parquet files under {Path(out) / 'results' / 'scaling'}")
    return frame
