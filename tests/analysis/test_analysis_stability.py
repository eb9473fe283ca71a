"""The bootstrap over seeds: known answers on hand-made rows, reproducible with a seed."""

import pandas as pd
import pytest
from scipy.stats import ttest_ind

from analysis.load import model_results
from analysis.ranking import rank_methods
from analysis.ratings import ratings
from analysis.stability import (
    SEPARATED,
    beats,
    count_probabilities,
    neighbours,
    place_probabilities,
    rating_intervals,
    seed_draws,
)


def rows(values: dict[tuple[str, str], list[float]], dataset: str = "d") -> pd.DataFrame:
    """One row per seed: {(method, size): [metric per seed]}."""
    return pd.DataFrame(
        [
            {"dataset": dataset, "budget": "1h", "method": m, "size": s, "cra_36": v,
             "status": "completed"}
            for (m, s), seeds in values.items() for v in seeds
        ]
    )  # fmt: skip


def test_single_seeds_give_the_ranking_itself_with_certainty() -> None:
    trials = rows({("a", "XS"): [0.7], ("b", "XS"): [0.6], ("c", "XS"): [0.5], ("d", "XS"): [0.1],
                   ("a", "S"): [0.2], ("b", "S"): [0.65]})  # fmt: skip
    table = place_probabilities(trials, top=(1, 2), samples=50).set_index("method")
    assert (table["p"] == 1.0).all() and table["separated"].all()
    # Models of all sizes ranked together: a-XS 0.7, b-S 0.65, b-XS, c-XS, a-S, d-XS. Scores
    # (weights 2, 1): a = 2 + 1 (top-1 and top-2), b = 1 (top-2), c = d = 0.
    assert table["place"].to_dict() == {"a": 1, "b": 2, "c": 3, "d": 3}
    scores = rank_methods(trials, top=(1, 2)).set_index("method")["score"]
    assert scores.to_dict() == {"a": 3, "b": 1, "c": 0, "d": 0}


def test_overlapping_seeds_are_not_separated_and_pairs_are_symmetric() -> None:
    same = [0.50, 0.52, 0.54, 0.56]
    trials = rows({("a", "XS"): same, ("b", "XS"): same, ("c", "XS"): [0.1, 0.11, 0.12]})
    pairs = beats(trials, samples=2000, seed=1).set_index(["method", "other"])["p_beats"]
    assert pairs[("a", "b")] + pairs[("b", "a")] == pytest.approx(1.0)
    assert pairs[("a", "b")] == pytest.approx(0.5, abs=0.05)
    assert pairs[("a", "c")] == 1.0 and pairs[("c", "a")] == 0.0
    table = place_probabilities(trials, top=(1,), samples=2000, seed=1).set_index("method")
    first = table["p_place1"]
    assert first["a"] == pytest.approx(first["b"], abs=0.05)
    assert first["a"] + first["b"] >= 1  # a tie places both first
    assert first["a"] < SEPARATED and not table.loc[["a", "b"], "separated"].any()
    assert table.loc["c", "p_place1"] == 0.0  # never first (it ties the loser of a and b)


def test_draws_are_means_of_resampled_seeds_and_reproducible() -> None:
    trials = rows({("a", "XS"): [0.0, 1.0], ("b", "XS"): [0.4]})
    draws = seed_draws(trials, "cra_36", samples=4000, seed=7)
    a = draws.loc[("d", "1h", "a", "XS")]
    assert set(a.round(6)) <= {0.0, 0.5, 1.0}
    assert (a == 0.5).mean() == pytest.approx(0.5, abs=0.03)  # 2 of 4 ordered picks
    assert (draws.loc[("d", "1h", "b", "XS")] == 0.4).all()
    again = seed_draws(trials, "cra_36", samples=4000, seed=7)
    pd.testing.assert_frame_equal(draws, again)
    assert not seed_draws(trials, "cra_36", samples=4000, seed=8).equals(draws)


def test_top_k_count_probabilities() -> None:
    """a and b have identical seeds: each is top-1 with probability ~1/2 (plus the ties, where
    both are); c never is. Every method's count distribution sums to 1."""
    same = [0.50, 0.52, 0.54, 0.56]
    trials = rows({("a", "XS"): same, ("b", "XS"): same, ("c", "XS"): [0.1, 0.11]})
    table = count_probabilities(trials, top=(1, 3), samples=2000, seed=2)
    totals = table.groupby(["method", "k"])["p"].sum()
    assert totals.to_numpy() == pytest.approx(1.0)
    first = table[table["k"] == 1].set_index(["method", "count"])["p"]
    assert first[("a", 1)] == pytest.approx(first[("b", 1)], abs=0.05)
    assert first[("c", 0)] == 1.0
    three = table[table["k"] == 3].set_index(["method", "count"])["p"]
    assert three[("a", 1)] == three[("b", 1)] == three[("c", 1)] == 1.0  # 3 models: all in


def test_neighbours_pair_each_method_with_the_next_one_down() -> None:
    """a and b overlap (not separated), b is always above c (separated); each cell apart."""
    trials = rows({("a", "XS"): [0.50, 0.58], ("b", "XS"): [0.52, 0.54], ("c", "XS"): [0.1, 0.12],
                   ("c", "S"): [0.3, 0.31], ("a", "S"): [0.2]})  # fmt: skip
    table = neighbours(trials, samples=2000, seed=3)
    xs = table[table["size"] == "XS"].set_index(["method", "other"])
    assert list(xs.index) == [("a", "b"), ("b", "c")]  # by mean: 0.54, 0.53, 0.11
    assert not xs.loc[("a", "b"), "separated"] and 0.2 < xs.loc[("a", "b"), "p_beats"] < 0.8
    assert xs.loc[("b", "c"), "p_beats"] == 1.0 and xs.loc[("b", "c"), "separated"]
    small = table[table["size"] == "S"]
    assert small[["method", "other", "p_beats"]].values.tolist() == [["c", "a", 1.0]]
    assert not small["separated"].any()  # a single seed of a: no spread known, never separated
    # Welch's t for b [0.52, 0.54] against c [0.10, 0.12]: t = 0.42 / 0.01, 2 df.
    assert xs.loc[("b", "c"), "welch_p"] == pytest.approx(
        ttest_ind([0.52, 0.54], [0.1, 0.12]).pvalue
    )


def test_a_bootstrap_over_three_seeds_alone_does_not_separate() -> None:
    """One nonzero seed of three beats a constant model in 1 - 1/27 of the draws (>= 95%), but
    Welch's t-test (p ~ 0.23) says the means are not told apart: not separated."""
    trials = rows({("a", "XS"): [0.0, 0.004, 0.008], ("b", "XS"): [0.0, 0.0, 0.0]})
    (pair,) = neighbours(trials, samples=4000, seed=0).itertuples()
    assert pair.p_beats >= SEPARATED and pair.welch_p == pytest.approx(0.2254, abs=1e-3)
    assert not pair.separated
    far = rows({("a", "XS"): [0.5, 0.5], ("b", "XS"): [0.1, 0.1]})  # no spread, different
    (pair,) = neighbours(far, samples=200, seed=0).itertuples()
    assert pair.welch_p == 0.0 and pair.separated


def test_rating_intervals_are_points_for_single_seeds_and_bands_for_overlapping_ones() -> None:
    frame = rows({("a", "XS"): [0.9], ("b", "XS"): [0.5], ("c", "XS"): [0.1]})
    frame["accuracy"] = frame["cra_36"] + 0.05
    low, high = rating_intervals(frame, samples=20, seed=0)
    expected = ratings(model_results(frame))
    pd.testing.assert_frame_equal(low, expected, check_names=False)
    pd.testing.assert_frame_equal(high, expected, check_names=False)
    spread = rows({("a", "XS"): [0.2, 0.8], ("b", "XS"): [0.5, 0.5], ("c", "XS"): [0.1, 0.1]})
    spread["accuracy"] = 0.9
    low, high = rating_intervals(spread, samples=400, seed=0)
    # a's mean draw is 0.2, 0.5 or 0.8: below, tied with or above b; c is always last.
    assert low.loc["a", "robust accuracy"] < high.loc["a", "robust accuracy"]
    assert low.loc["c", "robust accuracy"] == high.loc["c", "robust accuracy"] == 1.0
    assert (low.loc[:, "accuracy"] == high.loc[:, "accuracy"]).all()  # all tied, every draw
