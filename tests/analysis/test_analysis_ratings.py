"""The 1-5 radar ratings."""

import pandas as pd
import pytest

from analysis.paper import paper_results, with_paper_speed
from analysis.ratings import CRITERIA, rank_scores, ratings, relative_cost


def test_rank_scores() -> None:
    values = pd.Series({"a": 3.0, "b": 2.0, "c": 1.0, "d": None})
    assert rank_scores(values, True).to_dict() == {"a": 5.0, "b": 3.0, "c": 1.0}
    assert rank_scores(values, False).to_dict() == {"a": 1.0, "b": 3.0, "c": 5.0}
    assert rank_scores(pd.Series({"a": 1.0}), True).to_dict() == {"a": 5.0}
    ties = rank_scores(pd.Series({"a": 1.0, "b": 1.0, "c": 0.0}), True)
    assert ties.to_dict() == {"a": 4.0, "b": 4.0, "c": 1.0}  # average rank 1.5 -> 4.0


def test_relative_cost_is_scale_free() -> None:
    frame = pd.DataFrame(
        {
            "method": ["a", "b", "a", "b"],
            "size": ["S", "S", "L", "L"],
            "seconds_per_epoch": [1.0, 2.0, 100.0, 200.0],
            "inference_throughput": [100.0, 50.0, 10.0, 5.0],
        }
    )
    time = relative_cost(frame, "seconds_per_epoch")
    assert time["b"] / time["a"] == pytest.approx(2.0)
    inference = relative_cost(frame, "inference_throughput")  # 1 / throughput
    assert inference["b"] / inference["a"] == pytest.approx(2.0)


def test_paper_ratings() -> None:
    table = ratings(with_paper_speed(paper_results("24h")))
    assert list(table.columns) == CRITERIA
    assert table.loc["soc", "robust accuracy"] == 5.0
    assert table.loc["cpl", "training time"] == 5.0  # fastest per Table 8
    assert table.loc["lot", "training time"] == 1.0
    assert table["training memory"].isna().all()  # the paper has no memory numbers
