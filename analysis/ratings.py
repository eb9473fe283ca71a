"""The six 1-5 ratings per method of the paper's radar plot (Figure 1).

The paper does not say how its ratings were made. Here each method first gets one raw value
per criterion, then the methods are rated by rank on that value:

- robust accuracy, accuracy: in every (dataset, budget) cell, the method's best size (the
  highest CRA at the radius / clean accuracy); the raw value is the mean over the cells.
- training time (seconds_per_epoch), inference time (1 / inference_throughput), training
  memory (train_peak_bytes), inference memory (inference_peak_bytes): each model's cost is
  divided by the median cost of all methods at the same (dataset, size), so that sizes and
  datasets weigh alike and a missing model (LOT-L) does not bias a method; the raw value is
  the geometric mean of these ratios over the method's models. Lower is better.

Rating: with n methods that have a value, the best gets 5 and the worst 1, the rest linearly
by rank in between, rounded to whole points: rating = round(1 + 4 (n - rank) / (n - 1)).
Ties share their average rank; a single method gets 5; no value gives NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.ranking import eligible

ACCURACY_CRITERIA = {"robust accuracy": None, "accuracy": "accuracy"}
COST_CRITERIA = {
    "training time": "seconds_per_epoch",
    "inference time": "inference_throughput",  # taken as 1 / throughput
    "training memory": "train_peak_bytes",
    "inference memory": "inference_peak_bytes",
}
CRITERIA = [*ACCURACY_CRITERIA, *COST_CRITERIA]


def best_size_value(models: pd.DataFrame, metric: str) -> pd.Series:
    """Per method: mean over (dataset, budget) of the best value of ``metric`` over sizes."""
    done = eligible(models, metric) if metric in models else models.iloc[0:0]
    if done.empty:
        return pd.Series(dtype=float)
    keys = [k for k in ("dataset", "budget") if k in done]
    best = done.groupby([*keys, "method"])[metric].max()
    return best.groupby(level="method").mean()


def relative_cost(models: pd.DataFrame, column: str) -> pd.Series:
    """Per method: geometric mean of cost / (median cost at the same dataset and size)."""
    if column not in models:
        return pd.Series(dtype=float)
    cost = models[column].astype(float)
    if column.endswith("throughput"):
        cost = 1.0 / cost
    frame = models.assign(_cost=cost)
    frame = frame[np.isfinite(frame["_cost"]) & (frame["_cost"] > 0)]
    if frame.empty:
        return pd.Series(dtype=float)
    keys = [k for k in ("dataset", "size") if k in frame]
    per_method = frame.groupby([*keys, "method"])["_cost"].median()
    ratio = per_method / per_method.groupby(level=keys).transform("median")
    return np.exp(np.log(ratio).groupby(level="method").mean())


def rank_scores(values: pd.Series, higher_is_better: bool) -> pd.Series:
    """1-5 ratings by rank (see the module docstring)."""
    values = values.dropna()
    if values.empty:
        return values
    ranks = values.rank(method="average", ascending=not higher_is_better)
    n = len(values)
    if n == 1:
        return pd.Series(5.0, index=values.index)
    return (1.0 + 4.0 * (n - ranks) / (n - 1)).round()


def ratings(models: pd.DataFrame, metric: str = "cra_36") -> pd.DataFrame:
    """Methods x the six criteria, 1-5 (NaN where a criterion has no data for a method)."""
    raw = {
        "robust accuracy": (best_size_value(models, metric), True),
        "accuracy": (best_size_value(models, "accuracy"), True),
    }
    for name, column in COST_CRITERIA.items():
        raw[name] = (relative_cost(models, column), False)
    methods = sorted(models["method"].unique())
    table = pd.DataFrame(index=pd.Index(methods, name="method"), columns=CRITERIA, dtype=float)
    for name, (values, higher) in raw.items():
        table[name] = rank_scores(values, higher).reindex(methods)
    return table
