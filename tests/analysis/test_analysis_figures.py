"""Figures are written as non-empty PNG of the expected pixel size and as SVG, with readable
axes (labels in words, tick labels on every axis, implausible values left out)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from analysis.figures import (
    DPI,
    MIN_PLAUSIBLE_BYTES,
    PANEL,
    PARETO_AXES,
    RADAR_COLUMNS,
    RADAR_PANEL,
    _line_panel,
    cra_gpu_hours_figure,
    cra_gpu_hours_plot,
    dominated,
    metric_label,
    pareto_figure,
    pareto_plot,
    radar_figure,
    readable_y,
    speed_memory_figures,
)

GB = 2**30


def bench_frame() -> pd.DataFrame:
    """What `lipsweep bench` passes: one row per method and size."""
    rows = []
    for i, method in enumerate(["aol", "cpl", "lot"]):
        for j, size in enumerate(["XS", "S", "M", "L"]):
            if (method, size) == ("lot", "L"):
                continue
            rows.append(
                {
                    "method": method,
                    "size": size,
                    "seconds_per_epoch": 8.0 * 2**j * (i + 1),
                    "inference_throughput": 2**15 / 2**j / (i + 1),
                    "train_peak_bytes": GB * 2**j * (i + 1),
                    "inference_peak_bytes": GB / 8 * 2**j,
                }
            )
    return pd.DataFrame(rows)


def assert_image(path: Path, width: float, height: float) -> None:
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.size == (round(width * DPI), round(height * DPI))
        darkest, lightest = image.convert("L").getextrema()
        assert darkest < 100 < lightest  # something is drawn on a light background


def assert_svg(path: Path) -> None:
    text = path.read_text()
    assert "<svg" in text and "</svg>" in text


def test_speed_memory_figures(tmp_path: Path) -> None:
    written = speed_memory_figures(bench_frame(), tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{n}.{e}"
        for n in ("training_time", "inference_throughput", "memory")
        for e in ("png", "svg")
    )
    assert_image(tmp_path / "training_time.png", PANEL[0], PANEL[1])
    assert_image(tmp_path / "memory.png", 2 * PANEL[0], PANEL[1])
    assert_svg(tmp_path / "memory.svg")


def test_speed_figures_per_dataset_and_batch_time(tmp_path: Path) -> None:
    frame = bench_frame().drop(columns=["seconds_per_epoch", "train_peak_bytes"])
    frame = pd.concat([frame.assign(dataset="cifar10"), frame.assign(dataset="tiny-imagenet")])
    frame["train_batch_s"] = 0.05
    written = speed_memory_figures(frame, tmp_path)
    assert {p.stem for p in written} == {"training_time", "inference_throughput", "memory"}
    assert_image(tmp_path / "memory.png", PANEL[0], 2 * PANEL[1])  # inference memory only


def test_no_data_no_figure(tmp_path: Path) -> None:
    assert speed_memory_figures(pd.DataFrame({"method": ["a"], "size": ["S"]}), tmp_path) == []


def test_radar(tmp_path: Path) -> None:
    methods = 5  # two rows of panels
    names = [f"m{i}" for i in range(methods)]
    table = pd.DataFrame({c: [1 + i % 5 for i in range(methods)] for c in "abcdef"}, index=names)
    written = radar_figure(table, tmp_path)
    columns = min(methods, RADAR_COLUMNS)
    rows = -(-methods // RADAR_COLUMNS)
    assert_image(written[0], columns * RADAR_PANEL[0], rows * RADAR_PANEL[1])
    assert_svg(written[1])


def test_radar_with_seed_bands(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    table = pd.DataFrame({c: [5.0, 3.0, 1.0] for c in "abcdef"}, index=names)
    low, high = table - 1.0, table.clip(upper=4.0) + 1.0
    written = radar_figure(table, tmp_path, intervals=(low, high))
    assert_image(written[0], 3 * RADAR_PANEL[0], RADAR_PANEL[1])
    assert "bootstrap" in written[1].read_text()  # the title says what the band is


def test_seed_intervals_are_drawn_as_error_bars() -> None:
    frame = bench_frame()
    axes = Figure().add_subplot()
    _line_panel(axes, frame, "seconds_per_epoch", 1.0)
    assert not axes.containers  # one seed: no interval known, none drawn
    frame["seconds_per_epoch_ci95"] = 0.1 * frame["seconds_per_epoch"]
    axes = Figure().add_subplot()
    _line_panel(axes, frame, "seconds_per_epoch", 1.0)
    bars = [c for c in axes.containers if c.has_yerr]
    assert len(bars) == 3  # one per method
    segments = bars[0].lines[2][0].get_segments()
    lengths = sorted(float(s[1][1] - s[0][1]) for s in segments)
    assert lengths == pytest.approx(sorted(0.2 * 8.0 * 2**j for j in range(4)))


def test_cra_gpu_hours(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "dataset": ["cifar10", "cifar10", "cifar100"],
            "method": ["aol", "soc", "soc"],
            "size": ["S", "M", "M"],
            "cra_36": [0.6, 0.66, None],
            "gpu_hours_spent": [30.0, 40.0, 50.0],
        }
    )
    written = cra_gpu_hours_figure(frame, tmp_path)
    assert_image(written[0], PANEL[0], PANEL[1])  # the NaN model leaves one dataset
    assert_svg(written[1])


def visible_ticks(axes) -> list[str]:
    """The y tick labels matplotlib draws inside the axis range."""
    low, high = axes.get_ylim()
    axes.figure.canvas.draw()
    return [t.get_text() for t in axes.get_yticklabels() if low <= t.get_position()[1] <= high]


def test_a_narrow_range_gets_a_linear_axis_with_several_labels() -> None:
    """Less than a factor LOG_SPAN apart: a log axis would show one label or none."""
    axes = Figure().add_subplot()
    axes.plot([0, 1, 2], [3.1, 3.6, 4.2])
    readable_y(axes, [3.1, 3.6, 4.2])
    assert axes.get_yscale() == "linear" and len(visible_ticks(axes)) >= 3


def test_a_wide_range_gets_a_log_axis_with_plain_labels() -> None:
    axes = Figure().add_subplot()
    axes.plot([0, 1, 2], [0.5, 8.0, 300.0])
    readable_y(axes, [0.5, 8.0, 300.0])
    labels = visible_ticks(axes)
    assert axes.get_yscale() == "log" and len(labels) >= 3
    assert not any("10^" in label or "$" in label for label in labels), labels


def test_implausible_memory_peaks_are_left_out() -> None:
    frame = bench_frame()
    frame.loc[0, "inference_peak_bytes"] = 8192  # 8 KiB: no model's inference fits in that
    axes = Figure().add_subplot()
    assert _line_panel(axes, frame, "inference_peak_bytes", GB) == 1
    drawn = [y for line in axes.get_lines() for y in line.get_ydata()]
    assert min(drawn) >= MIN_PLAUSIBLE_BYTES / GB


def test_metric_labels_are_words() -> None:
    assert metric_label("cra_36") == "certified robust accuracy at ε = 36/255 (%)"
    assert metric_label("accuracy") == "clean accuracy (%)"


def test_dominated_points() -> None:
    """(hours, CRA): (1, 50) and (4, 70) are the front; (2, 40) loses to (1, 50) on both,
    (4, 60) to (4, 70) on CRA at equal hours. Higher throughput is better instead."""
    x, y = np.array([1.0, 2.0, 4.0, 4.0]), np.array([50.0, 40.0, 70.0, 60.0])
    assert dominated(x, y, lower_x_better=True).tolist() == [False, True, False, True]
    assert dominated(x, y, lower_x_better=False).tolist() == [True, True, False, True]


def test_pareto_figure(tmp_path: Path) -> None:
    frame = bench_frame().assign(dataset="cifar10", gpu_hours_spent=2.0)
    frame["cra_36"] = [0.5 + 0.01 * i for i in range(len(frame))]
    frame["cra_36_ci95"] = 0.02
    written = pareto_figure(frame, tmp_path)
    assert_image(written[0], 3 * PANEL[0], PANEL[1])  # hours, throughput, memory
    assert_svg(written[1])
    assert pareto_figure(frame.drop(columns="cra_36"), tmp_path / "none") == []


def pareto_frame() -> pd.DataFrame:
    """Four models of one dataset. Hours: AOL-S loses to AOL-XS, SOC-XS to CPL-XS (same hours,
    lower CRA). Throughput: SOC-XS loses to CPL-XS. Memory: SOC-XS's 8 KiB peak is implausible
    (left out); of the other three none loses."""
    return pd.DataFrame(
        {
            "dataset": "cifar10",
            "budget": "24h",
            "method": ["aol", "aol", "cpl", "soc"],
            "size": ["XS", "S", "XS", "XS"],
            "cra_36": [0.5, 0.4, 0.7, 0.6],
            "gpu_hours_spent": [1.0, 2.0, 4.0, 4.0],
            "inference_throughput": [1000.0, 2000.0, 500.0, 100.0],
            "train_peak_bytes": [1.0 * GB, 0.5 * GB, 2.0 * GB, 8192.0],
        }
    )


def drawn_points(axes) -> dict[tuple[float, float], tuple[bool, bool]]:
    """(x, y) of every point of a Pareto panel -> (grey, has an error bar)."""
    grey = to_rgba("0.75")
    points = {}
    for container in axes.containers:
        line = container.lines[0]
        xy = (float(line.get_xdata()[0]), float(line.get_ydata()[0]))
        points[xy] = (to_rgba(line.get_color()) == grey, container.has_yerr)
    return points


def test_pareto_plot_greys_the_dominated_and_leaves_out_implausible_memory() -> None:
    figure = pareto_plot(pareto_frame())
    assert "Pareto front" in figure.get_suptitle() and "grey = dominated" in figure.get_suptitle()
    hours, throughput, memory = figure.axes
    labels = [(a.get_xlabel(), a.get_ylabel()) for a in figure.axes]
    assert labels == [(label, metric_label("cra_36")) for _, label, _, _ in PARETO_AXES]
    assert drawn_points(hours) == {
        (1.0, 50.0): (False, False), (2.0, 40.0): (True, False),
        (4.0, 70.0): (False, False), (4.0, 60.0): (True, False),
    }  # fmt: skip
    assert [grey for grey, _ in drawn_points(throughput).values()].count(True) == 1
    assert drawn_points(throughput)[(100.0, 60.0)] == (True, False)
    assert drawn_points(memory) == {(1.0, 50.0): (False, False), (0.5, 40.0): (False, False),
                                    (2.0, 70.0): (False, False)}  # fmt: skip
    assert any("1 value(s) < 1 MiB left out" in t.get_text() for t in memory.texts)
    labelled = {t.get_text() for t in hours.texts}
    assert labelled == {"AOL XS", "CPL XS"}  # the front only


def test_pareto_plot_draws_seed_intervals_and_budgets_of_one_model() -> None:
    frame = pareto_frame().drop(columns=["inference_throughput", "train_peak_bytes"])
    frame["cra_36_ci95"] = [0.02, None, 0.05, 0.01]
    frame = pd.concat([frame, frame.iloc[:1].assign(budget="2h", gpu_hours_spent=0.5, cra_36=0.3)])
    (axes,) = pareto_plot(frame).axes
    points = drawn_points(axes)
    assert len(points) == 5 and points[(2.0, 40.0)] == (True, False)  # one seed: no bar
    bars = {xy: c for xy, c in zip(points, axes.containers, strict=True) if c.has_yerr}
    assert set(bars) == {(1.0, 50.0), (4.0, 70.0), (4.0, 60.0), (0.5, 30.0)}
    segment = bars[(4.0, 70.0)].lines[2][0].get_segments()[0]
    assert segment[1][1] - segment[0][1] == pytest.approx(2 * 5.0)  # +- 5 points of CRA
    assert {t.get_text() for t in axes.texts} == {"AOL XS 24h", "AOL XS 2h", "CPL XS"}


def test_cra_gpu_hours_plot_axes_points_and_seed_bars() -> None:
    frame = pareto_frame().assign(device="cpu:x86_64")
    figure = cra_gpu_hours_plot(frame)
    (axes,) = figure.axes
    assert axes.get_xlabel() == "device-hours spent per model"
    assert axes.get_ylabel() == metric_label("cra_36")
    points = [tuple(p) for c in axes.collections for p in c.get_offsets()]
    assert sorted(points) == [(1.0, 50.0), (2.0, 40.0), (4.0, 60.0), (4.0, 70.0)]
    assert {t.get_text() for t in axes.texts} == {"XS 24h", "S 24h"}
    assert not axes.containers  # one seed per model: no interval known, none drawn
    frame["cra_36_ci95"] = 0.03
    axes = cra_gpu_hours_plot(frame.drop(columns="device")).axes[0]
    assert axes.get_xlabel() == "GPU-hours spent per model"
    assert sum(c.has_yerr for c in axes.containers) == 3  # one per method
    assert axes.get_ylim()[1] >= 73.0  # the highest bar is inside the axis


@pytest.mark.parametrize("plot", [cra_gpu_hours_plot, pareto_plot])
def test_an_all_zero_cra_gets_a_readable_axis_and_a_note(plot) -> None:
    frame = pareto_frame().assign(cra_36=0.0)
    for axes in plot(frame).axes:
        assert axes.get_ylim() == (0.0, 5.0)
        assert "no model certifies any point" in {t.get_text() for t in axes.texts}
