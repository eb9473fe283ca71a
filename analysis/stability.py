"""How stable the ranking is: a bootstrap over each model's seeds.

With several final seeds per model (``--final-seeds``), one bootstrap draw resamples each
model's seed values with replacement and takes their mean; the draw is then ranked exactly as
the paper ranks (``analysis.ranking``: models by the metric within each dataset and budget, ties
sharing the better rank, top-k counts per method, score = weighted counts, methods placed by
score). Over ``samples`` draws this gives, per budget and method, the probability of each place
(``place_probabilities``) and of each top-k count (``count_probabilities``), per (dataset,
budget, size) the probability that one method's model beats another's (``beats``,
``neighbours``), and the 95% range of each radar rating (``rating_intervals``: there a draw
resamples each model's whole seed rows, so every criterion moves together). A model with one seed keeps its value in every draw (no spread is
known), so a ranking of single-seed models is "separated" only by construction; neighbours
also need Welch's t-test (``neighbours``), so there a single seed never separates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata, ttest_ind

from analysis.load import model_results
from analysis.ranking import DEFAULT_TOP, eligible, top_weights
from analysis.ratings import ratings

MODEL = ["dataset", "budget", "method", "size"]
SEPARATED = 0.95  # a place held in at least this share of the draws counts as separated


def seed_draws(trials: pd.DataFrame, metric: str, samples: int, seed: int) -> pd.DataFrame:
    """(models x samples) bootstrap means of each model's seed values; index: MODEL keys."""
    rng = np.random.default_rng(seed)
    rows, keys = [], []
    for key, group in eligible(trials, metric).groupby(MODEL):
        values = group[metric].to_numpy(float)
        picks = rng.integers(0, len(values), size=(samples, len(values)))
        rows.append(values[picks].mean(axis=1))
        keys.append(key)
    index = pd.MultiIndex.from_tuples(keys, names=MODEL)
    return pd.DataFrame(np.array(rows).reshape(len(keys), samples), index=index)


def topk_draws(draws: pd.DataFrame, top: Sequence[int]) -> dict[str, dict[int, pd.DataFrame]]:
    """Per budget and k: (methods x samples) top-k counts of every draw (cumulative, summed
    over the budget's datasets, as ``analysis.ranking.top_k_counts``)."""
    counts: dict[str, dict[int, pd.DataFrame]] = {}
    for budget, rows in draws.groupby(level="budget"):
        methods = sorted(rows.index.get_level_values("method").unique())
        per_k = {k: pd.DataFrame(0, index=methods, columns=draws.columns) for k in top}
        for _, group in rows.groupby(level="dataset"):
            ranks = rankdata(-group.to_numpy(), method="min", axis=0)  # per draw, best = 1
            owners = group.index.get_level_values("method")
            for k in top:
                hits = pd.DataFrame(ranks <= k, index=owners).groupby(level=0).sum()
                per_k[k] = per_k[k].add(hits.reindex(methods, fill_value=0), fill_value=0)
        counts[str(budget)] = per_k
    return counts


def method_scores(draws: pd.DataFrame, top: Sequence[int]) -> dict[str, pd.DataFrame]:
    """Per budget: (methods x samples) ranking scores of every draw."""
    weights = top_weights(top)
    return {
        budget: sum(weights[k] * per_k[k] for k in weights)
        for budget, per_k in topk_draws(draws, sorted(weights)).items()
    }


def count_probabilities(
    trials: pd.DataFrame,
    metric: str = "cra_36",
    top: Sequence[int] = DEFAULT_TOP,
    samples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per budget, method and k: the probability of each top-k count (rows budget, method, k,
    count, p; counts that never occur are left out)."""
    rows = []
    for budget, per_k in topk_draws(seed_draws(trials, metric, samples, seed), top).items():
        for k, counts in per_k.items():
            for method, values in counts.iterrows():
                for count, p in values.value_counts(normalize=True).sort_index().items():
                    rows.append((budget, method, k, int(count), float(p)))
    return pd.DataFrame(rows, columns=["budget", "method", "k", "count", "p"])


def place_probabilities(
    trials: pd.DataFrame,
    metric: str = "cra_36",
    top: Sequence[int] = DEFAULT_TOP,
    samples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per budget and method: ``p_place<r>`` (the probability of place r by score), ``place``
    (the most likely one), ``p`` (its probability) and ``separated`` (p >= SEPARATED)."""
    parts = []
    for budget, scores in method_scores(seed_draws(trials, metric, samples, seed), top).items():
        places = rankdata(-scores.to_numpy(), method="min", axis=0)
        table = pd.DataFrame(index=pd.Index(scores.index, name="method"))
        for r in range(1, len(scores) + 1):
            table[f"p_place{r}"] = (places == r).mean(axis=1)
        probabilities = table.to_numpy()
        table["place"] = probabilities.argmax(axis=1) + 1
        table["p"] = probabilities.max(axis=1)
        table["separated"] = table["p"] >= SEPARATED
        parts.append(table.reset_index().assign(budget=budget).sort_values("place"))
    if not parts:
        return pd.DataFrame(columns=["budget", "method", "place", "p", "separated"])
    return pd.concat(parts, ignore_index=True)


def beats(
    trials: pd.DataFrame, metric: str = "cra_36", samples: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per (dataset, budget, size) and ordered pair of methods: the probability that A's model
    has the higher metric than B's over the bootstrap draws (ties count half)."""
    draws = seed_draws(trials, metric, samples, seed)
    rows = []
    for (dataset, budget, size), group in draws.groupby(level=["dataset", "budget", "size"]):
        methods = group.index.get_level_values("method")
        values = group.to_numpy()
        for i, a in enumerate(methods):
            for j, b in enumerate(methods):
                if i != j:
                    p = (values[i] > values[j]).mean() + 0.5 * (values[i] == values[j]).mean()
                    rows.append((dataset, budget, size, a, b, float(p)))
    return pd.DataFrame(rows, columns=["dataset", "budget", "size", "method", "other", "p_beats"])


def neighbours(
    trials: pd.DataFrame, metric: str = "cra_36", samples: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per (dataset, budget, size): each method against the next one down by mean ``metric``,
    with the probability that it beats it (``beats``), Welch's two-sided t-test p-value of the
    two means (``welch_p``) and whether the pair is separated: p_beats >= SEPARATED *and*
    welch_p < 1 - SEPARATED. The bootstrap alone is optimistic with few seeds (with 3 seeds a
    model whose one nonzero seed lifts its mean beats a constant one in 1 - 1/27 = 96% of the
    draws); the t-test agrees with the 95% intervals ``lipsweep rank`` prints."""
    table = beats(trials, metric, samples, seed)
    kept = eligible(trials, metric)
    means = kept.groupby(MODEL)[metric].mean()
    values = kept.groupby(MODEL)[metric].apply(lambda v: v.to_numpy(float))
    rows = []
    for (dataset, budget, size), group in table.groupby(["dataset", "budget", "size"]):
        order = means.loc[dataset, budget].xs(size, level="size").sort_values(ascending=False)
        chance = group.set_index(["method", "other"])["p_beats"]
        for better, other in zip(order.index[:-1], order.index[1:], strict=True):
            p = float(chance[(better, other)])
            welch = welch_p(values[(dataset, budget, better, size)],
                            values[(dataset, budget, other, size)])  # fmt: skip
            separated = p >= SEPARATED and welch < 1 - SEPARATED
            rows.append((dataset, budget, size, better, other, p, welch, separated))
    columns = ["dataset", "budget", "size", "method", "other", "p_beats", "welch_p", "separated"]
    return pd.DataFrame(rows, columns=columns)


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test that two seed samples have equal means: 1 when either
    has a single seed (no spread is known), 0 or 1 when both have none (equal means or not)."""
    if len(a) < 2 or len(b) < 2:
        return 1.0
    if a.var() == 0 and b.var() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def rating_intervals(
    trials: pd.DataFrame, metric: str = "cra_36", samples: int = 200, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(low, high): methods x criteria, the 2.5% and 97.5% quantiles of each radar rating
    (``analysis.ratings``) over bootstrap draws of each model's seeds."""
    rng = np.random.default_rng(seed)
    done = eligible(trials, metric)
    draws = []
    for _ in range(samples):
        picked = done.groupby(MODEL, group_keys=False).sample(
            frac=1.0, replace=True, random_state=rng
        )
        draws.append(ratings(model_results(picked, metric), metric))
    stacked = pd.concat(draws, keys=range(samples), names=["draw"])
    by_method = stacked.groupby(level="method")
    return by_method.quantile(0.025), by_method.quantile(0.975)
