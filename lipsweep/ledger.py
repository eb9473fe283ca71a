"""The GPU-hour ledger: spent = the sum of finished attempts' gpu_hours in the Parquet dataset;
reserved = the estimates of attempts running now. An attempt starts only if spent + reserved +
its own estimate stays within the cap, so concurrent trials cannot jointly overshoot it by more
than the estimates' error.

Reservations are small files under ``<sweep>/ledger/``, updated under an exclusive file lock
(``fcntl.flock``), so trials in several processes (or SLURM jobs on a shared file system with
working locks) see each other.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lipsweep.atomic import write_text_atomic
from lipsweep.names import Cell, parse_attempt_id
from lipsweep.results.store import read_attempts


class Ledger:
    def __init__(self, sweep_folder: Path, cap_hours: float | None) -> None:
        self.sweep_folder = sweep_folder
        self.folder = sweep_folder / "ledger"
        self.cap_hours = cap_hours

    def spent_hours(self) -> float:
        attempts = read_attempts(self.sweep_folder)
        return float(attempts["gpu_hours"].fillna(0).sum()) if not attempts.empty else 0.0

    def reserved_hours(self) -> float:
        return sum(json.loads(p.read_text())["hours"] for p in self.folder.glob("*.json"))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def reserve(self, key: str, hours: float) -> Iterator[bool]:
        """Yield True with ``hours`` reserved under ``key`` if the cap allows it, else False."""
        with self._locked():
            allowed = self.cap_hours is None or (
                self.spent_hours() + self.reserved_hours() + hours <= self.cap_hours
            )
            if allowed:
                # Atomic: a crash mid-write must not leave a file that breaks every reserve.
                write_text_atomic(self.folder / f"{key}.json", json.dumps({"hours": hours}))
        try:
            yield allowed
        finally:
            if allowed:
                with self._locked():
                    (self.folder / f"{key}.json").unlink(missing_ok=True)

    def clear_stale(self, cells: list[Cell] | None = None) -> None:
        """Drop reservations left by a killed driver (call before any trial starts); with
        ``cells``, only those of these cells' attempts."""
        with self._locked():
            for path in self.folder.glob("*.json"):
                if cells is None or parse_attempt_id(path.stem)[0].cell in cells:
                    path.unlink()
