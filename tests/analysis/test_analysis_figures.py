"""Figures are written as non-empty PNG of the expected pixel size and as SVG."""

from pathlib import Path

import pandas as pd
from PIL import Image

from analysis.figures import (
    DPI,
    PANEL,
    RADAR_COLUMNS,
    RADAR_PANEL,
    cra_gpu_hours_figure,
    radar_figure,
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
