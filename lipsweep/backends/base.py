"""What every backend shares: the Backend protocol, and the checks and calibration a sweep
goes through before anything runs (nothing is written until they pass)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from lipsweep.atomic import write_text_atomic
from lipsweep.audit import gate_plugins
from lipsweep.calibrate import Progress, make_plans
from lipsweep.config import CONFIG_FILE, SweepConfig
from lipsweep.errors import InputError
from lipsweep.names import Cell
from lipsweep.plan import CellPlan, check_cap, planned_trials, save_plan

Monitor = Callable[[str], None]  # one line of news for whoever watches
AUDIT_FILE = "audit.json"  # the Lipschitz audit of each plug-in layer the sweep uses


class Backend(Protocol):
    """Where a sweep's trials run: ``launch`` runs (or submits) the sweep, ``job_states`` gives
    each cell's job state in one query (empty where jobs are not a thing), ``cancel`` stops
    the sweep's jobs."""

    def launch(
        self, config: SweepConfig, out: Path, monitor: Monitor, progress: Progress | None
    ) -> None: ...

    def job_states(self, out: Path) -> dict[Cell, str]: ...

    def cancel(self, out: Path) -> list[str]: ...


def check_writable(folder: Path) -> None:
    """Fail early, creating nothing, if ``folder`` could not be created or written: the
    nearest existing folder on its path must be a writable directory."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "not a folder" if not existing.is_dir() else "not writable"
        raise InputError(f"cannot write to {folder}: {existing} is {reason}; choose another --out")


def check_inputs(config: SweepConfig, out: Path) -> None:
    """Everything that can be checked before any work: data present, --out writable."""
    from lipsweep.data import dataset_folder

    data_dir = Path(config.data_dir) if config.data_dir else None
    for dataset in config.datasets:
        if dataset != "digits":
            try:
                dataset_folder(dataset, data_dir)
            except FileNotFoundError as error:
                raise InputError(str(error)) from None
    check_writable(out)


def existing_config(config: SweepConfig, out: Path) -> SweepConfig:
    """The config to run: a new one, or the stored one if ``out`` already holds this sweep."""
    if not (out / CONFIG_FILE).exists():
        return config
    stored = SweepConfig.load(out)
    if asdict(stored) != asdict(config):
        changed = [k for k, v in asdict(config).items() if asdict(stored)[k] != v]
        raise InputError(
            f"{out} holds a sweep with other settings ({', '.join(changed)}): "
            f"run `lipsweep resume {out}` or choose another --out"
        )
    return stored


def prepare(
    config: SweepConfig, out: Path, progress: Progress | None = None, calibrate: bool = True
) -> tuple[SweepConfig, list[CellPlan], list[str]]:
    """Check, calibrate and store a sweep: (config, plans, notes). Nothing is written before
    every check passed. ``calibrate=False`` leaves cells without a stored plan to their job."""
    config = existing_config(config, out)
    check_inputs(config, out)
    audits = gate_plugins(config.methods)  # a user's layer is audited before anything is written
    plans, notes = make_plans(config, out, progress) if calibrate else ([], [])
    check_cap(config, planned_trials(config, plans))
    config.save(out)
    if audits:
        write_text_atomic(out / AUDIT_FILE, json.dumps(audits, indent=1))
    for plan in plans:
        save_plan(out, plan)
    return config, plans, notes
