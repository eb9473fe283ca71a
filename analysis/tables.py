"""The paper's Table 2 layout: accuracy and CRA per method x size, one block per dataset.

Tables hold percent (the metrics times 100); a missing or failed model is NaN, which the
printed tables show as "-" like the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from rich.table import Table

from analysis.load import dataset_name, method_name, size_order
from analysis.ranking import top_weights

COLUMN_LABELS = {"accuracy": "Acc", "cra_36": "CRA"}


def table2(
    models: pd.DataFrame,
    budget: str | None = "24h",
    metrics: Sequence[str] = ("accuracy", "cra_36"),
) -> pd.DataFrame:
    """Percent values indexed by (dataset, method), columns (metric, size).

    ``models`` has one row per model (``load.model_results`` or ``paper.paper_results``);
    ``budget=None`` takes every row, so it must then hold a single budget."""
    rows = models if budget is None else models[models["budget"] == budget]
    if rows.empty:
        return pd.DataFrame()
    done = rows[rows["status"].eq("completed")] if "status" in rows else rows
    long = done.melt(["dataset", "method", "size"], list(metrics), "metric").dropna()
    long["value"] = 100.0 * long["value"].astype(float)
    wide = long.pivot_table(
        index=["dataset", "method"], columns=["metric", "size"], values="value", aggfunc="mean"
    )
    full = pd.MultiIndex.from_product([rows["dataset"].unique(), rows["method"].unique()])
    sizes = size_order(rows["size"])
    columns = pd.MultiIndex.from_product([list(metrics), sizes], names=["metric", "size"])
    wide = wide.reindex(index=full, columns=columns).sort_index(level=[0, 1])
    wide.index.names = ["dataset", "method"]
    return wide


def delta_table(sweep: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """sweep - paper, cell by cell, on the cells both tables have (percentage points)."""
    index = sweep.index.intersection(paper.index)
    columns = sweep.columns.intersection(paper.columns)
    if index.empty or columns.empty:
        return pd.DataFrame()
    return sweep.loc[index, columns] - paper.loc[index, columns]


def dataset_block(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One dataset's rows of a ``table2`` result, indexed by method."""
    return table.xs(dataset, level="dataset")


def rich_table2(table: pd.DataFrame, dataset: str, title: str, signed: bool = False) -> Table:
    """A rich table of one dataset's block, with the best CRA per method in bold."""
    block = dataset_block(table, dataset)
    out = Table(title=f"{title}: {dataset_name(dataset)}")
    out.add_column("Method")
    for metric, size in block.columns:
        out.add_column(f"{COLUMN_LABELS.get(metric, metric)} {size}", justify="right")
    for method, values in block.iterrows():
        best = _best_size(values, "cra_36") if not signed else None
        cells = [
            _cell(value, signed, bold=(metric == "cra_36" and size == best))
            for (metric, size), value in values.items()
        ]
        out.add_row(method_name(str(method)), *cells)
    return out


def _best_size(values: pd.Series, metric: str) -> str | None:
    if metric not in values.index.get_level_values(0):
        return None
    row = values[metric].dropna()
    return None if row.empty else str(row.idxmax())


def _cell(value: float, signed: bool, bold: bool) -> str:
    if pd.isna(value):
        return "-"
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return f"[bold]{text}[/bold]" if bold else text


def rich_ranking(ranking: pd.DataFrame, title: str) -> Table:
    """A rich table of one budget's ``ranking.rank_methods`` rows, its caption saying what
    the top-k and score columns count."""
    out = Table(title=title)
    columns = [c for c in ranking.columns if c != "budget"]
    out.caption = score_caption(sorted(int(c[3:]) for c in columns if c.startswith("top")))
    for column in columns:
        out.add_column(column.capitalize() if column == "method" else column, justify="right")
    for _, row in ranking.iterrows():
        out.add_row(*[method_name(str(row[c])) if c == "method" else str(row[c]) for c in columns])
    return out


def rich_top_models(ranked: pd.DataFrame, metric: str, limit: int, title: str) -> Table:
    """The best ``limit`` ranks of one group of ``ranking.rank_models`` output."""
    out = Table(title=title)
    for column in ("Rank", "Method", "Size", "Acc", COLUMN_LABELS.get(metric, metric)):
        out.add_column(column, justify="right")
    for _, row in ranked[ranked["rank"] <= limit].iterrows():
        accuracy = _cell(100.0 * row["accuracy"], False, False) if "accuracy" in row else "-"
        value = _cell(100.0 * row[metric], False, False)
        interval = row.get(f"{metric}_ci95")
        if interval is not None and pd.notna(interval):  # several seeds: mean +- 95% interval
            value = f"{value} ± {100.0 * interval:.1f}"
        out.add_row(
            str(row["rank"]), method_name(str(row["method"])), str(row["size"]), accuracy, value
        )
    return out


def score_caption(ks: Sequence[int]) -> str:
    """What a method ranking's columns count, e.g. for k = 1, 3, 10: "topk: models (one per
    size) in the k best of their dataset, cumulative; score = 3 top1 + 2 top3 + top10"."""
    weights = top_weights(ks)
    terms = " + ".join(f"{w} top{k}" if w > 1 else f"top{k}" for k, w in weights.items())
    return (
        f"topk: models (one per size) in the k best of their dataset, cumulative; score = {terms}"
    )
