"""The one builder of an attempt's row (``ATTEMPT_SCHEMA``), and the provenance every row keeps."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lipsweep.budget import Budget
from lipsweep.names import TrialId, device_hours

if TYPE_CHECKING:
    from lipsweep.attempt import Outcome, TrialSpec

METRIC_KEYS = ("accuracy", "cra_36", "cra_72", "cra_108", "cra_255", "median_margin")


@dataclass(frozen=True)
class Provenance:
    """What every row of a launch shares: its sweep, how epochs were planned, the software."""

    sweep: str
    calibration: str
    versions: str
    git_commit: str

    @staticmethod
    def of_this_process(sweep: str, calibration: str) -> Provenance:
        return Provenance(sweep, calibration, software_versions(), git_commit())


def attempt_row(
    trial: TrialId,
    attempt: int,
    spec: TrialSpec,
    outcome: Outcome,
    gpus: float,
    prov: Provenance,
    rung: int | None = None,
) -> dict[str, Any]:
    """One Parquet row for a finished attempt (``rung``: of a halving search's trial)."""
    import torch

    from lipsweep.measure import device_name

    train_s = outcome.train_seconds
    examples = outcome.train_examples * outcome.epochs_done
    return {
        "sweep": prov.sweep,
        "dataset": spec.dataset,
        "method": spec.method,
        "attempt_id": trial.attempt(attempt),
        "trial_id": str(trial),
        "stage": trial.stage,
        "size": spec.size,
        "budget": trial.budget,
        "budget_s": Budget.parse(trial.budget).seconds,
        "trial_index": trial.index,
        "attempt": attempt,
        "epochs_planned": spec.epochs,
        "epochs_done": outcome.epochs_done,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "lr": spec.lr,
        "weight_decay": spec.weight_decay,
        "seed": spec.seed,
        "rung": rung,
        "loss_temperature": spec.loss_temperature,
        "loss_offset": spec.loss_offset,
        "batch_size": spec.batch_size,
        "status": str(outcome.status),
        "error": outcome.error,
        "eval_split": "val" if spec.stage == "search" else "test",
        **{k: outcome.metrics.get(k) for k in METRIC_KEYS},
        "seconds_per_epoch": outcome.seconds_per_epoch if outcome.history else None,
        "calibration": prov.calibration,
        "train_throughput": examples / train_s if train_s > 0 else None,
        "inference_throughput": outcome.inference_throughput,
        "train_peak_bytes": outcome.peak_bytes("train_peak_bytes"),
        "inference_peak_bytes": outcome.peak_bytes("inference_peak_bytes"),
        "device_seconds": outcome.device_seconds,
        "train_seconds": outcome.train_seconds,
        "eval_seconds": outcome.eval_seconds,
        "certify_seconds": outcome.certify_seconds,
        "gpus": float(gpus),
        "gpu_hours": device_hours(outcome.device_seconds, gpus),
        "lipschitz_bound": outcome.lipschitz_bound,
        "certified_lipschitz": outcome.certified_lipschitz,
        "float32_logit_deviation": outcome.float32_logit_deviation,
        "device": device_name(torch.device(spec.device)),
        "versions": prov.versions,
        "git_commit": prov.git_commit,
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_node": os.environ.get("SLURMD_NODENAME", ""),
        "started_at": pd.Timestamp(outcome.started_at),
        "ended_at": pd.Timestamp(outcome.ended_at),
    }


def software_versions() -> str:
    names = ("torch", "ray", "optuna", "pyarrow", "lipsweep")
    found = [f"{n}={metadata.version(n)}" for n in names if _installed(n)]
    return " ".join([f"python={platform.python_version()}", *found])


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def git_commit() -> str:
    answer = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent,
    )
    return answer.stdout.strip() if answer.returncode == 0 else ""
