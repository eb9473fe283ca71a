"""One driver per sweep folder (and one task per cell), across processes, SIGKILL included."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lipsweep.errors import InputError
from lipsweep.lock import DRIVER_INFO, cell_lock, driver_alive, driver_lock

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from lipsweep.lock import cell_lock, driver_lock
folder = Path(sys.argv[1])
with driver_lock(folder) if len(sys.argv) == 2 else cell_lock(folder, sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def python(code: str, *args: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, text=True, **options)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the driver lock of tmp_path (killed at the end)."""
    process = python(HOLD, str(tmp_path), stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        yield process
    finally:
        process.kill()
        process.wait()


def test_second_driver_is_refused_at_once_naming_the_holder(tmp_path: Path, holder) -> None:
    start = time.monotonic()
    with pytest.raises(InputError) as err, driver_lock(tmp_path):
        pytest.fail("a second driver got the lock")
    assert time.monotonic() - start < 0.5  # no waiting on a recorded live holder
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path} is driven by pid {holder.pid} on host ")
    assert f"on host {socket.gethostname()} since " in message
    assert message.endswith(f"wait for it, or stop it and run `lipsweep resume {tmp_path}`")


def test_driver_alive_from_this_and_another_process(tmp_path: Path, holder) -> None:
    alive = driver_alive(tmp_path)
    assert alive is not None and alive["pid"] == holder.pid
    assert alive["host"] == socket.gethostname()
    holder.kill()
    holder.wait()
    assert driver_alive(tmp_path) is None
    probe = "import json, sys; from pathlib import Path; from lipsweep.lock import driver_alive\n"
    probe += "print(json.dumps(driver_alive(Path(sys.argv[1]))))"
    with driver_lock(tmp_path):
        ran = python(probe, str(tmp_path), stdout=subprocess.PIPE)
        seen = json.loads(ran.communicate(timeout=60)[0])
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname()
    assert driver_alive(tmp_path) is None
    assert driver_alive(tmp_path / "no-sweep-here") is None


def test_lock_of_a_killed_driver_is_taken_over(tmp_path: Path, holder) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / DRIVER_INFO).exists()  # the killed driver's record stays behind
    with driver_lock(tmp_path) as info:
        assert info["pid"] == os.getpid()
        recorded = json.loads((tmp_path / DRIVER_INFO).read_text())
        assert recorded == info
    assert not (tmp_path / DRIVER_INFO).exists()
    with driver_lock(tmp_path):  # released: taken again
        pass


def test_a_status_probe_does_not_refuse_a_driver(tmp_path: Path) -> None:
    """A shared lock like driver_alive's (held 0.2 s here instead of an instant) makes a starting
    driver wait for it, not fail; a killed driver's record does not count as a holder."""
    with driver_lock(tmp_path):  # leaves the lock file
        pass
    dead = python("pass")
    dead.wait()
    (tmp_path / DRIVER_INFO).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    fd = os.open(tmp_path / ".driver.lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    release = threading.Timer(0.2, fcntl.flock, (fd, fcntl.LOCK_UN))
    release.start()
    try:
        start = time.monotonic()
        with driver_lock(tmp_path) as info:
            assert info["pid"] == os.getpid()
        assert 0.15 < time.monotonic() - start < 0.9
    finally:
        release.join()
        os.close(fd)


def test_cell_locks(tmp_path: Path) -> None:
    process = python(HOLD, str(tmp_path), "cifar10-S-aol", stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        with pytest.raises(InputError) as err, cell_lock(tmp_path, "cifar10-S-aol"):
            pytest.fail("a second task got the cell's lock")
        assert str(err.value).startswith(
            f"cell cifar10-S-aol of {tmp_path} is run by pid {process.pid} on host "
        )
        with cell_lock(tmp_path, "cifar10-S-sll"), driver_lock(tmp_path):
            assert (tmp_path / "locks" / "cifar10-S-sll.json").exists()
    finally:
        process.kill()
        process.wait()


def test_a_driver_that_created_the_folder_and_wrote_nothing_leaves_no_folder(
    tmp_path: Path,
) -> None:
    """A launch refused after taking the lock (say, a cap below one attempt) removes the folder
    it created; a folder it wrote into, or one that was there before, stays."""
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match="refused"), driver_lock(fresh):
        assert (fresh / ".driver.lock").exists()
        raise InputError("refused after the lock")
    assert not fresh.exists()
    with driver_lock(fresh):
        (fresh / "sweep.json").write_text("{}")
    assert sorted(p.name for p in fresh.iterdir()) == [".driver.lock", "sweep.json"]
    existing = tmp_path / "existing"
    existing.mkdir()
    with driver_lock(existing):
        pass
    assert [p.name for p in existing.iterdir()] == [".driver.lock"]


def test_two_launches_at_once_on_a_fresh_folder_one_runs_the_other_is_refused(
    tmp_path: Path,
) -> None:
    """Both start together on a folder that does not exist yet: the lock is taken before any
    calibration or write, so one runs the sweep to its end and the other is refused in one
    line naming it, having calibrated nothing (its own calibration cache never appears) and
    written no plan: the plans on disk are the winner's, written before its first attempt."""
    import optuna

    from lipsweep.results import read_attempts

    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "lipsweep", "launch", "--out", str(out),
               "--datasets", "digits", "--sizes", "XS", "--methods", "aol", "--trials", "2",
               "--search-epochs", "1", "--final-epochs", "1", "--max-examples", "128",
               "--batch-size", "64"]  # fmt: skip
    launches = []
    for name in ("a", "b"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "LIPSWEEP_CACHE": str(tmp_path / f"cache-{name}")}  # fmt: skip
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        launches.append(subprocess.Popen(command, env=env, cwd=ROOT, text=True, **pipes))
    outputs = [process.communicate(timeout=170) for process in launches]
    codes = sorted(process.returncode for process in launches)
    assert codes == [0, 2], outputs
    winner, loser = sorted(range(2), key=lambda i: launches[i].returncode)
    refusal = outputs[loser][1].strip()
    assert len(refusal.splitlines()) == 1, refusal
    assert f"{out} is driven by pid {launches[winner].pid} on host " in refusal
    assert "calibrating" not in outputs[loser][0]
    assert not (tmp_path / f"cache-{'ab'[loser]}").exists()  # the loser calibrated nothing
    attempts = read_attempts(out)
    assert sorted(attempts["stage"]) == ["final", "search", "search"]
    assert attempts["attempt_id"].is_unique and set(attempts["status"]) == {"completed"}
    (plan,) = (out / "plans").iterdir()
    stored = json.loads(plan.read_text())
    assert stored["epochs"] == {"2h": 1, "24h": 1}
    assert (attempts["epochs_planned"] == 1).all()
    first_start = attempts["started_at"].min().timestamp()
    assert plan.stat().st_mtime <= first_start + 1  # started_at is in whole seconds
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert not (out / DRIVER_INFO).exists()
