"""`lipsweep train`: plan one attempt's epochs from a budget, run it with a progress bar."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lipsweep.budget import format_budget
from lipsweep.measure import CalibrationCache, calibrate_cell, default_cache_dir, paper_epochs
from lipsweep.trial import Outcome, TrialSpec, load_data, run_attempt


@dataclass
class TrainRequest:
    method: str
    size: str
    dataset: str
    budget_s: float
    lr: float
    weight_decay: float
    seed: int
    epochs: int | None
    calibration: str
    stage: str
    batch_size: int
    eval_every: int
    device: str
    data_dir: Path | None
    out: Path
    checkpoint_every: int = 10
    max_examples: int | None = None


def plan_epochs(request: TrainRequest, train_examples: int) -> tuple[int, str]:
    """(epochs, how they were obtained); raises ValueError when the budget is too short."""
    if request.epochs is not None:
        return request.epochs, "given by --epochs"
    if request.calibration == "paper-a100":
        epochs = paper_epochs(request.dataset, request.size, request.method, request.budget_s)
        how = "the paper's A100 epoch table"
    else:
        cache = CalibrationCache(default_cache_dir() / "calibrations.json")
        calibration = calibrate_cell(
            request.dataset,
            request.size,
            request.method,
            request.batch_size,
            train_examples,
            torch.device(request.device),
            cache,
        )
        epochs = calibration.epochs(request.budget_s)
        how = f"{calibration.seconds_per_epoch:.2f} s/epoch measured on {calibration.device}"
    if epochs < 1:
        raise ValueError(
            f"a budget of {format_budget(request.budget_s)} is shorter than one epoch "
            f"({how}): give a longer --budget or --epochs"
        )
    return epochs, how


def run_train(request: TrainRequest, console: Console) -> int:
    """Run the attempt; 0 if it completed, 1 otherwise (its status says why)."""
    spec_data = TrialSpec(
        dataset=request.dataset,
        size=request.size,
        method=request.method,
        epochs=1,
        lr=request.lr,
        weight_decay=request.weight_decay,
        seed=request.seed,
        stage=request.stage,  # type: ignore[arg-type]
        data_dir=str(request.data_dir) if request.data_dir else None,
        max_examples=request.max_examples,
    )
    try:
        train_set, _ = load_data(spec_data)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    epochs, how = plan_epochs(request, len(train_set))
    spec = TrialSpec(
        **{
            **asdict(spec_data),
            "epochs": epochs,
            "batch_size": request.batch_size,
            "eval_every": request.eval_every,
            "device": request.device,
            "checkpoint_every_epochs": request.checkpoint_every,
        },
    )
    workdir = request.out / f"{spec.dataset}-{spec.size}-{spec.method}-seed{spec.seed}"
    check_writable(request.out)
    console.print(
        f"{spec.method}-{spec.size} on {spec.dataset}: {epochs} epochs ({how}), "
        f"lr {spec.lr:g}, wd {spec.weight_decay:g}, seed {spec.seed}, device {spec.device}"
    )
    outcome = _run_with_progress(spec, workdir, console)
    result = {"spec": asdict(spec), "outcome": asdict(outcome)}
    write_json(workdir / "result.json", result)
    console.print(result_table(outcome.status, outcome.metrics, outcome.device_seconds))
    if outcome.status != "completed":
        console.print(f"[red]attempt ended: {outcome.status}[/] {outcome.error}")
        return 1
    return 0


def _run_with_progress(spec: TrialSpec, workdir: Path, console: Console) -> Outcome:
    columns = (
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=spec.epochs, status="starting")

        def on_epoch(row: dict[str, float]) -> None:
            status = f"loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"
            if "cra_36" in row:
                status += f" | test acc {row['accuracy']:.3f} CRA36 {row['cra_36']:.3f}"
            progress.update(task, completed=int(row["epoch"]), status=status)

        return run_attempt(spec, workdir, on_epoch)


def result_table(status: str, metrics: dict[str, float], device_seconds: float) -> Table:
    table = Table(title=f"result: {status}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("device-seconds", f"{device_seconds:.1f}")
    return table


def check_writable(folder: Path) -> None:
    """Fail early, creating nothing, if ``folder`` could not be created or written: the
    nearest existing folder on its path must be a writable directory."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "not a folder" if not existing.is_dir() else "not writable"
        raise ValueError(f"cannot write to {folder}: {existing} is {reason}; choose another --out")


def write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, default=str))
    os.replace(temporary, path)
