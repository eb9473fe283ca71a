"""The paper's ranking of methods by how often their models reach the top-k (section 5.8).

Rule, as implemented and as checked against the paper's own counts (tests/analysis):

1. Within each group (one dataset at one budget), every model (method, size) with a completed
   run and a value of the metric is ranked by that metric, best first. Models without a value
   (LOT-L that does not fit, CPL-S on CIFAR-100 that diverged, failed, OOM or preempted runs)
   are left out, so they neither take a place nor push others down.
2. Ties share the better rank ("min", competition ranking: 1, 2, 2, 4). A tie across the
   border of a top-k therefore puts every tied model into it, and a top-k may hold more than k
   models.
3. For each method, top-k counts its models (every size counts separately) with rank <= k,
   summed over the groups. The counts are cumulative: a top-1 model also counts in the top-3
   and the top-10.
4. score = sum over k of weight(k) * top-k. With the default k = (1, 3, 10) the weights are
   (3, 2, 1): score = 3 top-1 + 2 top-3 + top-10. For other k's the largest k weighs 1, the
   next 2, and so on.

The paper ranks all 7 methods x 4 sizes on CIFAR-10, CIFAR-100 and Tiny ImageNet at 24h by
CRA at 36/255; ranking its Table 2 this way gives exactly its statements (SOC top-1 twice and
top-3 six times; CPL top-3 twice and top-10 nine times).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from lipsweep.budget import budget_seconds

GROUP = ["dataset", "budget"]
DEFAULT_TOP = (1, 3, 10)


def metric_for_radius(radius: int) -> str:
    """Result column of the CRA at ``radius``/255 (0 means clean accuracy)."""
    return "accuracy" if radius == 0 else f"cra_{radius}"


def top_weights(top: Sequence[int]) -> dict[int, int]:
    """Weight of each k: the largest k weighs 1, the next 2, ... ((1, 3, 10) -> 3, 2, 1)."""
    ks = sorted(set(top))
    return {k: len(ks) - i for i, k in enumerate(ks)}


def eligible(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows that take part: completed (when a status is given) with a finite metric."""
    keep = frame[metric].notna()
    if "status" in frame:
        keep &= frame["status"].eq("completed")
    return frame[keep]


def rank_models(
    frame: pd.DataFrame,
    metric: str = "cra_36",
    group: Sequence[str] = GROUP,
    decimals: int | None = None,
) -> pd.DataFrame:
    """Eligible models with a ``rank`` column (1 = best within each group; ties share the
    better rank), ordered by group (budgets by duration), then rank. ``decimals`` rounds the
    metric first (e.g. 3 for the paper's 0.1 %)."""
    models = eligible(frame, metric).copy()
    group = [g for g in group if g in models]
    values = models[metric].astype(float)
    if decimals is not None:
        values = values.round(decimals)
    models["_value"] = values
    by = models.groupby(group)["_value"] if group else models["_value"]
    models["rank"] = by.rank(method="min", ascending=False).astype(int)
    ordered = models.sort_values([*group, "rank", "method", "size"], key=by_duration)
    return ordered.drop(columns="_value").reset_index(drop=True)


def by_duration(column: pd.Series) -> pd.Series:
    """A sort key that orders budget labels by duration (2h < 10h < 24h), other columns as
    they are."""
    return column.map(budget_seconds) if column.name == "budget" else column


def top_k_counts(
    ranked: pd.DataFrame,
    top: Sequence[int] = DEFAULT_TOP,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per method: top<k> counts (cumulative, see the module docstring) and the score, best
    score first. ``methods`` lists the methods to show even with zero counts."""
    names = sorted(set(methods or []) | set(ranked["method"]))
    weights = top_weights(top)
    table = pd.DataFrame(index=pd.Index(names, name="method"))
    for k in weights:
        hits = ranked[ranked["rank"] <= k].groupby("method").size()
        table[f"top{k}"] = hits.reindex(names, fill_value=0).astype(int)
    table["score"] = sum(weights[k] * table[f"top{k}"] for k in weights)
    columns = ["score", *[f"top{k}" for k in sorted(weights)]]
    table = table.sort_values(columns, ascending=False, kind="stable")
    return table.reset_index()


def rank_methods(
    frame: pd.DataFrame,
    top: Sequence[int] = DEFAULT_TOP,
    metric: str = "cra_36",
    decimals: int | None = None,
) -> pd.DataFrame:
    """The method ranking per budget: columns budget, method, top<k>..., score.

    Counts add up over the datasets of one budget, never across budgets."""
    budgets = frame["budget"].dropna().unique() if "budget" in frame else [None]
    parts = []
    for budget in sorted(budgets, key=budget_seconds):
        rows = frame if budget is None else frame[frame["budget"] == budget]
        ranked = rank_models(rows, metric, decimals=decimals)
        counts = top_k_counts(ranked, top, methods=rows["method"].unique())
        parts.append(counts.assign(budget=budget))
    if not parts:
        return pd.DataFrame(columns=["budget", "method", "score"])
    result = pd.concat(parts, ignore_index=True)
    return result[["budget", *[c for c in result if c != "budget"]]]
