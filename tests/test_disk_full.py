"""A full disk on a real small file system (a tmpfs mounted inside the test's folder, root
only): inside an attempt, a trial's worker and a whole sweep, it loses no finished result and
no trial. The sweep stops with one line and exit 1; a resume after freeing space finishes it."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch

from lipsweep.attempt import Attempt, TrialSpec, run_attempt
from lipsweep.config import SweepConfig
from lipsweep.journal import journal
from lipsweep.names import CHECKPOINT, DISK_FULL, Cell
from lipsweep.plan import CellPlan, save_plan
from lipsweep.results import read_attempts, read_history
from lipsweep.trainable import DiskFullWatch, run_trial
from tests.test_sweep import task

AOL = Cell("digits", "XS", "aol")

SPEC = TrialSpec(
    dataset="digits",
    size="XS",
    method="aol",
    epochs=2,
    lr=0.05,
    weight_decay=1e-5,
    seed=3,
    stage="search",
    batch_size=64,
    checkpoint_every_epochs=1,
    max_examples=128,
)


class SmallDisk:
    """A tmpfs mounted at ``path``: ``fill`` leaves ``keep`` bytes free, ``grow`` frees space
    (a larger size, the filler gone; the files stay)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"  # hidden: results readers skip it

    def fill(self, keep: int = 0) -> None:
        free = shutil.disk_usage(self.path).free
        with self.filler.open("ab") as file:
            file.write(b"\0" * max(0, free - keep))

    def grow(self) -> None:
        self.filler.unlink(missing_ok=True)
        mount("-o", "remount,size=64m", str(self.path))


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with mounted(tmp_path / "disk") as disk:
        yield disk


@contextmanager
def mounted(path: Path, size: str = "3m") -> Iterator[SmallDisk]:
    """A tmpfs of ``size`` at ``path``, unmounted on leaving (skips the test if not root or
    the mount fails)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    result = mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield SmallDisk(path)
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def checkpoint_bytes(tmp_path: Path) -> int:
    """The size of a checkpoint of SPEC after an epoch (with momentum), on the real disk."""
    assert run_attempt(replace(SPEC, epochs=1), tmp_path / "measure").status == "completed"
    return (tmp_path / "measure" / CHECKPOINT).stat().st_size


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_checkpoint_that_does_not_fit_is_an_oserror_and_the_old_one_stays(
    small_disk: SmallDisk,
) -> None:
    """torch.save writing to the file reported ENOSPC as a RuntimeError ("unexpected pos")."""
    attempt = Attempt(SPEC, small_disk.path / "a")
    attempt.workdir.mkdir()
    attempt.save()
    small_disk.fill()
    attempt.epoch = 1
    with pytest.raises(OSError) as raised:
        attempt.save()
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(attempt.workdir / CHECKPOINT)
    assert not temporaries(small_disk.path)
    assert torch.load(attempt.workdir / CHECKPOINT, weights_only=True)["epoch"] == 0


def test_an_attempt_out_of_space_raises_and_resumes_from_its_checkpoint(
    small_disk: SmallDisk, tmp_path: Path
) -> None:
    """Room for the first epoch's checkpoint, not for the second (an atomic write needs the
    old and the new): the attempt is not "failed", it resumes from epoch 1."""
    small_disk.fill(keep=int(1.5 * checkpoint_bytes(tmp_path)))
    workdir = small_disk.path / "attempt"
    with pytest.raises(OSError) as raised:
        run_attempt(SPEC, workdir)
    assert raised.value.errno == errno.ENOSPC
    assert not temporaries(small_disk.path)
    assert torch.load(workdir / CHECKPOINT, weights_only=True)["epoch"] == 1
    small_disk.grow()
    outcome = run_attempt(SPEC, workdir)
    assert outcome.status == "completed", outcome.error
    assert outcome.resumed_from_epoch == 1 and outcome.epochs_done == 2
    assert [row["run"] for row in outcome.history] == [0, 1]


def test_a_result_that_does_not_fit_is_no_row_and_the_trial_finishes_later(
    tmp_path: Path,
) -> None:
    """The attempt trains to its end, then its Parquet rows do not fit (results/ is a full
    tmpfs): the trainable says DISK_FULL and writes no row. Once there is room, the trial
    resumes from the attempt's last checkpoint and writes its row, without training again."""
    folder = tmp_path / "sweep"
    with mounted(folder / "results") as disk:
        disk.fill()
        result = run_trial({"trial": task(folder, AOL, SPEC)})
        assert result["status"] == DISK_FULL
        assert Path(result["path"]).is_relative_to(folder / "results")
        assert read_attempts(folder).empty and not temporaries(folder)
        disk.grow()
        assert run_trial({"trial": task(folder, AOL, SPEC)})["status"] == "completed"
        attempts = read_attempts(folder)
        assert list(attempts["attempt_id"]) == ["search-digits-XS-aol-1h-t0-a0"]
        assert attempts.iloc[0]["resumed_from_epoch"] == 2
        assert set(read_history(folder)["run"]) == {0}  # trained once


def test_tunes_own_full_disk_names_its_folder_and_silences_its_log(tmp_path: Path) -> None:
    """Tune saving its experiment state logs a traceback and goes on; writing tuner.pkl raises
    an OSError naming no file. Either way the driver raises one OSError naming a folder."""
    experiment = tmp_path / "tune" / "search-1"
    with pytest.raises(OSError) as raised, DiskFullWatch(experiment):
        raise OSError(errno.ENOSPC, "Error writing bytes to file")
    assert raised.value.filename == str(experiment)
    log = logging.getLogger("ray.tune.execution.experiment_state")
    with pytest.raises(OSError) as raised, DiskFullWatch(experiment) as watch:
        assert not watch.stop_all() and watch.filter(log.makeRecord("", 40, "", 0, "", (), None))
        full = OSError(errno.ENOSPC, "No space left on device")
        record = log.makeRecord("", 40, "", 0, "saving failed", (), (OSError, full, None))
        assert not watch.filter(record) and watch.stop_all()
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(experiment)
    with DiskFullWatch(experiment) as watch:
        assert not watch("trial", {"status": "completed"}) and not watch.stop_all()


@pytest.mark.slow
def test_a_sweep_out_of_space_stops_in_one_line_and_a_resume_finishes_it(
    small_disk: SmallDisk, tmp_path: Path
) -> None:
    """A digits sweep on a 3 MB disk with room for about one checkpoint and a half: exit 1
    with the one line, no attempt recorded as failed, no temporary file; after freeing space,
    `lipsweep resume` runs every attempt exactly once, the interrupted one from its
    checkpoint, and every study trial is COMPLETE (none told FAIL)."""
    out = small_disk.path / "sweep"
    config = SweepConfig(
        sweep_id="t",
        datasets=("digits",),
        sizes=("XS",),
        methods=("aol",),
        budgets=("1h",),
        trials=2,
        search_budget="1h",
        max_epochs=2,
        batch_size=64,
        max_examples=128,
        checkpoint_every_epochs=1,
    )
    config.save(out)
    save_plan(out, CellPlan("digits", "XS", "aol", 1.0, {"1h": 2}))  # no calibration
    small_disk.fill(keep=int(1.5 * checkpoint_bytes(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "LIPSWEEP_CACHE": str(tmp_path / "cache")}  # fmt: skip
    command = [sys.executable, "-m", "lipsweep", "resume", str(out)]
    full = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-2000:]
    lines = [
        line
        for line in full.stderr.splitlines()
        if line.strip() and not line.startswith("Token authentication is enabled")  # Ray's
    ]
    pattern = (
        rf"error: no space left on device under {re.escape(str(out))}/\S+: free space and "
        rf"run `lipsweep resume {re.escape(str(out))}` \(finished results are kept\)"
    )
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), full.stderr
    before = read_attempts(out)
    assert "failed" not in set(before.get("status", []))
    assert not temporaries(small_disk.path)

    small_disk.grow()
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    attempts = read_attempts(out)
    assert attempts["attempt_id"].is_unique
    assert sorted(attempts["attempt_id"]) == [
        "final-digits-XS-aol-1h-t0-a0",
        "search-digits-XS-aol-1h-t0-a0",
        "search-digits-XS-aol-1h-t1-a0",
    ]
    assert set(attempts["status"]) == {"completed"}
    assert (attempts["resumed_from_epoch"] == 1).any()  # the attempt the full disk stopped
    files = list((out / "results" / "attempts").rglob("*.parquet"))
    assert len(files) == len(attempts)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))
    )
    study = optuna.load_study(study_name="t/digits-XS-aol", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


def test_a_journal_append_that_does_not_fit_is_cut_back_and_the_study_stays_readable(
    small_disk: SmallDisk,
) -> None:
    """The append fills the journal's last page, then meets the full disk: Optuna's write left
    that fragment, and the next append glued its line to it (an unreadable journal)."""
    study = optuna.create_study(study_name="s", storage=journal(small_disk.path))
    study.enqueue_trial({"x": 1.0})
    path = small_disk.path / "optuna.journal"
    size = path.stat().st_size
    small_disk.fill()
    with pytest.raises(OSError) as raised:
        study.enqueue_trial({"x": 2.0}, user_attrs={"note": "x" * 8000})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.stat().st_size == size
    small_disk.grow()
    study.enqueue_trial({"x": 3.0})
    again = optuna.load_study(study_name="s", storage=journal(small_disk.path))
    assert [t.system_attrs["fixed_params"] for t in again.trials] == [{"x": 1.0}, {"x": 3.0}]


def test_a_half_line_left_by_a_killed_append_is_cut_on_opening(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=journal(tmp_path))
    study.enqueue_trial({"x": 1.0})
    path = tmp_path / "optuna.journal"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":4,"work')
    study = optuna.load_study(study_name="s", storage=journal(tmp_path))
    assert path.read_bytes() == whole
    study.enqueue_trial({"x": 2.0})
    again = optuna.load_study(study_name="s", storage=journal(tmp_path))
    assert [t.system_attrs["fixed_params"] for t in again.trials] == [{"x": 1.0}, {"x": 2.0}]


def test_a_half_line_left_while_the_journal_is_open_is_cut_before_the_next_append(
    tmp_path: Path,
) -> None:
    """Another writer of the same journal (a SLURM cell task on another node) died mid-append
    after this one opened it: the next append cuts the fragment instead of gluing to it."""
    study = optuna.create_study(study_name="s", storage=journal(tmp_path))
    study.enqueue_trial({"x": 1.0})
    path = tmp_path / "optuna.journal"
    with path.open("ab") as file:
        file.write(b'{"op_code":4,"work')
    study.enqueue_trial({"x": 2.0})
    again = optuna.load_study(study_name="s", storage=journal(tmp_path))
    assert [t.system_attrs["fixed_params"] for t in again.trials] == [{"x": 1.0}, {"x": 2.0}]


def test_a_whole_line_whose_fsync_failed_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the line landed (fsync; on NFS, ENOSPC shows up there) must not cut a
    line a reader may already have applied: the append raises and the line stays."""
    study = optuna.create_study(study_name="s", storage=journal(tmp_path))

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "fsync failed")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        study.enqueue_trial({"x": 1.0})
    monkeypatch.undo()
    again = optuna.load_study(study_name="s", storage=journal(tmp_path))
    assert [t.system_attrs["fixed_params"] for t in again.trials] == [{"x": 1.0}]
