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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from lipsweep import atomic
from lipsweep.names import AttemptStatus, Cell
from lipsweep.results.schema import ATTEMPT_SCHEMA, HISTORY_SCHEMA, PARTITIONS


def partition_dir(root: Path, table: str, row: Mapping[str, Any]) -> Path:
    """<root>/results/<table>/sweep=<s>/dataset=<d>/method=<m>."""
    folder = root / "results" / table
    for key in PARTITIONS:
        folder = folder / f"{key}={row[key]}"
    return folder


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` through a temporary name in the same folder, then rename.
    Serialised in memory first, so a full disk is the atomic writer's ``OSError`` (ENOSPC)
    naming ``path``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic.write_bytes_atomic(path, sink.getvalue().to_pybytes())


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


def damaged_files(folder: Path) -> list[Path]:
    """Files under a results folder that are not readable Parquet files (a truncated write of
    another tool, a stray file): readers skip them, ``lipsweep status`` names them."""
    return split_readable(folder)[1]


def split_readable(folder: Path) -> tuple[list[Path], list[Path]]:
    """(readable Parquet files, everything else) under ``folder``; hidden temporaries of a
    write in progress are neither."""
    good, bad = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue
        try:
            pq.read_metadata(path)
        except (pa.ArrowInvalid, OSError):
            bad.append(path)
        else:
            (good if path.suffix == ".parquet" else bad).append(path)
    return good, bad


def read_partitioned(
    folder: Path, schema: pa.Schema, partitions: Sequence[str] = PARTITIONS
) -> pd.DataFrame:
    """Every readable file of a hive-partitioned dataset under ``folder`` as one frame, the
    partition columns included (strings); an empty frame of that schema when there is none.
    Damaged or foreign files are skipped (``damaged_files`` lists them)."""
    full = pa.schema([*schema, *[(key, pa.string()) for key in partitions]])
    good = split_readable(folder)[0] if folder.is_dir() else []
    if not good:
        return full.empty_table().to_pandas()
    partitioning = ds.partitioning(
        pa.schema([(key, pa.string()) for key in partitions]), flavor="hive"
    )
    dataset = ds.dataset(
        [str(p) for p in good], format="parquet", partitioning=partitioning,
        partition_base_dir=str(folder), schema=full,
    )  # fmt: skip
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
    if attempts.empty:
        return attempts
    last = attempts.sort_values("attempt").drop_duplicates("trial_id", keep="last")
    final = (AttemptStatus.COMPLETED, AttemptStatus.FAILED, AttemptStatus.OOM)
    over = last["status"].isin([str(s) for s in final]) | (
        (last["status"] == AttemptStatus.NAN) & (last["attempt"] >= max_retries)
    )
    return last[over]


def cell_attempts(attempts: pd.DataFrame, cell: Cell, stage: str | None = None) -> pd.DataFrame:
    """The rows of one cell (and one stage, if given)."""
    if attempts.empty:
        return attempts
    mask = (
        (attempts["dataset"] == cell.dataset)
        & (attempts["size"] == cell.size)
        & (attempts["method"] == cell.method)
    )
    if stage is not None:
        mask &= attempts["stage"] == stage
    return attempts[mask]


def attempt_status(root: Path, row: Mapping[str, Any], attempt_id: str) -> str | None:
    """Status of an attempt already in the dataset (its partition given by ``row``), or None."""
    path = partition_dir(root, "attempts", row) / f"{attempt_id}.parquet"
    if not path.exists():
        return None
    return str(pd.read_parquet(path, columns=["status"])["status"].iloc[0])
