"""Table 2 layout from sweep rows and from the paper, and the delta table."""

import math

import pandas as pd
import pytest
from rich.console import Console

from analysis.paper import paper_results
from analysis.tables import delta_table, rich_table2, table2


def sweep_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["cifar10"] * 3,
            "budget": ["24h"] * 3,
            "method": ["soc", "soc", "lot"],
            "size": ["M", "XS", "L"],
            "status": ["completed", "completed", "oom"],
            "accuracy": [0.770, 0.740, math.nan],
            "cra_36": [0.665, 0.610, math.nan],
        }
    )


def test_table2_layout() -> None:
    table = table2(sweep_rows())
    assert list(table.columns.get_level_values("size")) == ["XS", "M", "L"] * 2
    assert table.loc[("cifar10", "soc"), ("cra_36", "M")] == pytest.approx(66.5)
    assert math.isnan(table.loc[("cifar10", "lot"), ("cra_36", "L")])


def test_paper_table2() -> None:
    table = table2(paper_results())
    assert table.shape == (21, 8)
    assert table.loc[("cifar100", "soc"), ("cra_36", "M")] == pytest.approx(34.9)
    assert math.isnan(table.loc[("cifar100", "cpl"), ("accuracy", "S")])
    assert table2(paper_results(), "2h").loc[("cifar10", "aol"), ("accuracy", "XS")] == (
        pytest.approx(68.5)
    )


def test_delta_table() -> None:
    delta = delta_table(table2(sweep_rows()), table2(paper_results()))
    assert delta.loc[("cifar10", "soc"), ("cra_36", "M")] == pytest.approx(66.5 - 66.3)
    assert delta.loc[("cifar10", "soc"), ("accuracy", "XS")] == pytest.approx(74.0 - 74.1)
    assert list(delta.index) == [("cifar10", "lot"), ("cifar10", "soc")]


def test_rich_rendering_shows_missing_as_dash() -> None:
    console = Console(record=True, width=120, color_system=None)
    console.print(rich_table2(table2(paper_results()), "cifar10", "paper"))
    text = console.export_text()
    assert "paper: CIFAR-10" in text and "66.3" in text
    lot = next(line for line in text.splitlines() if "LOT" in line)
    assert lot.rstrip(" │").endswith("-")
