"""The sweep's Optuna journal (``optuna.journal``), appended whole lines or nothing.

Optuna appends each batch of log lines with one write; a full disk can cut it short, and the
next append (after space was freed) would glue its line to the fragment: a line that does not
parse makes Optuna refuse the whole journal. Here a failed append is cut back to the size
before it (truncating needs no space), and a fragment left by a killed writer is cut on
opening; both under Optuna's own lock file, which every process of the sweep takes to append.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from lipsweep.atomic import is_disk_full


class WholeLineJournal(JournalFileBackend):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = JournalFileSymlinkLock(str(path))
        super().__init__(str(path), lock_obj=self.lock)
        self.lock.acquire()
        try:
            cut_fragment(path)
        finally:
            self.lock.release()

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        self.lock.acquire()
        try:
            cut_fragment(self.path)  # a half line another writer left (killed, failed cut)
            size = self.path.stat().st_size
            try:
                with self.path.open("ab") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
            except OSError as error:
                cut_back(self.path, size, data)
                if is_disk_full(error) and not error.filename:
                    raise OSError(error.errno, os.strerror(error.errno), str(self.path)) from error
                raise
        finally:
            self.lock.release()


def cut_back(path: Path, size: int, data: bytes) -> None:
    """After a failed append of ``data`` at ``size``: cut back a partial write, keep a whole one
    (the failure came after it landed, e.g. in fsync: a reader may already have applied it).
    A cut that fails too leaves a half line for the next append's ``cut_fragment``."""
    with path.open("rb") as file:
        file.seek(size)
        landed = file.read()
    if landed != data:
        with contextlib.suppress(OSError):
            os.truncate(path, size)


def cut_fragment(path: Path) -> None:
    """Cut what follows the last line break (a line a killed or failed append left half)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        if file.read(1) == b"\n":
            return
    data = path.read_bytes()
    os.truncate(path, data.rfind(b"\n") + 1)


def journal(folder: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(WholeLineJournal(folder / "optuna.journal"))
