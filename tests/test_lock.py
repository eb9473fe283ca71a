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
