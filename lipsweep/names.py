"""The sweep's vocabulary, defined once: cells, trial and attempt ids, statuses, file names.

A *cell* is one (dataset, size, method). A *trial* trains one model of a cell with one set of
hyperparameters at one budget; an *attempt* is one try of a trial (a NaN run is retried with a
new seed as a new attempt). Ids are built and parsed here only:

    trial id    <stage>-<dataset>-<size>-<method>-<budget>-t<index>    search-digits-XS-aol-15s-t0
    attempt id  <trial id>-a<attempt>                                  search-digits-XS-aol-15s-t0-a1

Dataset names contain "-" (tiny-imagenet), so ids are parsed against the known datasets.
This module imports nothing heavy (no torch, no pandas): every layer may use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "tiny-imagenet", "digits")
SIZES: tuple[str, ...] = ("XS", "S", "M", "L")
STAGES: tuple[str, ...] = ("search", "final")
Stage = Literal["search", "final"]

# Files of an attempt's folder, <sweep>/attempts/<attempt id>/.
CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.json"


class AttemptStatus(StrEnum):
    """How an attempt ended: every value a row's ``status`` column holds."""

    COMPLETED = "completed"
    NAN = "nan"  # loss or weights went non-finite; retried with a new seed
    OOM = "oom"  # out of memory (device or --memory-per-trial cap)
    FAILED = "failed"  # any other error; the row's ``error`` says which


# What the trainable reports for a trial the GPU-hour cap kept from starting: no attempt ran,
# so no row is written and the trial stays open in its study (a relaunch replays it).
CAPPED = "capped"
# ... for a trial whose attempt hit a full disk: no row either, and the sweep stops (its
# driver raises the OSError); a resume replays the trial from its last checkpoint.
DISK_FULL = "disk_full"


@dataclass(frozen=True, order=True)
class Cell:
    """One (dataset, size, method) of a sweep: the protocol's independent unit."""

    dataset: str
    size: str
    method: str

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.size}-{self.method}"

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def parse(text: str) -> Cell:
        """The cell named ``text`` ("tiny-imagenet-XS-aol"); ValueError if it is not one."""
        for dataset in DATASETS:
            if text.startswith(dataset + "-"):
                size, _, method = text[len(dataset) + 1 :].partition("-")
                if size in SIZES and method:
                    return Cell(dataset, size, method)
        raise ValueError(f"{text!r} is not a cell name such as cifar10-XS-aol")


@dataclass(frozen=True)
class TrialId:
    stage: Stage
    cell: Cell
    budget: str  # a budget label, e.g. "2h"
    index: int

    def __str__(self) -> str:
        return f"{self.stage}-{self.cell.name}-{self.budget}-t{self.index}"

    def attempt(self, number: int) -> str:
        """The id of this trial's attempt ``number`` (0 for the first try)."""
        return f"{self}-a{number}"

    @staticmethod
    def parse(text: str) -> TrialId:
        stage, _, rest = text.partition("-")
        match = re.fullmatch(r"(.+)-([0-9a-z]+)-t(\d+)", rest)
        if stage not in STAGES or match is None:
            raise ValueError(f"{text!r} is not a trial id such as search-cifar10-XS-aol-2h-t0")
        return TrialId(stage, Cell.parse(match.group(1)), match.group(2), int(match.group(3)))  # type: ignore[arg-type]


def parse_attempt_id(text: str) -> tuple[TrialId, int]:
    """(trial id, attempt number) of an attempt id."""
    trial, sep, number = text.rpartition("-a")
    if not sep or not number.isdigit():
        raise ValueError(f"{text!r} is not an attempt id such as search-cifar10-XS-aol-2h-t0-a0")
    return TrialId.parse(trial), int(number)


def device_share(gpus: float) -> float:
    """Devices an attempt is charged for: its GPUs (0.5 when two trials share one GPU), or one
    CPU slot when it runs without a GPU."""
    return gpus if gpus > 0 else 1.0


def device_hours(seconds: float, gpus: float) -> float:
    """The ledger's unit: device-seconds held times the devices charged, in hours."""
    return seconds * device_share(gpus) / 3600
