"""The Ray Tune side of a trial: the typed task the driver hands a worker, the trainable that
runs its attempts into the Parquet dataset, and one Tune experiment per stage."""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from lipsweep.atomic import is_disk_full
from lipsweep.attempt import TrialSpec
from lipsweep.config import SweepConfig
from lipsweep.ledger import Ledger
from lipsweep.names import CAPPED, DISK_FULL, AttemptStatus, TrialId
from lipsweep.plan import PlannedTrial
from lipsweep.results.rows import Provenance


@dataclass(frozen=True)
class TrialTask:
    """One trial for a Ray worker: run its attempts (a NaN is retried with a new seed)."""

    folder: str
    trial: TrialId
    spec: TrialSpec  # the first attempt's; retries change only the seed
    gpus: float
    cpus: int
    max_retries: int
    max_gpu_hours: float | None
    estimated_hours: float  # reserved in the ledger while an attempt runs
    provenance: Provenance
    rung: int | None = None  # --search halving: the search trial's rung

    @property
    def partition(self) -> dict[str, str]:
        return {
            "sweep": self.provenance.sweep,
            "dataset": self.spec.dataset,
            "method": self.spec.method,
        }


def retry_seed(seed: int, attempt: int) -> int:
    """A new seed for a retried attempt, derived so a re-launch picks the same one."""
    if attempt == 0:
        return seed
    draw = random.Random(f"{seed}/{attempt}")
    new = draw.randrange(1000)
    while new == seed:  # a retry must not repeat the run that went NaN
        new = draw.randrange(1000)
    return new


def run_trial(parameters: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune trainable: ``run_attempts``, or ``DISK_FULL`` and the file it could not write
    if the disk is full (no row written: the trial is not over)."""
    try:
        return run_attempts(parameters)
    except OSError as error:
        if not is_disk_full(error):
            raise
        return {"status": DISK_FULL, "cra_36": float("nan"), "path": error.filename or ""}


def run_attempts(parameters: dict[str, Any]) -> dict[str, Any]:
    """Run a trial's attempts, write each attempt to the Parquet dataset, return the last
    one's status and validation CRA (``CAPPED`` if the cap kept it out)."""
    import torch

    from lipsweep.attempt import run_attempt
    from lipsweep.results.rows import attempt_row
    from lipsweep.results.store import attempt_status, write_attempt

    task: TrialTask = parameters["trial"]
    torch.set_num_threads(task.cpus)
    folder = Path(task.folder)
    ledger = Ledger(folder, task.max_gpu_hours)
    status, metrics = str(AttemptStatus.FAILED), {}
    for attempt in range(task.max_retries + 1):
        attempt_id = task.trial.attempt(attempt)
        status = attempt_status(folder, task.partition, attempt_id) or ""
        if status == AttemptStatus.NAN:
            continue
        if status:
            break
        spec = replace(task.spec, seed=retry_seed(task.spec.seed, attempt))
        with ledger.reserve(attempt_id, task.estimated_hours) as allowed:
            if not allowed:
                return {"status": CAPPED, "cra_36": float("nan")}
            outcome = run_attempt(spec, folder / "attempts" / attempt_id)
            row = attempt_row(
                task.trial, attempt, spec, outcome, task.gpus, task.provenance, rung=task.rung
            )
            write_attempt(folder, row, outcome.history)
        status, metrics = str(outcome.status), outcome.metrics
        if status != AttemptStatus.NAN:
            break
    return {"status": status, "cra_36": metrics.get("cra_36", float("nan"))}


def execute(
    config: SweepConfig, folder: Path, stage: str, tag: str, param_space: dict, tune_config: Any
) -> int:
    """Run one Tune experiment of ``run_trial``, as many trials at once as fit; return how many
    trials the GPU-hour cap kept from starting. ``tag`` keeps the experiment names of concurrent
    jobs (one per cell) apart."""
    # Tune's newer console output ignores verbose=0; the legacy reporter honours it, and
    # `lipsweep status` shows progress instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    name = f"{stage}{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = (folder / "tune").resolve()
    with DiskFullWatch(storage / name) as watch:
        tuner = tune.Tuner(
            tune.with_resources(run_trial, resources),
            param_space=param_space,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=1),
                stop=watch,
                verbose=0,
            ),
        )
        results = tuner.fit()
    return sum(1 for r in results if (r.metrics or {}).get("status") == CAPPED)


class DiskFullWatch(Stopper):
    """Ends the experiment at the first full disk, a trial's (it reports ``DISK_FULL``) or
    Tune's own (saving its experiment state failed): every other trial would hit it too. The
    running ones are stopped and, like the one that hit it, resume later. ``path``: what could
    not be written. Tune's log records about it are dropped: on leaving the ``with`` block, a
    full disk is one ``OSError`` (ENOSPC) naming a path."""

    TUNE_LOGGERS = ("execution.experiment_state", "analysis.experiment_analysis")

    def __init__(self, experiment: Path) -> None:
        self.experiment = experiment
        self.path: str | None = None

    def loggers(self) -> list[logging.Logger]:
        return [logging.getLogger(f"ray.tune.{name}") for name in self.TUNE_LOGGERS]

    def __enter__(self) -> DiskFullWatch:
        for logger in self.loggers():
            logger.addFilter(self.filter)
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        for logger in self.loggers():
            logger.removeFilter(self.filter)
        full = errno.ENOSPC, os.strerror(errno.ENOSPC)
        if isinstance(error, OSError) and is_disk_full(error) and not error.filename:
            raise OSError(*full, str(self.experiment)) from error  # Tune's own files
        if error is None and self.path is not None:
            raise OSError(*full, self.path)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if result.get("status") == DISK_FULL and self.path is None:
            self.path = result.get("path") or str(self.experiment)
        return False

    def stop_all(self) -> bool:
        return self.path is not None

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record of a full disk, and for any once the disk is full (a trial
        stopped for it has no metrics: Tune warns about that)."""
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and is_disk_full(error) and self.path is None:
            self.path = getattr(error, "filename", None) or str(self.experiment)
        return self.path is None


def execute_grid(
    tasks: list[TrialTask], config: SweepConfig, folder: Path, stage: str, tag: str
) -> int:
    """Run each of ``tasks`` once."""
    if not tasks:
        return 0
    from ray import tune

    space = {"trial": tune.grid_search(tasks)}
    return execute(
        config, folder, stage, tag, space, tune.TuneConfig(num_samples=1, reuse_actors=True)
    )


def concurrent_slots(config: SweepConfig) -> int:
    """How many trials Ray can run at once with this sweep's resources per trial."""
    import ray

    resources = ray.cluster_resources()
    if config.gpus_per_trial > 0:
        return max(1, int(resources.get("GPU", 0) / config.gpus_per_trial))
    return max(1, int(resources.get("CPU", 1) / config.cpus_per_trial))


@dataclass(frozen=True)
class Launch:
    """What every trial of one driver's run shares (``tag``: "-<cell>" when it runs only some
    cells, as one SLURM job per cell does)."""

    config: SweepConfig
    folder: Path
    provenance: Provenance
    tag: str = ""

    def task(
        self,
        planned: PlannedTrial,
        lr: float,
        wd: float,
        seed: int,
        temperature: float | None = None,
        offset: float | None = None,
    ) -> TrialTask:
        """The trial's task; ``temperature`` and ``offset`` of the loss default to the paper's."""
        config = self.config
        loss = {"loss_temperature": temperature, "loss_offset": offset}
        spec = TrialSpec(
            dataset=planned.cell.dataset,
            size=planned.cell.size,
            method=planned.cell.method,
            epochs=planned.epochs,
            lr=lr,
            weight_decay=wd,
            seed=seed,
            stage=planned.stage,
            batch_size=config.batch_size,
            eval_every=config.eval_every,
            data_dir=config.data_dir,
            device=config.device,
            max_examples=config.max_examples,
            checkpoint_every_epochs=config.checkpoint_every_epochs,
            memory_limit_gib=config.memory_per_trial_gib,
            **{key: value for key, value in loss.items() if value is not None},
        )
        return TrialTask(
            folder=str(self.folder.resolve()),
            trial=planned.id,
            spec=spec,
            gpus=config.gpus_per_trial,
            cpus=config.cpus_per_trial,
            max_retries=config.max_retries,
            max_gpu_hours=config.max_gpu_hours,
            estimated_hours=planned.device_hours(config.gpus_per_trial),
            provenance=self.provenance,
            rung=planned.rung,
        )
