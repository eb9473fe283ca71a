"""The top-k ranking on hand-made tables with known answers."""

import math

import pandas as pd
import pytest

from analysis.ranking import (
    metric_for_radius,
    rank_methods,
    rank_models,
    top_k_counts,
    top_weights,
)


def models(rows: list[tuple], budget: str = "24h") -> pd.DataFrame:
    """(dataset, method, size, cra_36[, status]) tuples as model rows."""
    frame = pd.DataFrame(
        [(*r, "completed")[:5] for r in rows],
        columns=["dataset", "method", "size", "cra_36", "status"],
    )
    return frame.assign(budget=budget)


def counts(frame: pd.DataFrame, top=(1, 3, 10)) -> dict[str, tuple[int, ...]]:
    table = rank_methods(frame, top)
    columns = [f"top{k}" for k in sorted(top)] + ["score"]
    return {row["method"]: tuple(int(row[c]) for c in columns) for _, row in table.iterrows()}


def test_weights_and_metric_names() -> None:
    assert top_weights([1, 3, 10]) == {1: 3, 3: 2, 10: 1}
    assert top_weights([5, 1]) == {1: 2, 5: 1}
    assert metric_for_radius(36) == "cra_36"
    assert metric_for_radius(0) == "accuracy"


def test_known_counts_are_cumulative_and_per_model() -> None:
    frame = models(
        [
            ("d1", "a", "M", 0.60), ("d1", "a", "L", 0.59), ("d1", "b", "M", 0.58),
            ("d1", "c", "M", 0.50),
            ("d2", "b", "S", 0.40), ("d2", "c", "S", 0.39), ("d2", "a", "S", 0.10),
        ]
    )  # fmt: skip
    # d1: a-M 1, a-L 2, b-M 3, c-M 4; d2: b-S 1, c-S 2, a-S 3.
    # k = (1, 3) weighs 2 and 1.
    assert counts(frame, (1, 3)) == {"a": (1, 3, 2 * 1 + 3), "b": (1, 2, 4), "c": (0, 1, 1)}
    assert counts(frame) == {"a": (1, 3, 3, 12), "b": (1, 2, 2, 9), "c": (0, 1, 2, 4)}


def test_ties_share_the_better_rank() -> None:
    frame = models(
        [("d", "a", "S", 0.5), ("d", "b", "S", 0.5), ("d", "c", "S", 0.4), ("d", "d", "S", 0.3)]
    )
    ranked = rank_models(frame)
    assert dict(zip(ranked["method"], ranked["rank"], strict=True)) == {
        "a": 1, "b": 1, "c": 3, "d": 4,
    }  # fmt: skip
    # Both tied models are top-1; the top-1 then holds two models.
    assert counts(frame, (1, 3)) == {
        "a": (1, 1, 3), "b": (1, 1, 3), "c": (0, 1, 1), "d": (0, 0, 0),
    }  # fmt: skip


def test_tie_across_the_border_puts_all_tied_models_in() -> None:
    frame = models([("d", "a", "S", 0.9), ("d", "b", "S", 0.5), ("d", "c", "S", 0.5)])
    assert counts(frame, (1, 2)) == {"a": (1, 1, 3), "b": (0, 1, 1), "c": (0, 1, 1)}


def test_decimals_make_near_ties_ties() -> None:
    frame = models([("d", "a", "S", 0.50049), ("d", "b", "S", 0.5001)])
    assert list(rank_models(frame)["rank"]) == [1, 2]
    assert list(rank_models(frame, decimals=3)["rank"]) == [1, 1]


def test_missing_cells_and_failed_runs_take_no_place() -> None:
    frame = models(
        [
            ("d", "lot", "L", math.nan, "oom"),  # LOT-L: no numbers
            ("d", "cpl", "S", 0.99, "nan"),  # diverged run with a (meaningless) value
            ("d", "sll", "S", 0.98, "failed"),
            ("d", "aol", "S", 0.97, "preempted"),
            ("d", "soc", "S", math.nan),  # completed without the metric
            ("d", "bcop", "S", 0.30),
            ("d", "cayley", "S", 0.20),
        ]
    )
    ranked = rank_models(frame)
    assert list(ranked["method"]) == ["bcop", "cayley"]
    assert list(ranked["rank"]) == [1, 2]
    table = counts(frame, (1, 3))
    assert table["bcop"] == (1, 1, 3) and table["cayley"] == (0, 1, 1)
    assert table["lot"] == table["cpl"] == table["soc"] == (0, 0, 0)  # listed, never counted


def test_budgets_are_ranked_apart() -> None:
    frame = pd.concat(
        [
            models([("d", "a", "S", 0.5), ("d", "b", "S", 0.4)], budget="2h"),
            models([("d", "a", "S", 0.3), ("d", "b", "S", 0.6)], budget="24h"),
        ]
    )
    table = rank_methods(frame, (1,))
    assert list(table["budget"]) == ["2h", "2h", "24h", "24h"]
    assert list(table["method"]) == ["a", "b", "b", "a"]
    assert list(table["top1"]) == [1, 0, 1, 0]


def test_other_metric() -> None:
    frame = models([("d", "a", "S", 0.5), ("d", "b", "S", 0.4)]).assign(accuracy=[0.6, 0.7])
    assert list(rank_models(frame, "accuracy")["method"]) == ["b", "a"]


def test_top_k_counts_orders_by_score() -> None:
    ranked = pd.DataFrame({"method": ["x", "y", "y"], "rank": [2, 1, 3]})
    table = top_k_counts(ranked, (1, 3), methods=["z"])
    assert list(table["method"]) == ["y", "x", "z"]
    assert list(table["score"]) == [2 * 1 + 2, 1, 0]


@pytest.mark.parametrize("top", [(1,), (1, 3, 10), (2, 5)])
def test_counts_never_decrease_with_k(top: tuple[int, ...]) -> None:
    frame = models([("d", m, s, v) for m, s, v in [("a", "S", 0.1), ("b", "M", 0.2)]])
    table = rank_methods(frame, top)
    columns = [f"top{k}" for k in sorted(top)]
    assert (table[columns].diff(axis=1).fillna(0) >= 0).all().all()
