"""``lipsweep rank``: print the method ranking and Table 2 of a sweep (or of the paper) and
write the figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from analysis.figures import (
    cra_gpu_hours_figure,
    pareto_figure,
    radar_figure,
    speed_memory_figures,
)
from analysis.load import (
    MODEL_KEYS,
    gpu_hours_spent,
    load_attempts,
    load_trials,
    method_name,
    model_results,
)
from analysis.paper import paper_results, with_paper_speed
from analysis.ranking import metric_for_radius, rank_methods, rank_models
from analysis.ratings import ratings
from analysis.stability import (
    count_probabilities,
    neighbours,
    place_probabilities,
    rating_intervals,
)
from analysis.tables import delta_table, rich_ranking, rich_table2, rich_top_models, table2
from lipsweep.budget import budget_seconds


def sweep_models(dirs: Sequence[Path], metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(final-stage model rows, all attempts) of the sweep folders."""
    attempts = load_attempts(dirs)
    models = model_results(load_trials(dirs, stage="final"), metric)
    if not models.empty:
        models = models.merge(gpu_hours_spent(attempts), on=MODEL_KEYS, how="left")
    return models, attempts


def print_ranking(
    models: pd.DataFrame, top: Sequence[int], metric: str, source: str, console: Console
) -> None:
    """The method ranking per budget, then each group's best models (budgets by duration)."""
    ranking = rank_methods(models, top, metric)
    ranked = rank_models(models, metric)
    for (dataset, budget), rows in ranked.groupby(["dataset", "budget"], sort=False):
        values = rows[metric]
        if len(values) > 1 and values.nunique() == 1:
            what = "0" if values.iloc[0] == 0 else f"{values.iloc[0]:.4f}"
            console.print(
                f"[yellow]{dataset}, {budget}: every method has {metric} = {what}: "
                "the ranking below does not separate them[/]"
            )
    for budget, rows in ranking.groupby("budget", sort=False):
        console.print(rich_ranking(rows, f"{source}: ranking by {metric}, budget {budget}"))
    for (dataset, budget), rows in ranked.groupby(["dataset", "budget"], sort=False):
        title = f"{source}: best models, {dataset}, {budget}"
        console.print(rich_top_models(rows, metric, max(top), title))


def print_stability(
    trials: pd.DataFrame, models: pd.DataFrame, top: Sequence[int], metric: str, console: Console
) -> None:
    """With several seeds per model: each method's most likely place by a bootstrap over the
    seeds, its probability, and whether it is separated (held in >= 95% of the draws)."""
    if "seeds" not in models or models["seeds"].max() < 2:
        return
    table = place_probabilities(trials, metric, top)
    for budget, rows in table.groupby("budget", sort=False):
        out = Table(title=f"ranking stability, budget {budget} (bootstrap over seeds)")
        for column in ("Method", "place", "P(place)", "separated"):
            out.add_column(column, justify="right")
        for row in rows.itertuples():
            mark = "yes" if row.separated else "[yellow]no[/]"
            out.add_row(method_name(str(row.method)), str(row.place), f"{row.p:.0%}", mark)
        console.print(out)
    print_counts(count_probabilities(trials, metric, top), console)
    pairs = neighbours(trials, metric)
    out = Table(
        title="neighbours in each cell: P(the better mean beats the next, over seeds), Welch's t",
        caption="separated: P >= 95% and Welch's p < 0.05",
    )
    for column in ("dataset", "budget", "size", "Method", "beats", "P", "Welch p", "separated"):
        out.add_column(column, justify="right")
    for row in pairs.itertuples():
        mark = "yes" if row.separated else "[yellow]no[/]"
        out.add_row(
            str(row.dataset), str(row.budget), str(row.size), method_name(str(row.method)),
            method_name(str(row.other)), f"{row.p_beats:.0%}", f"{row.welch_p:.2g}", mark,
        )  # fmt: skip
    console.print(out)


def print_counts(counts: pd.DataFrame, console: Console) -> None:
    """Per budget: each method's top-k counts over the bootstrap draws, as "count (P)"."""
    for budget, rows in counts.groupby("budget", sort=False):
        ks = sorted(rows["k"].unique())
        out = Table(title=f"top-k counts, budget {budget}: count (its probability over seeds)")
        for column in ("Method", *[f"top{k}" for k in ks]):
            out.add_column(column, justify="right")
        for method, mine in rows.groupby("method"):
            cells = [count_text(mine[mine["k"] == k]) for k in ks]
            out.add_row(method_name(str(method)), *cells)
        console.print(out)


def count_text(rows: pd.DataFrame) -> str:
    """ "2 (60%), 3 (40%)": each top-k count and its probability."""
    return ", ".join(f"{n} ({p:.0%})" for n, p in zip(rows["count"], rows["p"], strict=True))


def print_tables(table: pd.DataFrame, title: str, console: Console, signed: bool = False) -> None:
    for dataset in table.index.get_level_values("dataset").unique():
        console.print(rich_table2(table, dataset, title, signed=signed))


def write_figures(
    models: pd.DataFrame, metric: str, out: Path, trials: pd.DataFrame | None = None
) -> list[Path]:
    """Radar, speed / memory, CRA-vs-GPU-hours and Pareto figures of model rows into ``out``;
    with the per-seed ``trials`` of models that have several seeds, the radar's bands."""
    intervals = None
    if trials is not None and "seeds" in models and models["seeds"].max() >= 2:
        intervals = rating_intervals(trials, metric)
    written = radar_figure(ratings(models, metric), out, intervals=intervals)
    written += speed_memory_figures(models, out)
    written += cra_gpu_hours_figure(models, out, metric)
    written += pareto_figure(models, out, metric)
    return written


def _table_metrics(metric: str) -> tuple[str, ...]:
    return ("accuracy",) if metric == "accuracy" else ("accuracy", metric)


def run_rank(
    dirs: list[Path],
    top: list[int],
    radius: int,
    budget: str | None,
    paper: bool,
    out: Path | None,
    console: Console,
) -> int:
    """Rank the sweep(s) in ``dirs`` (or, with ``paper``, the paper's Tables 9-11), print the
    ranking and Table 2 per budget, the difference to the paper, and write the figures to
    ``out`` (default: <first dir>/analysis; none for the paper alone). Returns an exit code."""
    metric = metric_for_radius(radius)
    if paper:
        models, source = with_paper_speed(paper_results()), "paper"
        if metric not in models:
            console.print(f"[red]the paper's tables give only accuracy and cra_36, not {metric}")
            return 2
    else:
        models, _ = sweep_models(dirs, metric)
        source = ", ".join(d.name or str(d) for d in dirs)
    if budget is not None:
        models = models[models["budget"] == budget]
    if models.empty or metric not in models or models[metric].notna().sum() == 0:
        console.print(f"[red]error:[/] no completed final-stage results with {metric} in {source}")
        return 1
    print_ranking(models, top, metric, source, console)
    if not paper:
        print_stability(load_trials(dirs, stage="final"), models, top, metric, console)
    reference = paper_results()
    for label in sorted(models["budget"].unique(), key=budget_seconds):
        ours = table2(models, label, _table_metrics(metric))
        print_tables(ours, f"{source}, {label}", console)
        if not paper:
            theirs = table2(reference, label, _table_metrics(metric))
            delta = delta_table(ours, theirs) if not theirs.empty else pd.DataFrame()
            if not delta.empty:
                print_tables(delta, f"sweep - paper, {label}", console, signed=True)
    out = out if out is not None else (dirs[0] / "analysis" if dirs and not paper else None)
    if out is not None:
        trials = None if paper else load_trials(dirs, stage="final")
        written = write_figures(models, metric, out, trials)
        console.print(f"wrote {len(written)} figure files to {out}:")
        for path in written:
            if path.suffix == ".png":
                console.print(f"  {path} (and .svg)", highlight=False, soft_wrap=True)
    return 0
