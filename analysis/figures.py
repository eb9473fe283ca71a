"""Figures like the paper's 1-4, saved as PNG and SVG.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global backend state), so
they render off-screen anywhere. Sizes are fixed: a figure of r x c panels is
``c * PANEL[0] * DPI`` by ``r * PANEL[1] * DPI`` pixels (radar panels: ``RADAR_PANEL``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from analysis.load import METHOD_NAMES, NO_BUDGET, dataset_name, method_name, size_order

DPI = 100
PANEL = (4.0, 3.0)  # inches per line/scatter panel
RADAR_PANEL = (3.0, 3.0)
RADAR_COLUMNS = 4
FORMATS = ("png", "svg")
GIB = 2.0**30

# (column, axis label, scale) per panel of the speed and memory figures (paper Figures 2-4).
SPEED_FIGURES: dict[str, list[tuple[str, str, float]]] = {
    "training_time": [("seconds_per_epoch", "training time per epoch (s)", 1.0)],
    "inference_throughput": [("inference_throughput", "inference throughput (examples/s)", 1.0)],
    "memory": [
        ("train_peak_bytes", "training memory (GiB)", GIB),
        ("inference_peak_bytes", "inference memory (GiB)", GIB),
    ],
}
TRAIN_BATCH = ("train_batch_s", "training time per batch (s)", 1.0)
# A peak below this cannot be a model's: the smallest (digits XS) holds 0.4 MiB of weights and
# a batch of its activations is larger still. CPU peaks are resident-set growth, which misses
# memory the process already held: such values are left out of the figures, with a note.
MIN_PLAUSIBLE_BYTES = 2.0**20
LOG_SPAN = 4.0  # a log axis only when the values span at least this factor
RADII_WORDS = {"cra_36": "36/255", "cra_72": "72/255", "cra_108": "108/255", "cra_255": "1"}


def metric_label(metric: str) -> str:
    """'cra_36' -> 'certified robust accuracy at eps = 36/255 (%)'."""
    if metric in RADII_WORDS:
        return f"certified robust accuracy at ε = {RADII_WORDS[metric]} (%)"
    return "clean accuracy (%)" if metric == "accuracy" else metric.replace("_", " ")


def method_color(method: str) -> str:
    """The same colour for a method in every figure (the paper's method order)."""
    known = list(METHOD_NAMES)
    index = known.index(method) if method in known else len(known) + sum(map(ord, method)) % 10
    return f"C{index % 10}"


def save(figure: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg; returns their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(f".{fmt}") for fmt in FORMATS]
    for path in paths:
        figure.savefig(path, dpi=DPI, format=path.suffix[1:])
    return paths


def _figure(rows: int, columns: int, panel: tuple[float, float], **kwargs: object) -> Figure:
    size = (columns * panel[0], rows * panel[1])
    return Figure(figsize=size, dpi=DPI, layout="constrained", **kwargs)


def _datasets(frame: pd.DataFrame) -> list[str | None]:
    if "dataset" not in frame or frame["dataset"].isna().all():
        return [None]
    return sorted(frame["dataset"].dropna().unique())


def _rows_of(frame: pd.DataFrame, dataset: str | None) -> pd.DataFrame:
    return frame if dataset is None else frame[frame["dataset"] == dataset]


def radar_figure(
    table: pd.DataFrame,
    out_dir: Path,
    name: str = "radar",
    intervals: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> list[Path]:
    """One radar per method of a ``ratings.ratings`` table (criteria without any rating are
    left out; a method's missing rating is drawn at 0). ``intervals`` (low, high tables of the
    same shape, ``analysis.stability.rating_intervals``) are drawn as a band around the line:
    the ratings the method gets in 95% of the bootstrap draws over seeds."""
    table = table.dropna(axis=1, how="all")
    if table.empty or table.shape[1] < 3:
        return []
    columns = min(RADAR_COLUMNS, len(table))
    rows = math.ceil(len(table) / columns)
    figure = _figure(rows, columns, RADAR_PANEL)
    angles = np.linspace(0.0, 2 * np.pi, table.shape[1], endpoint=False)
    around = np.append(angles, angles[0])

    def closed(values: pd.Series) -> np.ndarray:  # the first criterion again, to close the line
        values = values.fillna(0.0).to_numpy(float)
        return np.append(values, values[0])

    if intervals is not None:
        low, high = (b.reindex(index=table.index, columns=table.columns) for b in intervals)
    for i, (method, values) in enumerate(table.iterrows()):
        axes = figure.add_subplot(rows, columns, i + 1, projection="polar")
        color = method_color(str(method))
        axes.plot(around, closed(values), color=color)
        if intervals is None:
            axes.fill(around, closed(values), color=color, alpha=0.3)
        else:
            axes.fill_between(
                around, closed(low.loc[method]), closed(high.loc[method]), color=color, alpha=0.3
            )
        axes.set_xticks(angles, [c.replace(" ", "\n") for c in table.columns], fontsize=6)
        axes.set_ylim(0, 5)
        axes.set_yticks([1, 2, 3, 4, 5], ["1", "2", "3", "4", "5"], fontsize=5, color="0.4")
        axes.set_title(method_name(str(method)), fontsize=9)
    title = "ratings 1 (worst) to 5 (best): outward is better"
    if intervals is not None:
        title += "; band: 95% of bootstrap draws over seeds"
    figure.suptitle(title, fontsize=9)
    return save(figure, out_dir / name)


def _line_panel(axes: Axes, rows: pd.DataFrame, column: str, scale: float) -> int:
    """One line per method over the sizes; returns how many implausible values it left out.

    Several model rows of a (method, size) (budgets) are drawn at their median; with seeds
    (a ``<column>_ci95`` column), the widest 95% interval of those rows as an error bar."""
    sizes = size_order(rows["size"])
    positions = {size: i for i, size in enumerate(sizes)}
    values_of = pd.to_numeric(rows[column], errors="coerce")
    implausible = column.endswith("_peak_bytes") & values_of.lt(MIN_PLAUSIBLE_BYTES)
    rows = rows[~implausible]
    drawn: list[float] = []
    for method, group in rows.groupby("method"):
        values = group.groupby("size")[column].median() / scale
        values = values[np.isfinite(values) & (values > 0)]
        if values.empty:
            continue
        order = sorted(values.index, key=positions.__getitem__)
        drawn += values[order].tolist()
        x, y = [positions[s] for s in order], values[order].to_numpy()
        color = method_color(str(method))
        axes.plot(x, y, marker="o", color=color, label=method_name(str(method)))
        if f"{column}_ci95" in group:
            errors = group.groupby("size")[f"{column}_ci95"].max().reindex(order) / scale
            if errors.notna().any():
                axes.errorbar(x, y, yerr=errors.fillna(0.0).to_numpy(), fmt="none", ecolor=color)
    axes.set_xticks(range(len(sizes)), sizes)
    axes.set_xlabel("model size", fontsize=8)
    readable_y(axes, drawn)
    axes.grid(True, which="major", alpha=0.3)
    return int(implausible.sum())


def readable_x(axes: Axes, values: list[float]) -> None:
    readable_axis(axes, "x", values)
    axes.tick_params(axis="x", labelsize=7)


def readable_y(axes: Axes, values: list[float]) -> None:
    readable_axis(axes, "y", values)


def readable_axis(axes: Axes, which: str, values: list[float]) -> None:
    """A log ``which`` ("x" or "y") axis when the values span LOG_SPAN or more, else linear;
    plain tick labels either way."""
    axis = axes.xaxis if which == "x" else axes.yaxis
    if values and min(values) > 0 and max(values) / min(values) >= LOG_SPAN:
        (axes.set_xscale if which == "x" else axes.set_yscale)("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def _panels(
    frame: pd.DataFrame, panels: Sequence[tuple[str, str, float]], stem: Path
) -> list[Path]:
    datasets = _datasets(frame)
    figure = _figure(len(datasets), len(panels), PANEL)
    grid = figure.subplots(len(datasets), len(panels), squeeze=False)
    for r, dataset in enumerate(datasets):
        for c, (column, label, scale) in enumerate(panels):
            axes = grid[r][c]
            left_out = _line_panel(axes, _rows_of(frame, dataset), column, scale)
            axes.set_ylabel(label, fontsize=8)
            if left_out:
                note = f"{left_out} value(s) < 1 MiB left out: not a plausible peak"
                axes.text(0.02, 0.02, note, transform=axes.transAxes, fontsize=6, color="0.4")
            if dataset is not None:
                axes.set_title(dataset_name(dataset), fontsize=9)
    # The legend of the panel with the most methods (a panel may lack some: left out values).
    fullest = max((axes for row in grid for axes in row), key=lambda a: len(a.get_lines()))
    fullest.legend(fontsize=7)
    return save(figure, stem)


def speed_memory_figures(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Figures 2-4: training time per epoch, inference throughput and training / inference
    memory per method (lines) and size (x axis), on log scales.

    ``frame`` has columns method, size and any of seconds_per_epoch (or train_batch_s),
    inference_throughput, train_peak_bytes, inference_peak_bytes; an optional dataset column
    gives one row of panels per dataset. Several rows per (method, size) are reduced to their
    median. A figure is skipped when none of its columns has data; returns the files written.
    """
    written: list[Path] = []
    for name, panels in SPEED_FIGURES.items():
        if name == "training_time" and not _has_data(frame, "seconds_per_epoch"):
            panels = [TRAIN_BATCH]
        panels = [p for p in panels if _has_data(frame, p[0])]
        if panels:
            written += _panels(frame, panels, out_dir / name)
    return written


def _has_data(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(pd.to_numeric(frame[column], errors="coerce").gt(0).any())


def cra_gpu_hours_figure(
    frame: pd.DataFrame, out_dir: Path, metric: str = "cra_36", name: str = "cra_gpu_hours"
) -> list[Path]:
    """Certified accuracy (percent) against GPU-hours spent per model, one panel per dataset
    (``cra_gpu_hours_plot``), saved as PNG and SVG; [] without data."""
    figure = cra_gpu_hours_plot(frame, metric)
    return [] if figure is None else save(figure, out_dir / name)


def cra_gpu_hours_plot(frame: pd.DataFrame, metric: str = "cra_36") -> Figure | None:
    """``frame`` has columns method, size, ``metric``, gpu_hours_spent (or gpu_hours) and
    optionally dataset and budget; every model is a point labelled with its size and budget.
    The x axis is logarithmic when the hours span LOG_SPAN or more; CPU-only sweeps say
    device-hours."""
    hours = "gpu_hours_spent" if "gpu_hours_spent" in frame else "gpu_hours"
    if hours not in frame or metric not in frame:
        return None
    points = frame[frame[hours].gt(0) & frame[metric].notna()]
    if points.empty:
        return None
    datasets = _datasets(points)
    on_gpu = "device" not in points or not points["device"].astype(str).str.startswith("cpu").all()
    unit = "GPU-hours" if on_gpu else "device-hours"
    figure = _figure(1, len(datasets), PANEL)
    grid = figure.subplots(1, len(datasets), squeeze=False)[0]
    methods = sorted(points["method"].unique())
    for axes, dataset in zip(grid, datasets, strict=True):
        rows = _rows_of(points, dataset)
        for method in methods:
            group = rows[rows["method"] == method]
            x, y = group[hours].to_numpy(float), 100.0 * group[metric].to_numpy(float)
            axes.scatter(x, y, color=method_color(method), label=method_name(method), s=18)
            if f"{metric}_ci95" in group:  # several seeds: the 95% interval of the mean
                errors = 100.0 * group[f"{metric}_ci95"].to_numpy(float)
                axes.errorbar(x, y, yerr=errors, fmt="none", ecolor=method_color(method))
            budgets = group["budget"] if "budget" in group else [""] * len(group)
            for xi, yi, size, budget in zip(x, y, group["size"], budgets, strict=True):
                text = f"{size} {budget}".strip() if budget != NO_BUDGET else str(size)
                axes.annotate(text, (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
        readable_x(axes, rows[hours].to_numpy(float).tolist())
        axes.set_xlabel(f"{unit} spent per model", fontsize=8)
        cra_axis(axes, rows, metric)
        if dataset is not None:
            axes.set_title(dataset_name(dataset), fontsize=9)
    grid[-1].legend(fontsize=7)
    return figure


def cra_axis(axes: Axes, rows: pd.DataFrame, metric: str) -> None:
    """The percent y axis of ``metric`` from 0 to above the highest point or error bar; an
    all-zero metric still gets a readable axis (0 to 5%) and a note instead of matplotlib's
    -0.05 to 0.05."""
    values = rows[metric].astype(float)
    top = 100.0 * values.max() if len(values) else 0.0
    error = rows[f"{metric}_ci95"].astype(float).fillna(0.0) if f"{metric}_ci95" in rows else 0.0
    highest = 100.0 * (values + error).max() if len(values) else 0.0
    axes.set_ylim(0, max(5.0, 1.1 * highest))
    axes.set_ylabel(metric_label(metric), fontsize=8)
    if top == 0:
        axes.text(0.5, 0.5, "no model certifies any point", transform=axes.transAxes,
                  ha="center", fontsize=8, color="0.4")  # fmt: skip
    axes.grid(True, alpha=0.3)


# (column, axis label, scale, lower is better) of the Pareto panels.
PARETO_AXES: list[tuple[str, str, float, bool]] = [
    ("gpu_hours_spent", "device-hours spent per model", 1.0, True),
    ("inference_throughput", "inference throughput (examples/s)", 1.0, False),
    ("train_peak_bytes", "training memory (GiB)", GIB, True),
]


def dominated(x: np.ndarray, y: np.ndarray, lower_x_better: bool) -> np.ndarray:
    """Points another point beats on both axes (y higher is better; x per ``lower_x_better``):
    at least as good on both and strictly better on one."""
    x = x if lower_x_better else -x
    at_least = (x[None, :] <= x[:, None]) & (y[None, :] >= y[:, None])
    strictly = (x[None, :] < x[:, None]) | (y[None, :] > y[:, None])
    return (at_least & strictly).any(axis=1)


def pareto_figure(
    frame: pd.DataFrame, out_dir: Path, metric: str = "cra_36", name: str = "pareto"
) -> list[Path]:
    """The Pareto figure (``pareto_plot``) saved as PNG and SVG; [] without data."""
    figure = pareto_plot(frame, metric)
    return [] if figure is None else save(figure, out_dir / name)


def pareto_plot(frame: pd.DataFrame, metric: str = "cra_36") -> Figure | None:
    """CRA against device-hours, inference throughput and training memory, one row of panels
    per dataset: each model a point, the dominated ones grey, the front in its method's
    colour and labelled (with the budget where a method and size has several); seed
    intervals as error bars where the rows have them. Implausible memory peaks are left out
    with a note, as in the memory figure."""
    panels = [p for p in PARETO_AXES if _has_data(frame, p[0])]
    if metric not in frame or not panels or frame[metric].notna().sum() == 0:
        return None
    points = frame[frame[metric].notna()]
    datasets = _datasets(points)
    figure = _figure(len(datasets), len(panels), PANEL)
    grid = figure.subplots(len(datasets), len(panels), squeeze=False)
    for r, dataset in enumerate(datasets):
        rows = _rows_of(points, dataset)
        for c, (column, label, scale, lower) in enumerate(panels):
            _pareto_panel(grid[r][c], rows, column, scale, lower, metric)
            grid[r][c].set_xlabel(label, fontsize=8)
            if dataset is not None:
                grid[r][c].set_title(dataset_name(dataset), fontsize=9)
    figure.suptitle(
        f"Pareto front: {metric_label(metric)} against cost; grey = dominated", fontsize=9
    )
    return figure


def _pareto_panel(
    axes: Axes, rows: pd.DataFrame, column: str, scale: float, lower: bool, metric: str
) -> None:
    values = pd.to_numeric(rows[column], errors="coerce")
    implausible = column.endswith("_peak_bytes") & values.lt(MIN_PLAUSIBLE_BYTES)
    usable = rows[values.gt(0) & ~implausible]
    x = usable[column].to_numpy(float) / scale
    y = 100.0 * usable[metric].to_numpy(float)
    behind = dominated(x, y, lower)
    several = (
        usable.groupby(["method", "size"])["budget"].transform("nunique").gt(1).to_numpy()
        if "budget" in usable
        else np.zeros(len(usable), bool)
    )
    for i, (_, row) in enumerate(usable.iterrows()):
        color = "0.75" if behind[i] else method_color(str(row["method"]))
        error = row.get(f"{metric}_ci95")
        axes.errorbar(x[i], y[i], yerr=None if pd.isna(error) else 100.0 * error,
                      fmt="o", color=color, markersize=4, capsize=2)  # fmt: skip
        if not behind[i]:
            text = f"{method_name(str(row['method']))} {row['size']}"
            text += f" {row['budget']}" if several[i] else ""
            axes.annotate(text, (x[i], y[i]), fontsize=6, xytext=(3, 3),
                          textcoords="offset points")  # fmt: skip
    readable_x(axes, x.tolist())
    cra_axis(axes, usable, metric)
    if implausible.any():
        note = f"{int(implausible.sum())} value(s) < 1 MiB left out: not a plausible peak"
        axes.text(0.02, 0.02, note, transform=axes.transAxes, fontsize=6, color="0.4")
