"""Running a sweep: Optuna asks (through Ray Tune's OptunaSearch), Ray Tune executes, the
Parquet dataset remembers.

``run_sweep`` is idempotent: it derives what is left from the Optuna journal (which trials
exist, with which hyperparameters) and the Parquet dataset (which attempts finished), and runs
only that. Each attempt checkpoints into ``attempts/<attempt_id>/``, so an attempt interrupted by
a killed driver resumes where its last checkpoint left it.
"""

from __future__ import annotations

import os
import platform
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from lipsweep.ledger import Ledger
from lipsweep.results import ended_for_good, partition_dir, read_attempts, write_attempt
from lipsweep.status_command import status_table
from lipsweep.sweep import (
    CellPlan,
    PlannedTrial,
    SweepConfig,
    cell_name,
    device_share,
    planned_trials,
)

# ----------------------------------------------------------------------------- the trainable


def finished_status(folder: Path, row: dict, attempt_id: str) -> str | None:
    """Status of an attempt already in the Parquet dataset, or None."""
    path = partition_dir(folder, "attempts", row) / f"{attempt_id}.parquet"
    if not path.exists():
        return None
    return str(pd.read_parquet(path, columns=["status"])["status"].iloc[0])


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
    """Ray Tune trainable: run a trial's attempts (retrying NaN with a new seed), write each
    attempt to the Parquet dataset, return the last one's metrics."""
    import torch

    from lipsweep.trial import TrialSpec, run_attempt

    trial = parameters["trial"]
    torch.set_num_threads(trial["cpus"])
    folder = Path(trial["folder"])
    ledger = Ledger(folder, trial["max_gpu_hours"])
    status, metrics = "failed", {}
    for attempt in range(trial["max_retries"] + 1):
        attempt_id = f"{trial['trial_id']}-a{attempt}"
        status = finished_status(folder, trial, attempt_id) or ""
        if status == "nan":
            continue
        if status:
            break
        spec = TrialSpec(**{**trial["spec"], "seed": retry_seed(trial["spec"]["seed"], attempt)})
        with ledger.reserve(attempt_id, trial["estimated_hours"]) as allowed:
            if not allowed:
                return {"status": "skipped_cap", "cra_36": float("nan")}
            outcome = run_attempt(spec, folder / "attempts" / attempt_id)
            row = attempt_row(trial, spec, outcome, attempt)
            write_attempt(folder, row, outcome.history)
        status, metrics = outcome.status, outcome.metrics
        if status != "nan":
            break
    return {"status": status, "cra_36": metrics.get("cra_36", float("nan"))}


def attempt_row(trial: dict[str, Any], spec: Any, outcome: Any, attempt: int) -> dict[str, Any]:
    """One Parquet row (lipsweep.results.ATTEMPT_SCHEMA) for a finished attempt."""
    import torch

    from lipsweep.measure import device_name

    train_s = outcome.train_seconds
    gpus = float(trial["gpus"])
    return {
        "sweep": trial["sweep"],
        "dataset": spec.dataset,
        "method": spec.method,
        "attempt_id": f"{trial['trial_id']}-a{attempt}",
        "trial_id": trial["trial_id"],
        "stage": trial["stage"],
        "size": spec.size,
        "budget": trial["budget"],
        "budget_s": trial["budget_s"],
        "trial_index": trial["index"],
        "attempt": attempt,
        "epochs_planned": spec.epochs,
        "epochs_done": outcome.epochs_done,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "lr": spec.lr,
        "weight_decay": spec.weight_decay,
        "seed": spec.seed,
        "batch_size": spec.batch_size,
        "status": outcome.status,
        "error": outcome.error,
        "eval_split": "val" if spec.stage == "search" else "test",
        **{
            k: outcome.metrics.get(k)
            for k in ("accuracy", "cra_36", "cra_72", "cra_108", "cra_255", "median_margin")
        },
        "seconds_per_epoch": outcome.seconds_per_epoch if outcome.history else None,
        "calibration": trial["calibration"],
        "train_throughput": (
            trial["train_examples"] * outcome.epochs_done / train_s if train_s > 0 else None
        ),
        "inference_throughput": outcome.inference_throughput,
        "train_peak_bytes": outcome.peak_bytes("train_peak_bytes"),
        "inference_peak_bytes": outcome.peak_bytes("inference_peak_bytes"),
        "device_seconds": outcome.device_seconds,
        "gpus": gpus,
        "gpu_hours": outcome.device_seconds * device_share(gpus) / 3600,
        "lipschitz_bound": outcome.lipschitz_bound,
        "device": device_name(torch.device(spec.device)),
        "versions": trial["versions"],
        "git_commit": trial["git_commit"],
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "started_at": pd.Timestamp(outcome.started_at),
        "ended_at": pd.Timestamp(outcome.ended_at),
    }


# ----------------------------------------------------------------------------- Tune side


def execute(
    config: SweepConfig,
    folder: Path,
    stage: str,
    tag: str,
    param_space: dict[str, Any],
    tune_config: Any,
) -> int:
    """Run one Tune experiment of the sweep's trainable, as many trials at once as fit;
    return how many trials the GPU-hour cap kept from starting. ``tag`` keeps the experiment
    names of concurrent jobs (one per cell) apart."""
    # Tune's newer console output ignores verbose=0; the legacy reporter honours it, and
    # `lipsweep status` shows progress instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    resources = {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources),
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=f"{stage}{tag}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str((folder / "tune").resolve()),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )
    results = tuner.fit()
    return sum(1 for r in results if (r.metrics or {}).get("status") == "skipped_cap")


def execute_grid(
    trials: list[dict[str, Any]], config: SweepConfig, folder: Path, stage: str, tag: str
) -> int:
    """Run ``trials`` (trainable parameter dicts), each once."""
    if not trials:
        return 0
    from ray import tune

    space = {"trial": tune.grid_search(trials)}
    return execute(
        config, folder, stage, tag, space, tune.TuneConfig(num_samples=1, reuse_actors=True)
    )


@dataclass
class SweepContext:
    """What every trial of this launch shares."""

    config: SweepConfig
    folder: Path
    plans: dict[str, CellPlan]
    train_examples: dict[tuple[str, str], int]  # (dataset, stage) -> examples per epoch
    versions: str
    git_commit: str
    tag: str = ""  # "-<cell>" when this process runs only some cells (one SLURM job per cell)

    def trial_parameters(self, planned: PlannedTrial, lr: float, wd: float, seed: int) -> dict:
        config = self.config
        device = "cuda" if config.gpus_per_trial > 0 else "cpu"
        return {
            "trial_id": planned.trial_id,
            "stage": planned.stage,
            "index": planned.index,
            "sweep": config.sweep_id,
            "dataset": planned.dataset,
            "method": planned.method,
            "budget": planned.budget,
            "budget_s": float(_seconds(planned.budget)),
            "folder": str(self.folder.resolve()),
            "cpus": config.cpus_per_trial,
            "gpus": config.gpus_per_trial,
            "max_retries": config.max_retries,
            "max_gpu_hours": config.max_gpu_hours,
            "calibration": config.calibration,
            "estimated_hours": planned.device_hours(config.gpus_per_trial),
            "train_examples": self.train_examples[(planned.dataset, planned.stage)],
            "versions": self.versions,
            "git_commit": self.git_commit,
            "spec": {
                "dataset": planned.dataset,
                "size": planned.size,
                "method": planned.method,
                "epochs": planned.epochs,
                "lr": lr,
                "weight_decay": wd,
                "seed": seed,
                "stage": planned.stage,
                "batch_size": config.batch_size,
                "eval_every": config.eval_every,
                "data_dir": config.data_dir,
                "device": device,
                "max_examples": config.max_examples,
                "checkpoint_every_epochs": config.checkpoint_every_epochs,
                "memory_limit_gib": config.memory_per_trial_gib,
            },
        }


def _seconds(budget: str) -> float:
    from lipsweep.budget import parse_budget

    return parse_budget(budget)


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


# ----------------------------------------------------------------------------- the protocol


def select_best(attempts: pd.DataFrame, dataset: str, size: str, method: str) -> pd.Series | None:
    """The completed search attempt with the best final-epoch validation CRA at 36/255 (ties:
    the lower trial index), or None if no search trial of the cell completed."""
    if attempts.empty:
        return None
    rows = attempts[
        (attempts["stage"] == "search")
        & (attempts["dataset"] == dataset)
        & (attempts["size"] == size)
        & (attempts["method"] == method)
        & (attempts["status"] == "completed")
        & (attempts["epochs_done"] == attempts["epochs_planned"])
    ]
    if rows.empty:
        return None
    return rows.sort_values(["cra_36", "trial_index"], ascending=[False, True]).iloc[0]


def final_seed(config: SweepConfig, planned: PlannedTrial) -> int:
    return random.Random(f"{config.seed}/{planned.trial_id}").randrange(1000)


def examples_per_epoch(config: SweepConfig, dataset: str, stage: str) -> int:
    from lipsweep.data import load_split

    data_dir = Path(config.data_dir) if config.data_dir else None
    count = len(load_split(dataset, "train", data_dir))
    if stage == "search":
        count -= max(1, round(0.1 * count))
    return min(count, config.max_examples) if config.max_examples else count


def live_status(folder: Path) -> RenderableType:
    """The status table, or a note while it cannot be read (never raises: it runs in the
    refresh thread of the live display)."""
    try:
        return status_table(folder)
    except Exception as error:  # a half-written folder must not stop the sweep
        return Text(f"status unavailable: {error}")


def run_sweep(
    config: SweepConfig,
    folder: Path,
    plans: list[CellPlan],
    console: Console,
    cells: list[str] | None = None,
) -> None:
    """Run (or finish) the sweep in ``folder``; Ray must already be initialised.

    ``cells`` (cell names) restricts the run to those cells, as one SLURM job per cell does:
    only their plans run and only their stale GPU-hour reservations are dropped, so jobs of
    other cells running at the same time keep theirs."""
    folder.mkdir(parents=True, exist_ok=True)
    if cells is not None:
        plans = [p for p in plans if cell_name(p.dataset, p.size, p.method) in cells]
    Ledger(folder, config.max_gpu_hours).clear_stale(cells)
    context = SweepContext(
        config,
        folder,
        {cell_name(p.dataset, p.size, p.method): p for p in plans},
        {
            (d, stage): examples_per_epoch(config, d, stage)
            for d in config.datasets
            for stage in ("search", "final")
        },
        software_versions(),
        git_commit(),
        "" if cells is None else "-" + "+".join(sorted(cells)),
    )
    planned = planned_trials(config, plans)
    # A live per-cell table while trials run (refreshed from the sweep's files every 5 s).
    with Live(
        get_renderable=lambda: live_status(folder),
        console=console,
        refresh_per_second=0.2,
        transient=True,
    ):
        run_search(context, [t for t in planned if t.stage == "search"], console)
        run_finals(context, [t for t in planned if t.stage == "final"], console)


def run_search(context: SweepContext, planned: list[PlannedTrial], console: Console) -> None:
    """Run every cell's missing search trials in one Tune experiment, asked from each cell's
    Optuna study through Ray Tune's OptunaSearch (lipsweep.search). A random sampler may be
    asked ahead; TPE is asked only when a slot is free, so it conditions on every result told
    by then."""
    from ray import tune

    from lipsweep.search import CellSearch, journal

    config, folder = context.config, context.folder
    attempts = read_attempts(folder)
    storage = journal(folder)
    cells = [
        search_cell(context, attempts, storage, [t for t in planned if cell_of(t) == cell])
        for cell in (cell_name(*key) for key in config.cells())
        if cell in context.plans
    ]
    pending = sum(cell.pending for cell in cells)
    console.print(f"search: {pending} trials to run over {len(cells)} cells")
    if pending == 0:
        return
    tune_config = tune.TuneConfig(
        reuse_actors=True,
        search_alg=CellSearch(cells),
        num_samples=pending,
        max_concurrent_trials=concurrent_slots(config) if config.sampler == "tpe" else None,
    )
    report_cap(execute(config, folder, "search", context.tag, {}, tune_config), config, console)


def cell_of(trial: PlannedTrial) -> str:
    return cell_name(trial.dataset, trial.size, trial.method)


def search_cell(
    context: SweepContext, attempts: pd.DataFrame, storage: Any, planned: list[PlannedTrial]
) -> Any:
    """A cell's search state (lipsweep.search.CellTrials) from its study and the Parquet
    dataset: which trial numbers ended, with what, and how to build a trial's parameters."""
    from lipsweep.search import SearchSettings, prepare_cell

    config = context.config
    first = planned[0]
    cell = cell_of(first)
    mine = (
        attempts[
            (attempts["stage"] == "search")
            & (attempts["dataset"] == first.dataset)
            & (attempts["size"] == first.size)
            & (attempts["method"] == first.method)
        ]
        if not attempts.empty
        else attempts
    )
    done = ended_for_good(mine, config.max_retries) if not mine.empty else mine
    ended = {int(r.trial_index): (str(r.status), float(r.cra_36)) for r in done.itertuples()}

    def trial_config(number: int, params: dict[str, Any]) -> dict[str, Any]:
        lr, wd, seed = params["lr"], params["weight_decay"], params["seed"]
        return context.trial_parameters(planned[number], lr, wd, int(seed))

    settings = SearchSettings(
        config.sampler, config.seed, config.trials, config.lr_range, config.weight_decay_range
    )
    return prepare_cell(cell, f"{config.sweep_id}/{cell}", storage, settings, ended, trial_config)


def concurrent_slots(config: SweepConfig) -> int:
    """How many trials Ray can run at once with this sweep's resources per trial."""
    import ray

    resources = ray.cluster_resources()
    if config.gpus_per_trial > 0:
        return max(1, int(resources.get("GPU", 0) / config.gpus_per_trial))
    return max(1, int(resources.get("CPU", 1) / config.cpus_per_trial))


def ended_search_trials(
    attempts: pd.DataFrame, config: SweepConfig, dataset: str, size: str, method: str
) -> int:
    """Search trials of a cell that ended for good: completed, failed, out of memory, or NaN
    with every retry used."""
    if attempts.empty:
        return 0
    mine = attempts[
        (attempts["stage"] == "search")
        & (attempts["dataset"] == dataset)
        & (attempts["size"] == size)
        & (attempts["method"] == method)
    ]
    return len(ended_for_good(mine, config.max_retries))


def run_finals(context: SweepContext, planned: list[PlannedTrial], console: Console) -> None:
    config = context.config
    attempts = read_attempts(context.folder)
    pending = []
    for trial in planned:
        ended = ended_search_trials(attempts, config, trial.dataset, trial.size, trial.method)
        if ended < config.trials:  # selecting now could pick other hyperparameters later
            console.print(
                f"[yellow]{trial.dataset}-{trial.size}-{trial.method}: search incomplete "
                f"({ended} of {config.trials} trials ended), no final run yet: "
                "`lipsweep resume` finishes it[/]"
            )
            continue
        best = select_best(attempts, trial.dataset, trial.size, trial.method)
        if best is None:
            console.print(
                f"[yellow]{trial.dataset}-{trial.size}-{trial.method}: no completed "
                "search trial, no final run[/]"
            )
            continue
        lr, wd = float(best["lr"]), float(best["weight_decay"])
        pending.append(context.trial_parameters(trial, lr, wd, final_seed(config, trial)))
    console.print(f"final: {len(pending)} runs")
    skipped = execute_grid(pending, config, context.folder, "final", context.tag)
    report_cap(skipped, config, console)


def report_cap(skipped: int, config: SweepConfig, console: Console) -> None:
    if skipped:
        console.print(
            f"[yellow]{skipped} trials not started: they would pass --max-gpu-hours "
            f"{config.max_gpu_hours:g}[/]"
        )


def load_model(folder: Path, dataset: str, size: str, method: str, budget: str | None = None):
    """The trained final-run model of a cell (the largest budget unless ``budget`` is given),
    in eval mode and ready to certify: rebuilt from its config, weights from its checkpoint."""
    import torch

    from lipsweep.model import build_model
    from lipsweep.trial import CHECKPOINT

    attempts = read_attempts(folder)
    finals = (
        attempts[
            (attempts["stage"] == "final")
            & (attempts["status"] == "completed")
            & (attempts["dataset"] == dataset)
            & (attempts["size"] == size)
            & (attempts["method"] == method)
        ]
        if not attempts.empty
        else attempts
    )
    if budget is not None and not finals.empty:
        finals = finals[finals["budget"] == budget]
    if finals.empty:
        raise FileNotFoundError(
            f"no completed final run of {method}-{size} on {dataset} in {folder}"
        )
    best = finals.sort_values("budget_s").iloc[-1]
    state = torch.load(
        folder / "attempts" / best["attempt_id"] / CHECKPOINT, map_location="cpu", weights_only=True
    )
    model = build_model(**state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval()
