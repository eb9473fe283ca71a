"""`lipsweep launch / plan / resume / status / cancel / slurm-cell`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import RenderableType
from rich.live import Live

from lipsweep.backends import backend_for
from lipsweep.backends.base import Monitor
from lipsweep.budget import format_budget
from lipsweep.calibrate import make_plans
from lipsweep.cli.common import (
    DataOpt,
    at_least,
    budgets,
    check_choice,
    console,
    err_console,
    log_line,
    log_range,
    split_list,
    sweep_folder,
)
from lipsweep.cli.render import (
    hours_text,
    live_status,
    plan_table,
    status_frame,
    status_table,
)
from lipsweep.config import SlurmOptions, SweepConfig, preset_config
from lipsweep.errors import InputError
from lipsweep.layers.registry import method_key
from lipsweep.names import Cell
from lipsweep.plan import hours_unit
from lipsweep.results.store import read_attempts
from lipsweep.status import SweepStatus, sweep_status, unfinished_attempts

DatasetsOpt = Annotated[str | None, typer.Option(help="Comma-separated datasets.")]
SizesOpt = Annotated[str | None, typer.Option(help="Comma-separated sizes (XS,S,M,L).")]
MethodsOpt = Annotated[str | None, typer.Option(help="Comma-separated methods.")]
BudgetOpt = Annotated[
    str | None, typer.Option(help="Final-run budget(s), e.g. 24h or 2h,10h,24h (default 24h).")
]
TrialsOpt = Annotated[int | None, typer.Option(help="Search trials per cell (paper: 16).")]
FinalSeedsOpt = Annotated[
    int | None, typer.Option(help="Final runs per budget, each its own seed (paper: 1).")
]
SearchOpt = Annotated[str | None, typer.Option(help="Budget of each search trial (paper: 2h).")]
PresetOpt = Annotated[str | None, typer.Option(help="paper (default) or quickstart.")]
OutOpt = Annotated[Path, typer.Option(help="The sweep's folder (results, checkpoints, studies).")]
SearchKindOpt = Annotated[
    str,
    typer.Option(
        "--search",
        help="random (the paper's) or halving: successive halving of complete runs (README).",
    ),
]
EtaOpt = Annotated[
    int, typer.Option(help="--search halving: each rung keeps 1/eta, trained eta x longer.")
]


def sweep_options(
    datasets: str | None,
    sizes: str | None,
    methods: str | None,
    budget: str | None,
    search_budget: str | None,
) -> dict[str, object]:
    search = budgets(search_budget)
    return {
        "datasets": split_list(datasets),
        "sizes": split_list(sizes),
        "methods": None if methods is None else tuple(map(method_key, split_list(methods) or ())),
        "budgets": budgets(budget),
        "search_budget": search[0] if search else None,
    }


class CalibrationProgress:
    """ "calibrating cell k of n" with the time calibration took so far."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, cell: Cell) -> None:
        elapsed = format_budget(time.monotonic() - self.started)
        line = f"calibrating cell {done + 1} of {total}: {cell} ({elapsed} so far)"
        console.print(line) if console.is_terminal else log_line(line)


def run_backend(config: SweepConfig, out: Path) -> None:
    """Run the sweep on its backend: a live table in a terminal, plain lines otherwise."""
    monitor: Monitor = console.print if console.is_terminal else log_line
    if config.backend == "slurm":
        watch = nullcontext()
    elif console.is_terminal:
        watch = Live(
            get_renderable=lambda: live_status(out),
            console=console,
            refresh_per_second=0.2,
            transient=True,
        )
    else:
        watch = PlainProgress(out)
    started = time.monotonic()
    with watch:
        backend_for(config).launch(config, out, monitor, CalibrationProgress())
    if config.backend != "slurm":
        monitor(f"sweep done in {time.monotonic() - started:.0f} s")
        print_ranking(out)


class PlainProgress:
    """For output that is not a terminal (nohup, a SLURM log): every ``every_s`` seconds, one
    timestamped line per attempt that started or ended since, per cell that ended, and the
    sweep's ETA."""

    def __init__(self, out: Path, every_s: float = 10.0) -> None:
        self.out, self.every_s = out, every_s
        self.stop = threading.Event()
        self.seen: set[str] = set()
        self.running: set[str] = set()
        self.done: set[Cell] = set()

    def __enter__(self) -> PlainProgress:
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.report()

    def loop(self) -> None:
        while not self.stop.wait(self.every_s):
            self.report()

    def report(self) -> None:
        if not (self.out / "sweep.json").exists():
            return
        ended = 0
        for row in read_attempts(self.out).itertuples():
            if row.attempt_id not in self.seen:
                self.seen.add(row.attempt_id)
                ended += 1
                metric = (
                    "" if pd.isna(row.cra_36) else f", {row.eval_split} CRA@36 {row.cra_36:.3f}"
                )
                log_line(f"ended {row.attempt_id}: {row.status}{metric}")
        running = {p.attempt_id for p in unfinished_attempts(self.out, self.seen) if p.alive}
        for attempt_id in sorted(running - self.running):
            log_line(f"started {attempt_id}")
        if ended or running != self.running:
            status = sweep_status(self.out)
            self.report_cells(status)
            log_line(status.eta_text())
        self.running = running

    def report_cells(self, status: SweepStatus) -> None:
        """One line per cell that has newly ended: every planned trial ended, none running."""
        for cell in status.cells:
            if cell.cell in self.done or cell.hours_left != 0 or cell.running:
                continue
            self.done.add(cell.cell)
            finals = len(status.config.budgets) * status.config.final_seeds
            log_line(
                f"cell done {cell.cell}: search "
                f"{cell.search_done}/{cell.search_trials or status.config.trials} "
                f"completed, finals {cell.finals_done}/{finals} completed, "
                f"{hours_text(cell.device_hours)} {hours_unit(status.config)}"
            )


def print_ranking(out: Path) -> None:
    """The ranking of the sweep's final runs, its tables and figures (analysis package)."""
    from analysis.rank_command import run_rank

    run_rank([out], [1, 3, 10], 36, None, False, None, console)
    console.print(f"results in {out / 'results'}; figures in {out / 'analysis'}", soft_wrap=True)


def launch(
    out: OutOpt = Path("runs/sweep"),
    preset: PresetOpt = None,
    datasets: DatasetsOpt = None,
    sizes: SizesOpt = None,
    methods: MethodsOpt = None,
    budget: BudgetOpt = None,
    trials: TrialsOpt = None,
    final_seeds: FinalSeedsOpt = None,
    search_budget: SearchOpt = None,
    calibration: Annotated[
        str, typer.Option(help="measure (this hardware) or paper-a100.")
    ] = "measure",
    max_gpu_hours: Annotated[
        float | None, typer.Option(help="Stop starting attempts past this many GPU-hours.")
    ] = None,
    gpus_per_trial: Annotated[
        float, typer.Option(help="GPUs per trial (0: CPU; 0.5: two per GPU).")
    ] = 0.0,
    cpus_per_trial: Annotated[int, typer.Option(help="CPU cores (torch threads) per trial.")] = 1,
    max_retries: Annotated[int, typer.Option(help="New-seed retries of a NaN attempt.")] = 2,
    sampler: Annotated[str, typer.Option(help="Optuna sampler: random (paper) or tpe.")] = "random",
    search_kind: SearchKindOpt = "random",
    eta: EtaOpt = 3,
    seed: Annotated[int, typer.Option(help="Seed of the samplers and final-run seeds.")] = 0,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (paper: 256).")] = None,
    data_dir: DataOpt = None,
    lr_range: Annotated[
        str | None, typer.Option(help="Learning rates searched, LOW,HIGH (paper: 1e-4,1e-1).")
    ] = None,
    wd_range: Annotated[
        str | None, typer.Option(help="Weight decays searched, LOW,HIGH (paper: 3.16e-6,3.16e-4).")
    ] = None,
    search_space: Annotated[
        str | None, typer.Option(help="Dimensions searched: lr,wd (paper) [,temperature,offset].")
    ] = None,
    temperature_range: Annotated[
        str | None, typer.Option(help="Loss temperatures searched, LOW,HIGH (0.0625,1).")
    ] = None,
    offset_range: Annotated[
        str | None, typer.Option(help="Loss offsets searched, LOW,HIGH (0.0998,1.597).")
    ] = None,
    memory_per_trial: Annotated[
        float | None,
        typer.Option(help="GiB an attempt may allocate; past it the attempt ends as 'oom'."),
    ] = None,
    max_examples: Annotated[
        int | None, typer.Option(help="Smoke runs: use only the first N examples of each split.")
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option(help="Smoke runs: cap the epochs any budget buys.")
    ] = None,
    search_epochs: Annotated[
        int | None,
        typer.Option(help="Train exactly N epochs per search trial, whatever the budget buys."),
    ] = None,
    final_epochs: Annotated[
        int | None,
        typer.Option(help="Train exactly N epochs per final run, whatever the budget buys."),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Checkpoint attempts every N epochs (and every 5 minutes).")
    ] = 10,
    recalibrate: Annotated[
        bool,
        typer.Option(
            "--recalibrate", help="Measure every cell again instead of using the calibration cache."
        ),
    ] = False,
    backend: Annotated[
        str,
        typer.Option(
            help="local (Ray in this process), ray (--address) or slurm (a job per cell)."
        ),
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address for --backend ray.")
    ] = None,
    slurm_config: Annotated[
        Path | None, typer.Option(help="TOML/JSON file of the SLURM options below.")
    ] = None,
    partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    gpus_per_node: Annotated[int | None, typer.Option(help="SLURM GPUs per cell job.")] = None,
    cpus_per_task: Annotated[int | None, typer.Option(help="SLURM CPUs per cell job.")] = None,
    mem: Annotated[str | None, typer.Option(help="SLURM memory per cell job, e.g. 16G.")] = None,
    time_limit: Annotated[
        str | None,
        typer.Option("--time", help="SLURM time limit per cell job (HH:MM:SS, D-HH:MM:SS)."),
    ] = None,
    account: Annotated[str | None, typer.Option(help="SLURM account.")] = None,
    qos: Annotated[str | None, typer.Option(help="SLURM QOS.")] = None,
    constraint: Annotated[str | None, typer.Option(help="SLURM node constraint.")] = None,
    array_parallelism: Annotated[
        int | None, typer.Option(help="SLURM cell jobs running at once.")
    ] = None,
) -> None:
    """Run the paper's protocol: search, select, final runs, into a Parquet dataset.

    Re-running the same launch resumes it."""
    slurm = None
    if backend == "slurm":
        base = SlurmOptions.from_file(slurm_config) if slurm_config else SlurmOptions()
        given = {
            "partition": partition, "gpus_per_node": gpus_per_node, "cpus_per_task": cpus_per_task,
            "mem": mem, "time": time_limit, "account": account, "qos": qos,
            "constraint": constraint, "array_parallelism": array_parallelism,
        }  # fmt: skip
        slurm = SlurmOptions.from_dict(
            {**vars(base), **{k: v for k, v in given.items() if v is not None}}, "SLURM options"
        )
    config = preset_config(
        preset,
        out,
        **sweep_options(datasets, sizes, methods, budget, search_budget),
        trials=trials,
        final_seeds=final_seeds,
        calibration=calibration,
        max_gpu_hours=max_gpu_hours,
        gpus_per_trial=gpus_per_trial,
        cpus_per_trial=cpus_per_trial,
        max_retries=max_retries,
        sampler=sampler,
        search=search_kind,
        eta=eta,
        seed=seed,
        batch_size=batch_size,
        data_dir=str(data_dir) if data_dir else None,
        lr_range=log_range(lr_range, "--lr-range"),
        weight_decay_range=log_range(wd_range, "--wd-range"),
        search_space=split_list(search_space),
        temperature_range=log_range(temperature_range, "--temperature-range"),
        offset_range=log_range(offset_range, "--offset-range"),
        memory_per_trial_gib=memory_per_trial,
        max_examples=max_examples,
        max_epochs=max_epochs,
        search_epochs=search_epochs,
        final_epochs=final_epochs,
        checkpoint_every_epochs=checkpoint_every,
        backend=backend,
        address=address,
        slurm=slurm,
    )
    if recalibrate:
        forget_calibrations(config)
    run_backend(config, out)


def forget_calibrations(config: SweepConfig) -> None:
    from lipsweep.calibrate import CalibrationCache, default_cache_dir

    cache = CalibrationCache(default_cache_dir() / "calibrations.json")
    for cell in config.cells():
        cache.forget(cell.dataset, cell.size, cell.method, config.batch_size)


def plan(
    out: Annotated[Path, typer.Option(help="Folder the sweep would use (for its id).")] = Path(
        "runs/sweep"
    ),
    preset: PresetOpt = None,
    datasets: DatasetsOpt = None,
    sizes: SizesOpt = None,
    methods: MethodsOpt = None,
    budget: BudgetOpt = None,
    trials: TrialsOpt = None,
    final_seeds: FinalSeedsOpt = None,
    search_budget: SearchOpt = None,
    calibration: Annotated[
        str,
        typer.Option(
            help="paper-a100 (default: the paper's table, no hardware needed) or measure (this hardware, as launch does)."
        ),
    ] = "paper-a100",
    gpus: Annotated[int, typer.Option(help="Devices to compute the makespan for.")] = 8,
    search_kind: SearchKindOpt = "random",
    eta: EtaOpt = 3,
    data_dir: DataOpt = None,
) -> None:
    """Print, before anything runs, the attempts, GPU-hours and makespan of a launch.

    Unlike launch it defaults to the paper's A100 epochs, so the paper's protocol can be
    planned on any machine; the table's title says where the epochs came from."""
    at_least("--gpus", gpus, 1)
    config = preset_config(
        preset,
        out,
        **sweep_options(datasets, sizes, methods, budget, search_budget),
        trials=trials,
        final_seeds=final_seeds,
        calibration=calibration,
        search=search_kind,
        eta=eta,
        gpus_per_trial=1.0,
        data_dir=str(data_dir) if data_dir else None,
    )
    plans, notes = make_plans(config)
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    console.print(plan_table(config, plans, gpus))


def resume(out: Annotated[Path, typer.Argument(help="The sweep's folder.")]) -> None:
    """Finish a sweep that was interrupted, on the backend it was launched with (stored in its
    sweep.json): nothing finished runs again."""
    run_backend(SweepConfig.load(sweep_folder(out)), out)


def status(
    out: Annotated[Path, typer.Argument(help="The sweep's folder.")],
    watch: Annotated[
        float, typer.Option(help="Refresh every N seconds until Ctrl-C (0: once).")
    ] = 0.0,
    output: Annotated[
        str, typer.Option("--format", help="table (default), csv or json: one row per cell.")
    ] = "table",
) -> None:
    """Show each cell's search trials, best validation CRA, final runs and GPU-hours."""
    sweep_folder(out)
    check_choice(output, ("table", "csv", "json"), "--format")
    backend = backend_for(SweepConfig.load(out))

    def table() -> RenderableType:
        return status_table(sweep_status(out), backend.job_states(out))

    if output != "table":
        frame = status_frame(sweep_status(out), backend.job_states(out))
        text = (
            frame.to_csv(index=False)
            if output == "csv"
            else frame.to_json(orient="records", indent=1)
        )
        typer.echo(text.rstrip())
        return

    if watch <= 0:
        console.print(table())
        for warning in sweep_status(out).warnings():
            err_console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
        return
    with suppress(KeyboardInterrupt):  # Ctrl-C ends the watch
        if console.is_terminal:
            watch_live(table, watch)
        else:
            watch_plain(table, watch, out)


def watch_live(table: Callable[[], RenderableType], every_s: float) -> None:
    with Live(table(), console=console, refresh_per_second=1) as live:
        while True:
            time.sleep(every_s)
            live.update(table())


def watch_plain(table: Callable[[], RenderableType], every_s: float, out: Path) -> None:
    """Piped or logged output: a timestamped snapshot every ``every_s`` seconds (a Live
    display there prints nothing until it stops)."""
    while True:
        log_line(f"status of {out}")
        console.print(table())
        time.sleep(every_s)


def cancel(out: Annotated[Path, typer.Argument(help="The sweep's folder.")]) -> None:
    """Cancel the sweep's queued and running SLURM jobs (scancel by job id)."""
    config = SweepConfig.load(sweep_folder(out))
    if config.backend != "slurm":
        raise InputError(
            f"{out} runs on the {config.backend} backend, not SLURM: nothing to cancel"
        )
    cancelled = backend_for(config).cancel(out)
    console.print(f"cancelled {len(cancelled)} jobs: {' '.join(cancelled) or '-'}")


def slurm_cell(
    out: Annotated[Path, typer.Argument(help="The sweep's folder (holding sweep.json).")],
    cell: Annotated[str, typer.Argument(help="The cell, e.g. cifar10-XS-aol.")],
) -> None:
    """Run one cell of a sweep inside a SLURM job (what jobs/lipsweep_cell.sbatch calls)."""
    from jobs.cell import CellJob

    config = SweepConfig.load(sweep_folder(out))
    try:
        chosen = Cell.parse(cell)
    except ValueError as error:
        raise InputError(str(error)) from None
    if chosen not in config.cells():
        raise InputError(f"{cell} is not a cell of sweep {config.sweep_id}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    CellJob(out, config, chosen, None)()


def register(app: typer.Typer) -> None:
    for command in (launch, plan, resume, status, cancel):
        app.command()(command)
    app.command("slurm-cell")(slurm_cell)
