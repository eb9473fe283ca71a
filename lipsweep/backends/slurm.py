"""`lipsweep launch --backend slurm`: one SLURM job per cell, submitted with submitit.

A cell (dataset, size, method) is the protocol's independent unit: its search trials, the
selection and its final runs need nothing from other cells. So each cell becomes one task of one
job array (``--array-parallelism`` bounds how many run at once). This module is the submit side;
what a task runs is ``jobs.cell.CellJob`` (Ray local to its allocation, then ``engine.run_sweep``
restricted to its cell). Everything durable stays in the sweep folder (Optuna journal, Parquet,
checkpoints), so a requeued, preempted or cancelled task that runs again does only what is
missing and resumes interrupted attempts from their checkpoints.

Files: ``<out>/slurm/`` is submitit's folder (flat: Slurm 22.05 loses array logs whose folder
does not exist yet) and ``<out>/slurm/jobs.json`` maps each cell to its job ids.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from jobs.cell import CellJob
from lipsweep.sweep import CellPlan, SweepConfig, cell_name, save_plan

JOBS_FILE = "jobs.json"


@dataclass(frozen=True)
class SlurmOptions:
    """The sbatch resources of every cell's job (None: the cluster's default)."""

    partition: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str | None = None  # sbatch --mem, e.g. "16G"
    time: str = "24:00:00"  # sbatch --time: MM, HH:MM:SS, D-HH, D-HH:MM[:SS]
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 256
    max_num_timeout: int = 3  # requeues after a time limit, per job

    @staticmethod
    def from_file(path: Path) -> SlurmOptions:
        """Options from a TOML or JSON file (keys as the fields, or under [slurm])."""
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        data = data.get("slurm", data)
        known = {f.name for f in fields(SlurmOptions)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"{path}: unknown SLURM options {sorted(unknown)}; known: {sorted(known)}"
            )
        return SlurmOptions(**data)

    def with_overrides(self, **changes: Any) -> SlurmOptions:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def time_minutes(text: str) -> int:
    """sbatch --time in minutes: "30", "2:00:00", "1-00", "1-12:00", "1-12:00:00"."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ValueError(f"--time {text!r}: use MM, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is None and second is None:
        return first  # plain minutes
    if days is None and third is None:
        return first + (second or 0) // 60  # MM:SS
    hours, minutes, seconds = first, second or 0, third or 0
    return (days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def slurm_folder(out: Path) -> Path:
    return out / "slurm"


def make_executor(out: Path, options: SlurmOptions, name: str) -> Any:
    """submitit's SLURM executor with the options as sbatch parameters."""
    import submitit

    executor = submitit.AutoExecutor(
        folder=slurm_folder(out), cluster="slurm", slurm_max_num_timeout=options.max_num_timeout
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


# ----------------------------------------------------------------------------- submit side


def read_jobs(out: Path) -> dict[str, list[str]]:
    """cell -> its SLURM job ids, oldest first (empty if the sweep never used SLURM)."""
    path = slurm_folder(out) / JOBS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_jobs(out: Path, jobs: dict[str, list[str]]) -> None:
    path = slurm_folder(out) / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(jobs, indent=1))
    temporary.replace(path)


def job_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> SLURM state (PENDING, RUNNING, CANCELLED, COMPLETED, ...), from scontrol,
    which remembers ended jobs for MinJobAge; unknown ids are absent."""
    states = {}
    for job_id in job_ids:
        answer = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False
        )
        match = re.search(r"JobState=(\S+)", answer.stdout)
        if answer.returncode == 0 and match:
            states[job_id] = match.group(1)
    return states


def job_label(out: Path, job_id: str, state: str | None) -> str:
    """A job's state for `lipsweep status`; once SLURM forgot the job, submitit's result file
    tells a finished job from one that ended without a result (cancelled, killed)."""
    if state is None:
        done = (slurm_folder(out) / f"{job_id}_0_result.pkl").exists()
        state = "ENDED" if done else "GONE"
    return f"{job_id} {state}"


ALIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


def alive_cells(out: Path) -> set[str]:
    """Cells whose latest job is still queued or running."""
    jobs = read_jobs(out)
    latest = {cell: ids[-1] for cell, ids in jobs.items() if ids}
    states = job_states(list(latest.values()))
    return {cell for cell, job_id in latest.items() if states.get(job_id, "") in ALIVE}


def finished_cells(config: SweepConfig, out: Path) -> set[str]:
    """Cells whose every final run has ended for good (completed, failed, out of memory, or
    NaN with its retries used up): a relaunch need not start a job for them."""
    from lipsweep.results import ended_for_good, read_attempts

    attempts = read_attempts(out)
    if attempts.empty:
        return set()
    finals = ended_for_good(attempts[attempts["stage"] == "final"], config.max_retries)
    ended = finals.groupby(["dataset", "size", "method"])["budget"].nunique()
    return {cell_name(*key) for key, count in ended.items() if count == len(config.budgets)}


def submit_sweep(
    config: SweepConfig, out: Path, plans: dict[str, CellPlan | None], options: SlurmOptions
) -> dict[str, str]:
    """Submit one job-array task per cell that has no live job; record the ids; return them."""
    skip = alive_cells(out) | finished_cells(config, out)
    cells = [cell for cell in plans if cell not in skip]
    if not cells:
        return {}
    executor = make_executor(out, options, f"lipsweep-{config.sweep_id}")
    with executor.batch():
        jobs = [executor.submit(CellJob(out, config, cell, plans[cell])) for cell in cells]
    submitted = {cell: job.job_id for cell, job in zip(cells, jobs, strict=True)}
    recorded = read_jobs(out)
    for cell, job_id in submitted.items():
        recorded.setdefault(cell, []).append(job_id)
    write_jobs(out, recorded)
    (slurm_folder(out) / "options.json").write_text(json.dumps(asdict(options), indent=1))
    return submitted


def cancel_sweep(out: Path) -> list[str]:
    """scancel every live job of the sweep, by id; return the ids cancelled."""
    jobs = read_jobs(out)
    ids = [job_id for cell_ids in jobs.values() for job_id in cell_ids]
    states = job_states(ids)
    live = [job_id for job_id in ids if states.get(job_id, "") in ALIVE]
    if live:
        subprocess.run(["scancel", *live], check=True)
    return live


def wait_for_jobs(out: Path, job_ids: list[str], timeout_s: float, poll_s: float = 2.0) -> None:
    """Block until none of ``job_ids`` is queued or running (TimeoutError after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = job_states(job_ids)
        if not any(states.get(j, "") in ALIVE for j in job_ids):
            return
        time.sleep(poll_s)
    raise TimeoutError(f"SLURM jobs {job_ids} still running after {timeout_s:.0f} s")


def launch_slurm(
    config: SweepConfig, out: Path, options: SlurmOptions, console: Console
) -> dict[str, str]:
    """Validate the sweep here, then submit its cells. Calibration runs here when it needs no
    GPU (CPU trials or the paper's A100 numbers), else inside each cell's job."""
    from lipsweep.launch_command import check_inputs, existing_config, validated_plans

    time_minutes(options.time)  # a bad --time fails here, before calibration
    config = existing_config(config, out)
    check_inputs(config, out)
    names = [cell_name(*key) for key in config.cells()]
    plans: dict[str, CellPlan | None] = dict.fromkeys(names)
    if config.gpus_per_trial == 0 or config.calibration == "paper-a100":
        calibrated = validated_plans(config, out, console)
        plans = {cell_name(p.dataset, p.size, p.method): p for p in calibrated}
    config.save(out)
    for plan in plans.values():
        if plan is not None:
            save_plan(out, plan)
    submitted = submit_sweep(config, out, plans, options)
    for cell, job_id in submitted.items():
        console.print(f"{cell}: SLURM job {job_id}")
    if not submitted:
        console.print(
            "no cell to submit: every cell is finished or already has a queued or running job"
        )
    console.print(f"follow it with `lipsweep status {out}`; logs in {slurm_folder(out)}")
    return submitted
