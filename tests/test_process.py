"""Telling running processes from killed ones."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from lipsweep.process import process_alive


def test_a_running_process_is_alive_a_zombie_or_a_reaped_one_is_not() -> None:
    assert process_alive(os.getpid())
    child = subprocess.Popen(["sleep", "30"])
    assert process_alive(child.pid)
    child.kill()
    deadline = time.monotonic() + 10
    stat = Path(f"/proc/{child.pid}/stat")
    while " Z " not in stat.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)  # killed but not reaped: a zombie
    assert " Z " in stat.read_text()
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)
