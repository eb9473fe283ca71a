"""The job entry point submitit runs: ``CellJob``, one cell's search and final stage on Ray started
inside the job.

``lipsweep launch --backend slurm`` pickles one ``CellJob`` per cell (lipsweep.backends.slurm);
this module imports only what is below the backends (the runner and the stages).
each array task runs ``python -u -m submitit.core._submit <out>/slurm``, which unpickles and calls
it. ``lipsweep slurm-cell DIR CELL`` (jobs/lipsweep_cell.sbatch) calls the same class by hand.

Preemption and time limits: SLURM sends SIGUSR2 (submitit's ``--signal=USR2@90``, or
``preempt_send_user_signal``) to every process of the job step, and submitit's handler in this
process calls ``CellJob.checkpoint``, stores the ``DelayedSubmission`` it returns and runs
``scontrol requeue``. The requeued task calls the same ``CellJob`` again: finished attempts are
skipped, interrupted ones resume from their last checkpoint. Ray's own processes (GCS, raylet,
workers running the trials) get the signal too, and SIGUSR2's default action ends a process, so
they are started with it ignored (``start_ray``): the trials keep training until the job ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lipsweep.calibrate import plan_cell
from lipsweep.config import SweepConfig
from lipsweep.lock import cell_lock
from lipsweep.names import Cell
from lipsweep.plan import CellPlan, check_epochs, load_plan, planned_trials, save_plan
from lipsweep.process import process_alive

# What SLURM sends before a preemption or the time limit (submitit's --signal=USR2@90).
CHECKPOINT_SIGNAL = signal.SIGUSR2


def allocation_gpus() -> int:
    """GPUs this job may use (CUDA_VISIBLE_DEVICES, set by SLURM's gres)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in visible.split(",") if d.strip()])


def allocation_cpus() -> int:
    return int(os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE") or 1)


@contextmanager
def ignored_by_children(signum: int) -> Iterator[None]:
    """Processes started inside the block ignore ``signum`` (an ignored disposition survives fork
    and exec, so the processes they start ignore it too), while this process keeps its handler.
    The signal is blocked meanwhile, so one that arrives in the block is delivered afterwards,
    not lost."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})


def start_ray(temp: Path) -> None:
    """Ray local to this job: its own short temp dir, the allocation's CPUs and GPUs, bound to
    127.0.0.1 (never 0.0.0.0), no dashboard; its processes ignore the checkpoint signal."""
    from lipsweep.ray_local import start_local_ray

    with ignored_by_children(CHECKPOINT_SIGNAL):
        start_local_ray(allocation_cpus(), allocation_gpus(), temp)


def ray_temp_dir() -> Path:
    """Short (Ray's socket paths are limited) and unique even when two test clusters on one
    machine both number their jobs from 1."""
    return Path(f"/tmp/r{os.environ.get('SLURM_JOB_ID', '')}_{os.getpid()}")


def remove_stale_temp_dirs() -> list[Path]:
    """Remove the Ray temp dirs earlier runs of this job left on this node, and return them. A
    run that a requeue, a preemption or a cancellation ends is killed by SLURM before it can
    remove its own; the requeued job has the same id. A dir whose process is alive stays."""
    job_id = os.environ.get("SLURM_JOB_ID")
    stale = []
    for path in Path("/tmp").glob(f"r{job_id}_*") if job_id else []:
        pid = path.name.rpartition("_")[2]
        if pid.isdigit() and int(pid) > 1 and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            stale.append(path)
    return stale


def log_line(line: str) -> None:
    """Plain timestamped progress for the job's log (no live table in a batch job)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)


class CellJob:
    """What each SLURM task runs: one cell's search and final stage, on Ray local to the job.

    ``checkpoint`` makes submitit requeue the job on preemption or time limit (the same cell
    again: finished attempts are skipped, interrupted ones resume from their checkpoints)."""

    def __init__(self, out: Path, config: SweepConfig, cell: Cell, plan: CellPlan | None) -> None:
        self.out = Path(out).resolve()
        self.config = config
        self.cell = cell
        self.plan = plan  # None: calibrate inside the job (a GPU cell on a CPU login node)

    def __call__(self) -> str:
        import ray

        from lipsweep.runner import run_sweep

        if self.cell not in self.config.cells():
            raise ValueError(f"{self.cell} is not a cell of sweep {self.config.sweep_id}")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        remove_stale_temp_dirs()
        temp = ray_temp_dir()
        # One task per cell, even by hand: the lock covers calibration and the plan's write too.
        with cell_lock(self.out, self.cell.name):
            plan = self.plan or self._calibrate()
            start_ray(temp)
            try:
                run_sweep(self.config, self.out, [plan], cells=[self.cell], monitor=log_line)
            finally:
                ray.shutdown()
                shutil.rmtree(temp, ignore_errors=True)
        return self.cell.name

    def _calibrate(self) -> CellPlan:
        stored = load_plan(self.out, self.cell)
        if stored is not None:  # a requeued job keeps the epochs the cell started with
            return stored
        plan = plan_cell(self.config, self.cell)
        check_epochs(planned_trials(self.config, [plan]))
        save_plan(self.out, plan)
        return plan

    def checkpoint(self) -> Any:
        """Requeue this cell (submitit calls it on SIGUSR2 before a preemption or time limit).
        Every attempt checkpoints as it trains, so nothing needs saving here."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)
