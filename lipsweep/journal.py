"""The sweep's Optuna journal (``optuna.journal``), appended whole lines or nothing.

Optuna appends each batch of log lines with one write; a full disk can cut it short, and the
next append (after space was freed) would glue its line to the fragment: a line that does not
parse makes Optuna refuse the whole journal. Here a failed append is cut back to the size
before it (truncating needs no space), and a fragment left by a killed writer is cut on
opening; both under Optuna's own lock file, which every process of the sweep takes to append.
"""

from __future__ import annotations

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
            size = self.path.stat().st_size
            try:
                with self.path.open("ab") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
            except OSError as error:
                os.truncate(self.path, size)
                if is_disk_full(error) and not error.filename:
                    raise OSError(error.errno, os.strerror(error.errno), str(self.path)) from error
                raise
        finally:
            self.lock.release()


def cut_fragment(path: Path) -> None:
    """Cut what follows the last line break (a line a killed or failed append left half)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


def journal(folder: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(WholeLineJournal(folder / "optuna.journal"))
