"""Sweep results as tables: one row per trial, then one row per model.

A *model* is one (dataset, budget, method, size) cell of the paper's tables. The sweep stores
one row per attempt (``lipsweep.results``); a trial may have several attempts (a NaN run is
retried with a new seed, a preempted one is requeued). Metrics stay fractions in [0, 1] here;
only the printed tables show percent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
from scipy.stats import t as t_dist

from lipsweep.budget import budget_seconds
from lipsweep.layers.registry import SPECS, display_name
from lipsweep.names import SIZES
from lipsweep.results import METRICS, read_attempts

METHOD_NAMES = {name: spec.display for name, spec in SPECS.items()}

MODEL_KEYS = ["dataset", "budget", "method", "size"]
DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "tiny-imagenet": "Tiny ImageNet",
    "digits": "digits",
}
SPEED_COLUMNS = [
    "seconds_per_epoch",
    "train_throughput",
    "inference_throughput",
    "train_peak_bytes",
    "inference_peak_bytes",
]
NO_BUDGET = "-"

Stage = Literal["search", "final"]


def method_name(method: str) -> str:
    """The paper's spelling of a method key ("cayley" -> "Cayley"), from the layer registry."""
    return display_name(method)


def dataset_name(dataset: str) -> str:
    """The paper's spelling of a dataset key ("tiny-imagenet" -> "Tiny ImageNet")."""
    return DATASET_NAMES.get(dataset, dataset)


def size_order(sizes: Iterable[str]) -> list[str]:
    """Sizes in the paper's order (XS, S, M, L), unknown ones after them, sorted."""
    present = set(sizes)
    return [s for s in SIZES if s in present] + sorted(present - set(SIZES))


def load_attempts(dirs: Sequence[Path]) -> pd.DataFrame:
    """Every attempt under the sweep folders, with a budget label on every row."""
    frame = read_attempts(*dirs)
    if frame.empty:
        return frame
    frame["budget"] = frame["budget"].fillna(NO_BUDGET)
    return frame


def last_attempts(attempts: pd.DataFrame) -> pd.DataFrame:
    """One row per (sweep, trial_id): its last completed attempt, or, if none completed,
    its last attempt (so a failed trial stays visible with its status)."""
    if attempts.empty:
        return attempts
    order = attempts.assign(_done=attempts["status"].eq("completed"))
    order = order.sort_values(["_done", "attempt", "ended_at"], na_position="first")
    last = order.drop_duplicates(["sweep", "trial_id"], keep="last")
    return last.drop(columns="_done").reset_index(drop=True)


def load_trials(dirs: Sequence[Path], stage: Stage | None = "final") -> pd.DataFrame:
    """One row per trial of ``stage`` (all stages if None) from one or several sweep folders."""
    attempts = load_attempts(dirs)
    if attempts.empty:
        return attempts
    if stage is not None:
        attempts = attempts[attempts["stage"] == stage]
    return last_attempts(attempts)


def ci95_half_width(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean of ``values`` (Student's t over
    seeds: t_{0.975, n-1} s / sqrt(n)); NaN for fewer than two values."""
    values = values.dropna()
    if len(values) < 2:
        return float("nan")
    return float(t_dist.ppf(0.975, len(values) - 1) * values.std(ddof=1) / len(values) ** 0.5)


def _model_row(group: pd.DataFrame, metric: str, select: str) -> pd.Series:
    done = group[group["status"].eq("completed") & group[metric].notna()]
    if done.empty:
        row = group.sort_values("attempt").iloc[-1].copy()
        row[list(METRICS)] = float("nan")
    elif select == "best":
        row = done.loc[done[metric].idxmax()].copy()
    else:
        row = done.iloc[-1].copy()
        numeric = [c for c in [*METRICS, *SPEED_COLUMNS] if c in done]
        row[numeric] = done[numeric].astype(float).mean()
        row["status"] = "completed"
        for name in numeric:
            row[f"{name}_ci95"] = ci95_half_width(done[name].astype(float))
    row["seeds"] = len(done)
    row["trials"] = len(group)
    row["gpu_hours"] = group["gpu_hours"].sum(min_count=1) if "gpu_hours" in group else None
    return row


def model_results(
    trials: pd.DataFrame, metric: str = "cra_36", select: Literal["mean", "best"] = "mean"
) -> pd.DataFrame:
    """One row per model (dataset, budget, method, size).

    Completed trials with a value of ``metric`` are combined: ``select="mean"`` averages their
    metrics and speed columns (final runs: several seeds or sweeps), ``"best"`` keeps the trial
    with the highest ``metric`` (search stage: the selected hyperparameters). A model with no
    such trial keeps its last trial's status and NaN metrics. ``gpu_hours`` sums all trials.
    """
    if trials.empty:
        return pd.DataFrame(columns=[*MODEL_KEYS, *METRICS, "status"])
    rows = [_model_row(group, metric, select) for _, group in trials.groupby(MODEL_KEYS)]
    frame = pd.DataFrame(rows).reset_index(drop=True)
    return frame.sort_values(MODEL_KEYS, key=_sort_key).reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "size":
        order = {s: i for i, s in enumerate(SIZES)}
        return column.map(lambda s: order.get(s, len(SIZES)))
    if column.name == "budget":
        return column.map(budget_seconds)
    return column


def gpu_hours_spent(attempts: pd.DataFrame) -> pd.DataFrame:
    """GPU-hours per model over every attempt of every stage (search, retries, final)."""
    if attempts.empty or "gpu_hours" not in attempts:
        return pd.DataFrame(columns=[*MODEL_KEYS, "gpu_hours_spent"])
    spent = attempts.groupby(MODEL_KEYS)["gpu_hours"].sum(min_count=1)
    return spent.rename("gpu_hours_spent").reset_index()
