"""The Parquet results dataset: atomic files, hive partitions, readers in three tools."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

from lipsweep.results import read_attempts, read_history, write_attempt


def attempt_row(attempt_id: str, method: str = "aol", cra: float = 0.5, **extra: object) -> dict:
    return {
        "sweep": "s1",
        "dataset": "cifar10",
        "method": method,
        "attempt_id": attempt_id,
        "trial_id": attempt_id.rsplit("-a", 1)[0],
        "stage": "search",
        "size": "XS",
        "budget": "2h",
        "budget_s": 7200.0,
        "trial_index": 0,
        "attempt": 0,
        "epochs_planned": 3,
        "epochs_done": 3,
        "lr": 0.01,
        "weight_decay": 1e-5,
        "seed": 1,
        "status": "completed",
        "error": "",
        "accuracy": 0.7,
        "cra_36": cra,
        "device_seconds": 12.0,
        "gpus": 0.0,
        "gpu_hours": 12.0 / 3600,
        "started_at": datetime(2026, 1, 1, tzinfo=UTC),
        "ended_at": datetime.now(UTC),
        **extra,
    }


HISTORY = [
    {"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5, "cra_36": None} for e in (1, 2, 3)
]


def test_write_then_read_with_pandas_pyarrow_and_duckdb(tmp_path: Path) -> None:
    write_attempt(tmp_path, attempt_row("search-cifar10-XS-aol-2h-t0-a0"), HISTORY)
    write_attempt(tmp_path, attempt_row("search-cifar10-XS-soc-2h-t0-a0", method="soc"), HISTORY)
    frame = read_attempts(tmp_path)
    assert sorted(frame["method"]) == ["aol", "soc"]
    assert set(frame["sweep"]) == {"s1"} and set(frame["dataset"]) == {"cifar10"}
    history = read_history(tmp_path)
    assert len(history) == 6 and set(history["epoch"]) == {1, 2, 3}

    folder = tmp_path / "results" / "attempts"
    assert len(pd.read_parquet(folder)) == 2
    assert ds.dataset(folder, partitioning="hive").count_rows() == 2
    duckdb = pytest.importorskip("duckdb")
    glob = f"{folder}/**/*.parquet"
    count = duckdb.sql(f"select count(*) from read_parquet('{glob}', hive_partitioning=true)")
    assert count.fetchall()[0][0] == 2


def test_rewritten_attempt_appears_once_with_the_newest_values(tmp_path: Path) -> None:
    write_attempt(tmp_path, attempt_row("t-a0", cra=0.1, status="preempted"), HISTORY[:1])
    write_attempt(tmp_path, attempt_row("t-a0", cra=0.6), HISTORY)
    frame = read_attempts(tmp_path)
    assert (
        len(frame) == 1 and frame.loc[0, "cra_36"] == 0.6 and frame.loc[0, "status"] == "completed"
    )
    assert len(read_history(tmp_path)) == 3


def test_no_temporary_file_is_left_or_visible(tmp_path: Path) -> None:
    write_attempt(tmp_path, attempt_row("t-a0"), HISTORY)
    names = [p.name for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert all(name.endswith(".parquet") and not name.startswith(".") for name in names)


def test_unknown_column_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown result columns: bogus"):
        write_attempt(tmp_path, attempt_row("t-a0", bogus=1), HISTORY)
    assert read_attempts(tmp_path).empty


def test_reading_an_empty_folder_gives_an_empty_frame(tmp_path: Path) -> None:
    assert read_attempts(tmp_path).empty and read_history(tmp_path).empty


def test_damaged_and_stray_files_are_skipped_and_named(tmp_path: Path) -> None:
    """A truncated Parquet file or a stray file under results/ costs only itself: readers skip
    it, `lipsweep status` and `lipsweep rank` run and name it."""
    import subprocess
    import sys

    from lipsweep.config import SweepConfig
    from lipsweep.results.store import damaged_files

    SweepConfig("s1", ("cifar10",), ("XS",), ("aol",), ("2h",), trials=2).save(tmp_path)
    good = write_attempt(tmp_path, attempt_row("search-cifar10-XS-aol-2h-t0-a0"), [])
    broken = write_attempt(tmp_path, attempt_row("search-cifar10-XS-aol-2h-t1-a0"), [])
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    stray = good.parent / "notes.txt"
    stray.write_text("not a result")
    assert list(read_attempts(tmp_path)["attempt_id"]) == ["search-cifar10-XS-aol-2h-t0-a0"]
    assert damaged_files(tmp_path / "results") == sorted([broken, stray])
    status = subprocess.run(
        [sys.executable, "-m", "lipsweep", "status", str(tmp_path)], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    warnings = " ".join(status.stderr.split())
    assert f"{broken} is not a readable Parquet file" in warnings and str(stray) in warnings
    assert "lipsweep resume" in warnings
    rank = subprocess.run(
        [sys.executable, "-m", "lipsweep", "rank", str(tmp_path)], capture_output=True, text=True
    )
    assert "Traceback" not in rank.stderr and rank.returncode == 1  # no final run yet
    assert "error: no completed final-stage results" in " ".join(rank.stdout.split())


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    from lipsweep.atomic import write_atomic

    def full_disk(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError(28, "No space left on device", str(temporary))

    with pytest.raises(OSError):
        write_atomic(tmp_path / "x.json", full_disk)
    assert list(tmp_path.iterdir()) == []


def test_damaged_progress_and_history_files_are_named_with_what_to_do(tmp_path: Path) -> None:
    """A progress record that is not JSON is skipped (status used to crash on it); a damaged
    history file whose attempt row is intact gets advice that a resume alone cannot redo it,
    one whose attempt has no row yet the advice to resume."""
    import json
    import subprocess
    import sys

    from lipsweep.config import SweepConfig

    SweepConfig("s1", ("cifar10",), ("XS",), ("aol",), ("2h",), trials=3).save(tmp_path)
    kept = write_attempt(tmp_path, attempt_row("search-cifar10-XS-aol-2h-t0-a0"), HISTORY)
    history = tmp_path / "results" / "history" / kept.relative_to(tmp_path / "results/attempts")
    history.write_bytes(history.read_bytes()[:40])
    unended = write_attempt(tmp_path, attempt_row("search-cifar10-XS-aol-2h-t1-a0"), HISTORY)
    unended.unlink()  # killed between its history and its row
    orphan = tmp_path / "results" / "history" / unended.relative_to(tmp_path / "results/attempts")
    orphan.write_bytes(b"PAR1 truncated")
    progress = tmp_path / "attempts" / "search-cifar10-XS-aol-2h-t2-a0" / "progress.json"
    progress.parent.mkdir(parents=True)
    progress.write_text('{"epoch": 1, "device_sec')
    running = tmp_path / "attempts" / "search-cifar10-XS-aol-2h-t1-a0" / "progress.json"
    running.parent.mkdir(parents=True)
    running.write_text(json.dumps({"epoch": 2, "device_seconds": 3.0}))
    status = subprocess.run(
        [sys.executable, "-m", "lipsweep", "status", str(tmp_path)], capture_output=True, text=True
    )
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    warnings = [" ".join(line.split()) for line in status.stderr.split("warning:")[1:]]
    assert len(warnings) == 3, status.stderr
    by_file = {next(w for w in warnings if str(p) in w): p for p in (history, orphan, progress)}
    assert len(by_file) == 3
    history_advice = next(w for w, path in by_file.items() if path == history)
    assert "epoch history of attempt search-cifar10-XS-aol-2h-t0-a0 is lost" in history_advice
    assert "result row is intact" in history_advice and f"delete it and {kept}" in history_advice
    assert "to redo that attempt" not in history_advice
    orphan_advice = next(w for w, path in by_file.items() if path == orphan)
    assert f"has no result yet; run `lipsweep resume {tmp_path}` to redo it" in orphan_advice
    progress_advice = next(w for w, path in by_file.items() if path == progress)
    assert "is damaged (not a progress record)" in progress_advice
    assert "delete it" in progress_advice
    table = " ".join(status.stdout.split())
    assert "1 attempts finished, 1 running" in table, table  # the readable record still counts


def test_rows_written_before_a_column_existed_still_read(tmp_path: Path) -> None:
    """A row of an older lipsweep (no float32_logit_deviation column) reads beside new rows,
    the missing column as null."""
    import pyarrow.parquet as pq

    from lipsweep.results.schema import ATTEMPT_SCHEMA
    from lipsweep.results.store import partition_dir, to_table

    new = attempt_row("final-cifar10-XS-aol-2h-t0-a0", float32_logit_deviation=2e-6)
    write_attempt(tmp_path, new, HISTORY)
    old = attempt_row("final-cifar10-XS-aol-2h-t1-a0")
    schema = ATTEMPT_SCHEMA.remove(ATTEMPT_SCHEMA.get_field_index("float32_logit_deviation"))
    folder = partition_dir(tmp_path, "attempts", old)
    pq.write_table(to_table([old], schema), folder / f"{old['attempt_id']}.parquet")
    frame = read_attempts(tmp_path).set_index("attempt_id")["float32_logit_deviation"]
    assert frame[new["attempt_id"]] == 2e-6 and pd.isna(frame[old["attempt_id"]])
