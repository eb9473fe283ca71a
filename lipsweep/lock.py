"""One driver per sweep folder, one task per SLURM cell: OS file locks held for a process's life.

A driver holds an exclusive ``flock`` on ``<folder>/.driver.lock`` (a cell task on
``<folder>/locks/<cell>.lock``) while it runs. The kernel drops the lock when the process ends,
however it ends (SIGKILL included), so a killed driver leaves no stale lock: the next one takes
it over. Who holds it (host, pid, since when) is written next to it, atomically, once the lock
is taken (``.driver.json``, ``locks/<cell>.json``) and removed on release; a second driver reads
it for its refusal, ``lipsweep status`` through :func:`driver_alive`. A holder file left by a
killed driver is overwritten by the next holder and ignored by :func:`driver_alive`, which asks
the lock itself.

The lock file descriptor is not inherited by the programs a driver starts (Python opens it
close-on-exec); a process forked from the driver without exec shares it until it exits.

A driver that created the sweep folder and wrote nothing else there (a launch refused after
the lock was taken) removes the lock file and the folder on release, while still locking it;
a process that locked the removed file in between sees that its path is gone and locks anew.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from lipsweep.atomic import write_text_atomic
from lipsweep.errors import InputError
from lipsweep.process import process_alive

DRIVER_LOCK = ".driver.lock"
DRIVER_INFO = ".driver.json"
CELL_LOCKS = "locks"
# How long a refused driver (or driver_alive) waits for a new holder to write who it is, and a
# driver for a status probe's momentary shared lock to go.
HOLDER_WAIT_S = 1.0
POLL_S = 0.05


@contextmanager
def driver_lock(folder: Path) -> Iterator[dict[str, Any]]:
    """Hold the sweep folder's driver lock (yields the holder info written for it), or raise
    InputError at once, naming the live driver, if another process holds it."""
    tidy = not folder.exists()  # created here: removed on release if nothing else was written
    with _exclusive(
        folder / DRIVER_LOCK, folder / DRIVER_INFO, f"{folder} is driven", folder, tidy
    ) as info:
        yield info


@contextmanager
def cell_lock(folder: Path, cell: str) -> Iterator[dict[str, Any]]:
    """Hold the lock of one cell of the sweep (one SLURM cell task at a time), as driver_lock."""
    locks = folder / CELL_LOCKS
    what = f"cell {cell} of {folder} is run"
    with _exclusive(locks / f"{cell}.lock", locks / f"{cell}.json", what, folder) as info:
        yield info


def driver_alive(folder: Path) -> dict[str, Any] | None:
    """The holder info (host, pid, since; None for what it has not written yet) of the live
    driver of ``folder``, or None if no process holds its lock. Takes a shared lock for an
    instant only; works from any process and never creates a file."""
    try:
        fd = os.open(folder / DRIVER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _wait_for_holder(folder / DRIVER_INFO)
    finally:
        os.close(fd)


@contextmanager
def _exclusive(
    lock: Path, info_path: Path, what: str, folder: Path, tidy: bool = False
) -> Iterator[dict[str, Any]]:
    fd, holder = _open_and_lock(lock, info_path)
    try:
        if holder is not None:
            raise InputError(_refusal(what, holder, folder))
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        try:
            write_text_atomic(info_path, json.dumps(info) + "\n")
            yield info
        finally:
            info_path.unlink(missing_ok=True)  # while still locked: never a successor's file
            if tidy:
                _remove_if_bare(lock)
    finally:
        os.close(fd)


def _open_and_lock(lock: Path, info_path: Path) -> tuple[int, dict[str, Any] | None]:
    """(fd, None) with ``lock`` open and locked, or (fd, holder) if a live process holds it.
    A lock won on a file that a refused launch removed meanwhile (its path is gone or is
    another file now) is worth nothing: open the path again."""
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed between mkdir and open
            continue
        holder = _acquire(fd, info_path)
        if holder is not None or _is_path_of(fd, lock):
            return fd, holder
        os.close(fd)


def _is_path_of(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _remove_if_bare(lock: Path) -> None:
    """Remove ``lock`` and its folder if nothing else is in it (the holder file is already
    gone): a launch refused after taking the lock leaves no folder behind."""
    try:
        if [p.name for p in lock.parent.iterdir()] == [lock.name]:
            lock.unlink()
            lock.parent.rmdir()
    except OSError:  # a file appeared meanwhile: the folder is in use, keep it
        pass


def _acquire(fd: int, info_path: Path) -> dict[str, Any] | None:
    """None once ``fd`` is locked; the holder's info if a live process holds the lock. A lock
    with no live holder on record (a status probe, a holder not yet recorded) is retried for
    up to HOLDER_WAIT_S."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while not _try_lock(fd, fcntl.LOCK_EX):
        holder = _read_holder(info_path)
        if holder is not None or time.monotonic() > deadline:
            return holder or _unknown_holder()
        time.sleep(POLL_S)
    return None


def _wait_for_holder(info_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + HOLDER_WAIT_S
    while (holder := _read_holder(info_path)) is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return holder or _unknown_holder()


def _try_lock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(info_path: Path) -> dict[str, Any] | None:
    """The recorded holder, unless it is missing, unreadable or a process of this host that
    has ended (the record of a killed holder)."""
    try:
        info = json.loads(info_path.read_text())
        host, pid = info["host"], int(info["pid"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if host == socket.gethostname() and not process_alive(pid):
        return None
    return info


def _unknown_holder() -> dict[str, Any]:
    return {"host": None, "pid": None, "since": None}


def _refusal(what: str, holder: dict[str, Any], folder: Path) -> str:
    if holder["pid"] is None:
        who = "another process (not yet recorded)"
    else:
        who = f"pid {holder['pid']} on host {holder['host']} since {holder['since']}"
    return f"{what} by {who}: wait for it, or stop it and run `lipsweep resume {folder}`"


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
