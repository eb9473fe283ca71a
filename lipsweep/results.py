"""The results dataset: one Parquet file per attempt, hive-partitioned by sweep, dataset, method.

Layout under a sweep's output folder::

    results/attempts/sweep=<id>/dataset=<d>/method=<m>/<attempt_id>.parquet   one row
    results/history/sweep=<id>/dataset=<d>/method=<m>/<attempt_id>.parquet    one row per epoch

Each file is written to a temporary name that does not end in ``.parquet`` (DuckDB's glob
would pick it up) and renamed into place, so a reader sees a whole file or none. The partition
columns live in the path only, as hive partitioning expects; ``read_attempts`` adds them back.
Rewriting an attempt (a requeued job finishing it) replaces its file: ``attempt_id`` is the key.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

PARTITIONS = ("sweep", "dataset", "method")
METRICS = ("accuracy", "cra_36", "cra_72", "cra_108", "cra_255", "median_margin")

# The columns of one attempt (partition columns excluded: they are in the path).
ATTEMPT_SCHEMA = pa.schema(
    [
        ("attempt_id", pa.string()),  # <trial_id>-a<attempt>, unique in a sweep
        ("trial_id", pa.string()),  # <stage>-<dataset>-<size>-<method>-<budget>-t<index>
        ("stage", pa.string()),  # "search" or "final"
        ("size", pa.string()),
        ("budget", pa.string()),  # "2h", "24h", ...
        ("budget_s", pa.float64()),
        ("trial_index", pa.int64()),
        ("attempt", pa.int64()),  # 0 for the first try; a NaN run is retried with a new seed
        ("epochs_planned", pa.int64()),
        ("epochs_done", pa.int64()),
        ("resumed_from_epoch", pa.int64()),  # > 0 if the attempt resumed from a checkpoint
        ("lr", pa.float64()),
        ("weight_decay", pa.float64()),
        ("seed", pa.int64()),
        ("batch_size", pa.int64()),
        ("status", pa.string()),  # completed / nan / oom / failed / preempted
        ("error", pa.string()),
        ("eval_split", pa.string()),  # "val" in search, "test" in final
        *[(name, pa.float64()) for name in METRICS],
        ("lipschitz_bound", pa.float64()),  # upper bound of the trained model (final stage)
        ("seconds_per_epoch", pa.float64()),
        ("calibration", pa.string()),  # how epochs were planned: "measure" or "paper-a100"
        ("train_throughput", pa.float64()),  # examples / s
        ("inference_throughput", pa.float64()),
        ("train_peak_bytes", pa.int64()),
        ("inference_peak_bytes", pa.int64()),
        ("device_seconds", pa.float64()),  # wall time the attempt held its devices
        ("gpus", pa.float64()),  # devices per attempt (0 on CPU)
        ("gpu_hours", pa.float64()),  # device_seconds * max(gpus, 1) / 3600: the ledger entry
        ("device", pa.string()),
        ("versions", pa.string()),  # "python=3.11.7 torch=2.13.0 ..."
        ("git_commit", pa.string()),
        ("host", pa.string()),
        ("slurm_job_id", pa.string()),
        ("started_at", pa.timestamp("s", tz="UTC")),
        ("ended_at", pa.timestamp("s", tz="UTC")),
    ]
)
HISTORY_SCHEMA = pa.schema(
    [
        ("attempt_id", pa.string()),
        ("trial_id", pa.string()),
        ("stage", pa.string()),
        ("size", pa.string()),
        ("epoch", pa.int64()),
        ("run", pa.int64()),  # 0: the attempt's first run; n: its n-th resume from a checkpoint
        ("lr", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_accuracy", pa.float64()),
        ("train_seconds", pa.float64()),
        ("eval_seconds", pa.float64()),  # null in epochs without evaluation, as the metrics
        ("train_peak_bytes", pa.int64()),  # measured in the first epoch of each run
        ("inference_peak_bytes", pa.int64()),  # measured in the first evaluation of each run
        *[(name, pa.float64()) for name in METRICS],
        ("loss", pa.float64()),  # offset cross-entropy on the evaluation split
        ("examples", pa.float64()),  # size of the evaluation split
    ]
)


def partition_dir(root: Path, table: str, row: Mapping[str, Any]) -> Path:
    """<root>/results/<table>/sweep=<s>/dataset=<d>/method=<m>."""
    folder = root / "results" / table
    for key in PARTITIONS:
        folder = folder / f"{key}={row[key]}"
    return folder


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` through a temporary name in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def to_table(rows: list[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) as a table of ``schema``: missing columns are null, extra keys an error."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names - set(PARTITIONS)
        if extra:
            raise ValueError(f"unknown result columns: {', '.join(sorted(extra))}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def write_attempt(root: Path, row: Mapping[str, Any], history: list[Mapping[str, Any]]) -> Path:
    """Write one attempt and its epoch history; returns the attempt file's path.

    The history goes first: a reader that sees the attempt also sees its history."""
    name = f"{row['attempt_id']}.parquet"
    keyed = [
        {**epoch, **{k: row[k] for k in ("attempt_id", "trial_id", "stage", "size")}}
        for epoch in history
    ]
    write_atomic(to_table(keyed, HISTORY_SCHEMA), partition_dir(root, "history", row) / name)
    path = partition_dir(root, "attempts", row) / name
    write_atomic(to_table([row], ATTEMPT_SCHEMA), path)
    return path


def read_partitioned(
    folder: Path, schema: pa.Schema, partitions: Sequence[str] = PARTITIONS
) -> pd.DataFrame:
    """Every file of a hive-partitioned dataset under ``folder`` as one frame, the partition
    columns included (strings); an empty frame of that schema when the folder is absent."""
    full = pa.schema([*schema, *[(key, pa.string()) for key in partitions]])
    if not folder.is_dir():
        return full.empty_table().to_pandas()
    partitioning = ds.partitioning(
        pa.schema([(key, pa.string()) for key in partitions]), flavor="hive"
    )
    dataset = ds.dataset(folder, format="parquet", partitioning=partitioning, schema=full)
    return dataset.to_table().to_pandas()


def write_partitioned(
    frame: pd.DataFrame, folder: Path, schema: pa.Schema, partitions: Sequence[str], name: str
) -> list[Path]:
    """One file ``<folder>/<key>=<value>/.../<name>.parquet`` per partition group of
    ``frame``, each written atomically; NaN becomes null (an integer column can hold it)."""
    paths = []
    for values, group in frame.groupby(list(partitions), sort=False):
        values = values if isinstance(values, tuple) else (values,)
        path = folder.joinpath(*[f"{k}={v}" for k, v in zip(partitions, values, strict=True)])
        rows = group.to_dict("records")
        columns = {column: [_null_nan(row.get(column)) for row in rows] for column in schema.names}
        write_atomic(pa.table(columns, schema=schema), path / f"{name}.parquet")
        paths.append(path / f"{name}.parquet")
    return paths


def _null_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def read_attempts(*roots: Path) -> pd.DataFrame:
    """Every attempt under one or more sweep folders, one row per attempt_id (the newest
    file wins if a requeued job wrote one twice), partition columns included."""
    frames = [
        read_partitioned(Path(root) / "results" / "attempts", ATTEMPT_SCHEMA) for root in roots
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        return frame
    frame = frame.sort_values("ended_at").drop_duplicates(["sweep", "attempt_id"], keep="last")
    return frame.reset_index(drop=True)


def read_history(*roots: Path) -> pd.DataFrame:
    """Every epoch row under one or more sweep folders."""
    frames = [
        read_partitioned(Path(root) / "results" / "history", HISTORY_SCHEMA) for root in roots
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        return frame
    return frame.drop_duplicates(["sweep", "attempt_id", "epoch"], keep="last").reset_index(
        drop=True
    )


def ended_for_good(attempts: pd.DataFrame, max_retries: int) -> pd.DataFrame:
    """The last attempt of each trial that will not run again: completed, failed, out of
    memory, or NaN with every retry used."""
    last = attempts.sort_values("attempt").drop_duplicates("trial_id", keep="last")
    over = last["status"].isin(("completed", "failed", "oom")) | (
        (last["status"] == "nan") & (last["attempt"] >= max_retries)
    )
    return last[over]
