"""The benchmark library on a tiny grid: table, Parquet, ratios (no timing assertions)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from lipsweep.bench import (
    BASELINE,
    RATIO_FIGURES,
    add_ratios,
    count_torch_calls,
    fit_exponent,
    layer_costs,
    read_bench,
    run_bench,
    saved_tensor_bytes,
)
from lipsweep.layers import LAYERS


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path, str]:
    out = tmp_path_factory.mktemp("bench")
    buffer = io.StringIO()
    console = Console(file=buffer, width=250)
    torch.manual_seed(0)
    frame = run_bench(["aol", "lot"], ["XS"], "digits", 4, "cpu", out, batches=1, console=console)
    return frame, out, buffer.getvalue()


def test_standard_is_measured_and_is_its_own_unit(bench_run) -> None:
    frame, _, _ = bench_run
    assert list(frame["method"]) == [BASELINE, "aol", "lot"]
    standard = frame[frame["method"] == BASELINE].iloc[0]
    for name in RATIO_FIGURES:
        if standard[name] > 0:
            assert standard[f"{name}_ratio"] == pytest.approx(1.0)


def test_ratios_are_figures_over_standard(bench_run) -> None:
    frame, _, _ = bench_run
    standard = frame[frame["method"] == BASELINE].iloc[0]
    lot = frame[frame["method"] == "lot"].iloc[0]
    assert lot["train_batch_s_ratio"] == pytest.approx(
        lot["train_batch_s"] / standard["train_batch_s"]
    )
    assert lot["cache_speedup"] == pytest.approx(
        lot["uncached_inference_batch_s"] / lot["inference_batch_s"]
    )
    assert lot["seconds_per_epoch"] == pytest.approx(lot["train_batch_s"] * math.ceil(1437 / 4))


def test_frame_has_the_figure_columns(bench_run) -> None:
    frame, _, _ = bench_run
    needed = {
        "method", "size", "seconds_per_epoch", "inference_throughput", "train_peak_bytes",
        "inference_peak_bytes", "train_batch_s", "inference_batch_s", "caching_s",
        "train_throughput", "batch_size", "device", "dataset",
    }  # fmt: skip
    assert needed <= set(frame.columns)
    assert (frame["train_batch_s"] > 0).all() and (frame["inference_batch_s"] > 0).all()


def test_table_prints_every_method_with_ratios(bench_run) -> None:
    _, _, printed = bench_run
    for method in (BASELINE, "aol", "lot"):
        assert method in printed
    assert "(1.00x)" in printed


def test_parquet_is_hive_partitioned_and_complete(bench_run) -> None:
    frame, out, _ = bench_run
    folder = out / "results" / "bench" / "dataset=digits"
    files = sorted(folder.glob("method=*/*.parquet"))
    assert [f.parent.name for f in files] == ["method=aol", "method=lot", "method=standard"]
    assert not list(folder.rglob("*.tmp"))
    back = read_bench(out).sort_values("method").reset_index(drop=True)
    assert len(back) == 3 and set(back["dataset"]) == {"digits"}
    mine = frame.sort_values("method").reset_index(drop=True)
    pd.testing.assert_series_equal(back["train_batch_s"], mine["train_batch_s"])
    assert back["run_id"].nunique() == 1


def test_add_ratios_without_standard_gives_nan() -> None:
    frame = pd.DataFrame([{"method": "aol", "size": "XS", **{name: 1.0 for name in RATIO_FIGURES}}])
    assert add_ratios(frame)["train_batch_s_ratio"].isna().all()


def test_fit_exponent_recovers_a_power_law() -> None:
    xs = [8, 16, 32, 64]
    assert fit_exponent(xs, [3 * x**2.5 for x in xs]) == pytest.approx(2.5)


def test_saved_tensor_bytes_counts_distinct_storages() -> None:
    x = torch.randn(10, 10, requires_grad=True)
    with saved_tensor_bytes() as saved:
        (x * x).sum()
    assert saved == [400, 100]  # x saved twice, one storage


@pytest.mark.parametrize("method", ["bcop", "lot", "cayley", "aol", "sll"])
def test_parameter_transforms_have_no_loop_over_channels_or_frequencies(method: str) -> None:
    def calls(channels: int, size: int) -> int:
        layer = LAYERS[method](channels, channels, 3)
        spatial = (size, size) if getattr(layer, "size_dependent", False) else ()
        return count_torch_calls(lambda: layer.parametrize(True, *spatial))

    assert calls(4, 8) == calls(16, 8) == calls(4, 16)


def test_layer_costs_split_parameter_and_input_work() -> None:
    costs = layer_costs("lot", channels=4, size=8, batch_size=2, repeats=1)
    assert costs["param_s"] > 0 and costs["input_s"] > 0
    assert costs["param_saved_bytes"] > costs["input_saved_bytes"] > 0
    standard = layer_costs("standard", channels=4, size=8, batch_size=2, repeats=1)
    assert standard["param_s"] == 0 and standard["param_saved_bytes"] == 0
    assert standard["input_saved_elements"] == 2 * 4 * 10 * 10  # the padded input, no weight
