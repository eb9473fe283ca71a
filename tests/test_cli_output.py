"""What the sweep commands print, on hand-built sweep folders (no training): the status table
within 80 columns, plain timestamped progress when output is not a terminal, `status --watch`
into a pipe, and the csv / json of `status` and `bench` for scripts."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from lipsweep.attempt import Outcome, TrialSpec, now
from lipsweep.cli import app
from lipsweep.cli.render import hours_text, status_table
from lipsweep.cli.sweep import CalibrationProgress, PlainProgress
from lipsweep.config import SweepConfig
from lipsweep.names import PROGRESS, AttemptStatus, Cell, TrialId
from lipsweep.plan import CellPlan, save_plan
from lipsweep.results import write_attempt
from lipsweep.results.rows import Provenance, attempt_row
from lipsweep.status import sweep_status

STAMP = r"\d\d:\d\d:\d\d "  # log_line's timestamp
SMALL = SweepConfig(
    sweep_id="small",
    datasets=("digits",),
    sizes=("XS",),
    methods=("aol", "cpl"),
    budgets=("1h",),
    trials=2,
    search_budget="1h",
)
AOL = Cell("digits", "XS", "aol")
STATUS_COLUMNS = [
    "cell", "search_completed", "search_failed", "search_trials", "running", "best_val_cra_36",
    "finals_completed", "finals", "device_hours", "device_hours_left", "rung", "rungs",
    "rung_configurations", "slurm_job",
]  # fmt: skip


def sweep(folder: Path, config: SweepConfig, plans: list[CellPlan]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder)
    for plan in plans:
        save_plan(folder, plan)
    return folder


def finish(folder: Path, trial: TrialId, cra: float = 0.5, hours: float = 0.001) -> str:
    """Write a completed attempt of ``trial`` (on one GPU, ``hours`` long); its attempt id."""
    cell = trial.cell
    spec = TrialSpec(cell.dataset, cell.size, cell.method, 2, 0.01, 1e-5, 0, stage=trial.stage)
    stamp = now()
    outcome = Outcome(
        status=AttemptStatus.COMPLETED, epochs_done=2, metrics={"accuracy": 0.9, "cra_36": cra},
        device_seconds=3600.0 * hours, started_at=stamp, ended_at=stamp,
    )  # fmt: skip
    row = attempt_row(trial, 0, spec, outcome, 1.0, Provenance(folder.name, "measure", "", ""))
    write_attempt(folder, row, [])
    return row["attempt_id"]


def start(folder: Path, trial: TrialId) -> str:
    """An attempt of ``trial`` running in this process (its progress record names our pid)."""
    attempt_id = trial.attempt(0)
    record = {"epoch": 1, "device_seconds": 1.0, "pid": os.getpid(), "host": socket.gethostname()}
    (folder / "attempts" / attempt_id).mkdir(parents=True)
    (folder / "attempts" / attempt_id / PROGRESS).write_text(json.dumps(record))
    return attempt_id


def test_hours_text_is_short_and_close() -> None:
    for hours in (0.0, 0.0004, 0.42, 3.14159, 99.94, 123.4, 9999.4, 12_345.6, 987_654.0):
        text = hours_text(hours)
        back = float(text[:-1]) * 1000 if text.endswith("k") else float(text)
        assert len(text) <= 5, text
        assert abs(back - hours) <= max(0.0005, 0.05 * hours), (hours, text)


def test_status_table_fits_80_columns_without_cutting_a_cell(tmp_path: Path) -> None:
    """The longest cell name, hour counts in the thousands and ten thousands, and SLURM jobs."""
    config = replace(
        SMALL, datasets=("tiny-imagenet", "digits"), methods=("cayley", "aol"),
        budgets=("2h", "10h", "24h"), trials=16, search_budget="2h", gpus_per_trial=1.0,
    )  # fmt: skip
    big = CellPlan("tiny-imagenet", "XS", "cayley", 3600.0 * 100, {"2h": 4, "10h": 20, "24h": 48})
    folder = sweep(tmp_path / "sweep", config, [big])
    search = TrialId("search", big.cell, "2h", 0)
    finish(folder, search, cra=0.123, hours=1234.5)
    status = sweep_status(folder)
    cells = {c.cell: c for c in status.cells}
    assert cells[big.cell].device_hours >= 1000 and cells[big.cell].hours_left >= 10_000
    jobs = {cell: f"{98765432 + i} OUT_OF_MEMORY" for i, cell in enumerate(config.cells())}
    recorder = Console(record=True, width=80, file=io.StringIO())
    recorder.print(status_table(status, jobs))
    text = recorder.export_text()
    assert "…" not in text, text
    assert max(map(len, text.splitlines())) <= 80
    lines = text.splitlines()
    for cell in status.cells:
        row = next(line.split() for line in lines if line.split()[:1] == [cell.cell.name])
        left = "-" if cell.hours_left is None else hours_text(cell.hours_left)
        assert row[1] == f"{cell.search_done}/16"
        assert row[-2:] == [hours_text(cell.device_hours), left]
        assert f"{cell.cell.name} {jobs[cell.cell]}" in " ".join(text.split())
    header = next(line.split() for line in lines if line.split()[:2] == ["cell", "search"])
    assert header[-2:] == ["GPU-h", "left"] and "SLURM job" in text


def test_calibration_progress_says_cell_k_of_n_and_the_time_so_far(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = CalibrationProgress()
    progress.started -= 65.0  # as if the first cells took 65 s
    progress(1, 3, AOL)
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(STAMP + r"calibrating cell 2 of 3: digits-XS-aol \(1m5s so far\)", line)


def test_plain_progress_reports_attempts_cells_and_eta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lines a launch into a log file prints, as its attempts start and end."""
    plan = CellPlan("digits", "XS", "aol", 2.0, {"1h": 3})
    folder = sweep(tmp_path / "sweep", replace(SMALL, methods=("aol",)), [plan])
    search = [TrialId("search", AOL, "1h", i) for i in range(2)]
    final = TrialId("final", AOL, "1h", 0)
    progress = PlainProgress(folder, every_s=3600.0)

    def report() -> list[str]:
        progress.report()
        lines = capsys.readouterr().out.splitlines()
        assert all(re.match(STAMP, line) for line in lines), lines
        return [line[9:] for line in lines]

    first = start(folder, search[0])
    lines = report()
    assert lines[0] == f"started {first}"
    assert "ETA ~" in lines[1] and "at 1 attempts at a time" in lines[1]
    finish(folder, search[0], cra=0.61)
    (folder / "attempts" / first / PROGRESS).unlink()
    second = start(folder, search[1])
    lines = report()
    assert f"ended {first}: completed, val CRA@36 0.610" in lines
    assert f"started {second}" in lines and not any("cell done" in line for line in lines)
    assert report() == []  # nothing changed: nothing printed
    finish(folder, search[1], cra=0.42)
    (folder / "attempts" / second / PROGRESS).unlink()
    last = finish(folder, final, cra=0.55)
    lines = report()
    assert f"ended {last}: completed, test CRA@36 0.550" in lines
    done = [line for line in lines if line.startswith("cell done")]
    assert done == ["cell done digits-XS-aol: search 2/2 completed, finals 1/1 completed, "
                    f"{hours_text(0.003)} device-hours"]  # fmt: skip
    assert lines[-1] == "nothing left to run"
    progress.running = {"an attempt that ended meanwhile"}  # makes it report again
    assert report() == ["nothing left to run"]  # the cell was said done once


def test_status_watch_into_a_pipe_prints_timestamped_snapshots(tmp_path: Path) -> None:
    folder = sweep(tmp_path / "sweep", SMALL, [CellPlan("digits", "XS", "aol", 2.0, {"1h": 3})])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lipsweep", "status", str(folder), "--watch", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        # Three headers: the first two snapshots are whole (Ctrl-C may cut the third short).
        while sum("status of" in line for line in lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)  # Ctrl-C, to this test's own child only
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    starts = [i for i, line in enumerate(lines) if re.match(STAMP + "status of ", line)]
    assert len(starts) >= 3, "".join(lines)
    for start, end in itertools.pairwise(starts):  # every whole snapshot
        assert any("digits-XS-aol" in line for line in lines[start:end]), "".join(lines)


def test_status_csv_and_json_hold_one_row_per_cell(tmp_path: Path) -> None:
    folder = sweep(tmp_path / "sweep", SMALL, [CellPlan("digits", "XS", "aol", 2.0, {"1h": 3})])
    finish(folder, TrialId("search", AOL, "1h", 0), cra=0.61, hours=0.25)
    runner = CliRunner()
    csv = runner.invoke(app, ["status", str(folder), "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    rows = pd.read_csv(io.StringIO(csv.stdout))
    records = json.loads(runner.invoke(app, ["status", str(folder), "--format", "json"]).stdout)
    assert list(rows.columns) == STATUS_COLUMNS and list(records[0]) == STATUS_COLUMNS
    for table in (rows, pd.DataFrame(records)):
        assert table["cell"].tolist() == ["digits-XS-aol", "digits-XS-cpl"]
        aol = table.iloc[0]
        assert (aol["search_completed"], aol["search_trials"], aol["finals"]) == (1, 2, 1)
        assert aol["best_val_cra_36"] == pytest.approx(0.61)
        assert aol["device_hours"] == pytest.approx(0.25)
        assert pd.isna(table.iloc[1]["device_hours_left"])  # cpl has no plan yet


BENCH_COLUMNS = {
    "method", "size", "dataset", "train_batch_s", "inference_batch_s", "seconds_per_epoch",
    "train_peak_bytes", "inference_peak_bytes", "train_batch_s_ratio", "cache_speedup",
}  # fmt: skip


@pytest.mark.parametrize("output", ["csv", "json"])
def test_bench_csv_and_json_are_alone_on_stdout(tmp_path: Path, output: str) -> None:
    """A tiny bench (AOL XS on digits, one batch of 4): stdout parses whole, progress on stderr."""
    command = [sys.executable, "-m", "lipsweep", "bench", "--methods", "aol", "--sizes", "XS"]
    command += ["--dataset", "digits", "--batch-size", "4", "--batches", "1", "--threads", "1"]
    command += ["--device", "cpu", "--out", str(tmp_path), "--format", output]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=170, env=env)
    assert result.returncode == 0, result.stderr
    if output == "csv":
        frame = pd.read_csv(io.StringIO(result.stdout))
    else:
        frame = pd.DataFrame(json.loads(result.stdout))
    assert set(frame.columns) >= BENCH_COLUMNS
    assert frame["method"].tolist() == ["standard", "aol"] and set(frame["size"]) == {"XS"}
    assert (frame["train_batch_s"] > 0).all()
    assert frame.loc[0, "train_batch_s_ratio"] == pytest.approx(1.0)
    assert "bench digits XS aol" in result.stderr and "wrote" in result.stderr
