"""The paper's published numbers (Tables 2, 8 and 9-11), shipped in ``analysis/data``."""

from __future__ import annotations

from importlib import resources

import pandas as pd

from analysis.load import MODEL_KEYS

TABLES_CSV = "paper_tables.csv"
SPEED_CSV = "paper_speed.csv"
CIFAR = ("cifar10", "cifar100")


def _read(name: str) -> pd.DataFrame:
    with resources.files("analysis").joinpath("data", name).open() as handle:
        return pd.read_csv(handle, comment="#", keep_default_na=False, na_values=[""])


def paper_results(budget: str | None = None) -> pd.DataFrame:
    """Tables 9-11 as model rows (the shape of ``load.model_results``), metrics as fractions.

    Table 2 is ``budget="24h"``. Diverged runs (CPL-S on CIFAR-100 at 10h and 24h) have
    status "nan" and NaN metrics; LOT-L has status "oom" and no numbers.
    """
    frame = _read(TABLES_CSV)
    frame[["accuracy", "cra_36"]] = frame[["accuracy", "cra_36"]] / 100.0
    frame.loc[frame["status"] != "completed", ["accuracy", "cra_36"]] = float("nan")
    frame["sweep"] = "paper"
    frame["stage"] = "final"
    if budget is not None:
        frame = frame[frame["budget"] == budget]
    return frame.reset_index(drop=True)


def paper_speed() -> pd.DataFrame:
    """Table 8 as rows (dataset, method, size, epochs_2h, seconds_per_epoch): the A100 time
    per epoch implied by the 2h epoch budgets; the CIFAR column serves both CIFAR datasets."""
    frame = _read(SPEED_CSV)
    parts = []
    for group, datasets in (("cifar", CIFAR), ("tiny-imagenet", ("tiny-imagenet",))):
        rows = frame[frame["datasets"] == group]
        parts += [rows.assign(dataset=d) for d in datasets]
    speed = pd.concat(parts, ignore_index=True).drop(columns=["datasets", "source"])
    return speed[["dataset", "method", "size", "epochs_2h", "seconds_per_epoch"]]


def with_paper_speed(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` (paper model rows) with Table 8's seconds_per_epoch joined on."""
    keys = [k for k in MODEL_KEYS if k != "budget"]
    return results.merge(paper_speed(), on=keys, how="left")
