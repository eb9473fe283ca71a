"""The SLURM backend: one job-array task per cell, submitted with submitit.

A cell (dataset, size, method) is the protocol's independent unit: its search trials, the
selection and its final runs need nothing from other cells. So each cell becomes one task of one
job array (``array_parallelism`` bounds how many run at once). This module is the submit side;
what a task runs is ``jobs.cell.CellJob`` (Ray local to its allocation, then the runner
restricted to its cell). Everything durable stays in the sweep folder (Optuna journal, Parquet,
checkpoints), so a requeued, preempted or cancelled task that runs again does only what is
missing and resumes interrupted attempts from their checkpoints.

Files: ``<out>/slurm/`` is submitit's folder (flat: Slurm 22.05 loses array logs whose folder
does not exist yet; mode 0700: it holds the pickled jobs that the tasks unpickle, so nobody else
may write there) and ``<out>/slurm/jobs.json`` maps each cell to its job ids.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from jobs.cell import CellJob
from lipsweep.atomic import write_text_atomic
from lipsweep.audit import gate_plugins
from lipsweep.backends.base import Monitor, check_inputs, existing_config, prepare
from lipsweep.calibrate import Progress
from lipsweep.config import SlurmOptions, SweepConfig, time_minutes
from lipsweep.errors import InputError
from lipsweep.lock import driver_lock
from lipsweep.names import Cell
from lipsweep.plan import CellPlan
from lipsweep.results.store import ended_for_good, read_attempts

JOBS_FILE = "jobs.json"
ALIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


def slurm_folder(out: Path) -> Path:
    return out / "slurm"


def make_executor(out: Path, options: SlurmOptions, name: str) -> Any:
    """submitit's SLURM executor with the options as sbatch parameters."""
    import submitit

    folder = slurm_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    executor = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=options.max_num_timeout
    )
    parameters: dict[str, Any] = {
        "name": name,
        "timeout_min": time_minutes(options.time),
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": options.cpus_per_task,
        "slurm_array_parallelism": options.array_parallelism,
    }
    if options.gpus_per_node:
        parameters["gpus_per_node"] = options.gpus_per_node
    for key in ("partition", "mem", "account", "qos", "constraint"):
        if getattr(options, key) is not None:
            parameters[f"slurm_{key}"] = getattr(options, key)
    executor.update_parameters(**parameters)
    return executor


def read_jobs(out: Path) -> dict[str, list[str]]:
    """cell name -> its SLURM job ids, oldest first (empty if the sweep never used SLURM)."""
    path = slurm_folder(out) / JOBS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(
            f"{path} is damaged ({error}): restore it, or cancel the sweep's jobs by hand"
        ) from None


def write_jobs(out: Path, jobs: dict[str, list[str]]) -> None:
    write_text_atomic(slurm_folder(out) / JOBS_FILE, json.dumps(jobs, indent=1))


def all_job_states() -> dict[str, str]:
    """job id -> SLURM state for every job the controller remembers (MinJobAge), from one
    ``scontrol show job`` call: array tasks as ``<array job>_<task>``, as submitit names them.
    Empty where no SLURM client is installed."""
    if shutil.which("scontrol") is None:
        return {}
    answer = subprocess.run(
        ["scontrol", "show", "job", "-o"], capture_output=True, text=True, check=False
    )
    states = {}
    for line in answer.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" not in fields or "JobState" not in fields:
            continue
        states[fields["JobId"]] = fields["JobState"]
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId", "").isdigit():
            states[f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"] = fields["JobState"]
    return states


def job_label(out: Path, job_id: str, state: str | None) -> str:
    """A job's state for `lipsweep status`; once SLURM forgot the job, submitit's result file
    tells a finished job from one that ended without a result (cancelled, killed)."""
    if state is None:
        done = (slurm_folder(out) / f"{job_id}_0_result.pkl").exists()
        state = "ENDED" if done else "GONE"
    return f"{job_id} {state}"


def latest_jobs(out: Path) -> dict[str, str]:
    return {cell: ids[-1] for cell, ids in read_jobs(out).items() if ids}


def alive_cells(out: Path, states: dict[str, str]) -> set[str]:
    """Cells whose latest job is still queued or running."""
    return {cell for cell, job_id in latest_jobs(out).items() if states.get(job_id, "") in ALIVE}


def finished_cells(config: SweepConfig, out: Path) -> set[str]:
    """Cells whose every final run has ended for good (completed, failed, out of memory, or
    NaN with its retries used up): a relaunch need not start a job for them."""
    attempts = read_attempts(out)
    if attempts.empty:
        return set()
    finals = ended_for_good(attempts[attempts["stage"] == "final"], config.max_retries)
    if finals.empty:
        return set()
    ended = finals.groupby(["dataset", "size", "method"])["trial_id"].nunique()
    wanted = len(config.budgets) * config.final_seeds
    return {Cell(*key).name for key, count in ended.items() if count == wanted}


def submit_cells(
    config: SweepConfig, out: Path, plans: dict[Cell, CellPlan | None], options: SlurmOptions
) -> dict[str, str]:
    """Submit one job-array task per cell that has no live job; record the ids; return them."""
    skip = alive_cells(out, all_job_states()) | finished_cells(config, out)
    cells = [cell for cell in plans if cell.name not in skip]
    if not cells:
        return {}
    executor = make_executor(out, options, f"lipsweep-{config.sweep_id}")
    with executor.batch():
        jobs = [executor.submit(CellJob(out, config, cell, plans[cell])) for cell in cells]
    submitted = {cell.name: job.job_id for cell, job in zip(cells, jobs, strict=True)}
    recorded = read_jobs(out)
    for cell, job_id in submitted.items():
        recorded.setdefault(cell, []).append(job_id)
    write_jobs(out, recorded)
    return submitted


def wait_for_jobs(out: Path, job_ids: list[str], timeout_s: float, poll_s: float = 2.0) -> None:
    """Block until none of ``job_ids`` is queued or running (TimeoutError after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = all_job_states()
        if not any(states.get(j, "") in ALIVE for j in job_ids):
            return
        time.sleep(poll_s)
    raise TimeoutError(f"SLURM jobs {job_ids} still running after {timeout_s:.0f} s")


class SlurmBackend:
    """Validate and (where no GPU is needed) calibrate here, then submit the cells and return."""

    def __init__(self, options: SlurmOptions) -> None:
        self.options = options

    def launch(
        self, config: SweepConfig, out: Path, monitor: Monitor, progress: Progress | None = None
    ) -> None:
        if shutil.which("sbatch") is None:
            raise InputError(
                "--backend slurm needs SLURM's sbatch on this machine's PATH: run from a login node"
            )
        check_inputs(existing_config(config, out), out)
        gate_plugins(config.methods)
        # From before calibration and the first write: two submissions at once would
        # calibrate twice, rewrite each other's plans and submit every cell twice.
        with driver_lock(out):
            submitted = self.prepare_and_submit(config, out, monitor, progress)
        for cell, job_id in submitted.items():
            monitor(f"{cell}: SLURM job {job_id}")
        if not submitted:
            monitor(
                "no cell to submit: every cell is finished or already has a queued or running job"
            )
        monitor(f"follow it with `lipsweep status {out}`; logs in {slurm_folder(out)}")

    def prepare_and_submit(
        self, config: SweepConfig, out: Path, monitor: Monitor, progress: Progress | None
    ) -> dict[str, str]:
        here = config.gpus_per_trial == 0 or config.calibration == "paper-a100"
        config, calibrated, notes = prepare(config, out, progress, calibrate=here)
        for note in notes:
            monitor(note)
        plans: dict[Cell, CellPlan | None] = (
            {p.cell: p for p in calibrated} if here else dict.fromkeys(config.cells())
        )
        return submit_cells(config, out, plans, self.options)

    def job_states(self, out: Path) -> dict[Cell, str]:
        latest = latest_jobs(out)
        if not latest:
            return {}
        states = all_job_states()
        return {
            Cell.parse(cell): job_label(out, job_id, states.get(job_id))
            for cell, job_id in latest.items()
        }

    def cancel(self, out: Path) -> list[str]:
        """scancel every live job of the sweep, by id; return the ids cancelled."""
        ids = [job_id for cell_ids in read_jobs(out).values() for job_id in cell_ids]
        states = all_job_states()
        live = [job_id for job_id in ids if states.get(job_id, "") in ALIVE]
        if live:
            subprocess.run(["scancel", *live], check=True)
        return live
