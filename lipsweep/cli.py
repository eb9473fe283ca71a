"""The ``lipsweep`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lipsweep import __version__

app = typer.Typer(
    help="Compare 1-Lipschitz convolutions under GPU-hour budgets (Prach et al., CVPR 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Fetch and inspect the datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error that says what to fix; the caller raises the returned Exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"lipsweep {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """lipsweep: sweeps, certificates and rankings of 1-Lipschitz layers."""


@app.command()
def doctor() -> None:
    """Check the installation: versions, CUDA, SLURM and the datasets found."""
    from lipsweep.doctor import run_checks

    console.print(run_checks())


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="cifar10, cifar100 or tiny-imagenet")],
    data_dir: Annotated[
        Path | None, typer.Option(help="Where datasets live (default: $LIPSWEEP_DATA).")
    ] = None,
) -> None:
    """Download an official dataset archive, check its md5 and unpack it."""
    from lipsweep.data import default_data_dir
    from lipsweep.download import DownloadError, download_dataset

    target = data_dir or default_data_dir()
    try:
        path = download_dataset(name, target)
    except DownloadError as error:
        raise fail(str(error)) from None
    console.print(f"{name} is ready in {path}")


def check_choice(value: str, choices: tuple[str, ...] | list[str], what: str) -> str:
    if value not in choices:
        raise fail(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_budget(text: str) -> float:
    from lipsweep.budget import BudgetError, parse_budget

    try:
        return parse_budget(text)
    except BudgetError as error:
        raise fail(str(error)) from None


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise fail(f"--device {name} asked for, but no CUDA device is visible: use --device cpu")
    return name


@app.command()
def train(
    method: Annotated[str, typer.Option(help="aol, bcop, cpl, cayley, lot, sll, soc or standard")],
    size: Annotated[str, typer.Option(help="Model size: XS, S, M or L.")] = "XS",
    dataset: Annotated[
        str, typer.Option(help="cifar10, cifar100, tiny-imagenet or digits")
    ] = "cifar10",
    budget: Annotated[
        str, typer.Option(help="Training time budget: 90s, 45m, 2h, 1h30m, 1d.")
    ] = "10m",
    lr: Annotated[float, typer.Option(help="Peak learning rate of the one-cycle schedule.")] = 0.01,
    wd: Annotated[float, typer.Option(help="Weight decay.")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and data order.")] = 0,
    epochs: Annotated[
        int | None, typer.Option(help="Train this many epochs; ignores --budget.")
    ] = None,
    calibration: Annotated[
        str, typer.Option(help="measure (this hardware) or paper-a100.")
    ] = "measure",
    stage: Annotated[
        str, typer.Option(help="final (train/test) or search (90/10 train/val).")
    ] = "final",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N epochs (and at the end).")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset folder (default $LIPSWEEP_DATA).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the attempt's files go.")] = Path("runs/train"),
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N epochs.")] = 10,
    max_examples: Annotated[
        int | None, typer.Option(help="Use only the first N examples of each split.")
    ] = None,
) -> None:
    """Train one model under a time budget and print its certified accuracy.

    Re-running the same command resumes from the last checkpoint."""
    from lipsweep.data import DATASETS
    from lipsweep.layers import LAYERS
    from lipsweep.model import SIZES
    from lipsweep.train_command import TrainRequest, run_train

    check_choice(method, list(LAYERS), "method")
    check_choice(size, list(SIZES), "size")
    check_choice(dataset, list(DATASETS), "dataset")
    check_choice(calibration, ("measure", "paper-a100"), "calibration")
    check_choice(stage, ("final", "search"), "stage")
    budget_s = check_budget(budget)
    if epochs is not None and epochs < 1:
        raise fail(f"--epochs must be at least 1, got {epochs}")
    if lr <= 0 or wd < 0:
        raise fail(f"--lr must be positive and --wd not negative, got {lr:g} and {wd:g}")
    for name, value in (
        ("--batch-size", batch_size),
        ("--checkpoint-every", checkpoint_every),
        ("--max-examples", max_examples),
        ("--eval-every", eval_every),
    ):
        if value is not None and value < 1:
            raise fail(f"{name} must be at least 1, got {value}")
    request = TrainRequest(
        method=method,
        size=size,
        dataset=dataset,
        budget_s=budget_s,
        lr=lr,
        weight_decay=wd,
        seed=seed,
        epochs=epochs,
        calibration=calibration,
        stage=stage,
        batch_size=batch_size,
        eval_every=eval_every,
        device=pick_device(device),
        data_dir=data_dir,
        out=out,
        checkpoint_every=checkpoint_every,
        max_examples=max_examples,
    )
    try:
        code = run_train(request, console)
    except ValueError as error:  # bad input found while planning: nothing was trained
        raise fail(str(error)) from None
    raise typer.Exit(code)


def split_list(text: str, choices: tuple[str, ...] | list[str], what: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values:
        raise fail(f"--{what}s is empty: give a comma-separated list of {', '.join(choices)}")
    for value in values:
        check_choice(value, choices, what)
    return values


@app.command()
def calibrate(
    datasets: Annotated[str, typer.Option(help="Comma-separated datasets.")] = "cifar10",
    sizes: Annotated[str, typer.Option(help="Comma-separated sizes (XS,S,M,L).")] = "XS",
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods.")
    ] = "aol,bcop,cpl,cayley,lot,sll,soc",
    budget: Annotated[
        str, typer.Option(help="Comma-separated budgets, e.g. 2h,10h,24h.")
    ] = "2h,10h,24h",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset folder (default $LIPSWEEP_DATA).")
    ] = None,
) -> None:
    """Measure seconds per epoch of each cell on this hardware and print the epochs each budget
    buys, beside the paper's A100 figures. Results are cached per device and cell."""
    from lipsweep.calibrate_command import print_calibrations
    from lipsweep.data import DATASETS
    from lipsweep.layers import LAYERS
    from lipsweep.model import SIZES

    cells = (
        split_list(datasets, list(DATASETS), "dataset"),
        split_list(sizes, list(SIZES), "size"),
        split_list(methods, list(LAYERS), "method"),
    )
    budgets = [check_budget(b) for b in budget.split(",") if b.strip()]
    if not budgets:
        raise fail("--budget is empty: give budgets such as 2h,10h,24h")
    try:
        print_calibrations(*cells, budgets, batch_size, pick_device(device), data_dir, console)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None


def _sweep_config(
    preset: str | None,
    out: Path,
    datasets: str | None,
    sizes: str | None,
    methods: str | None,
    budget: str | None,
    trials: int | None,
    search_budget: str | None,
    calibration: str,
    max_gpu_hours: float | None,
    gpus_per_trial: float,
    cpus_per_trial: int,
    max_retries: int,
    sampler: str,
    seed: int,
    batch_size: int | None,
    data_dir: Path | None,
    lr_range: str | None = None,
    wd_range: str | None = None,
    memory_per_trial: float | None = None,
    max_examples: int | None = None,
    max_epochs: int | None = None,
    checkpoint_every: int = 10,
):
    """A SweepConfig from a preset and the options given on the command line."""
    from lipsweep.data import DATASETS
    from lipsweep.launch_command import PRESETS, sweep_id_for
    from lipsweep.layers import METHODS
    from lipsweep.model import SIZES
    from lipsweep.sweep import LR_RANGE, WEIGHT_DECAY_RANGE, SweepConfig, budget_label

    base: dict = dict(PRESETS["paper"])
    if preset is not None:
        check_choice(preset, list(PRESETS), "preset")
        base.update(PRESETS[preset])
    if datasets:
        base["datasets"] = tuple(split_list(datasets, list(DATASETS), "dataset"))
    if sizes:
        base["sizes"] = tuple(split_list(sizes, list(SIZES), "size"))
    if methods:
        base["methods"] = tuple(split_list(methods, list(METHODS), "method"))
    if budget or "budgets" not in base:
        text = budget or "24h"
        for part in text.split(","):
            check_budget(part)
        base["budgets"] = tuple(budget_label(b) for b in text.split(",") if b.strip())
    if search_budget:
        check_budget(search_budget)
        base["search_budget"] = budget_label(search_budget)
    check_choice(calibration, ("measure", "paper-a100"), "calibration")
    check_choice(sampler, ("random", "tpe"), "sampler")
    for name, value in (
        ("--trials", trials),
        ("--cpus-per-trial", cpus_per_trial),
        ("--batch-size", batch_size),
        ("--max-examples", max_examples),
        ("--max-epochs", max_epochs),
        ("--checkpoint-every", checkpoint_every),
    ):
        if value is not None and value < 1:
            raise fail(f"{name} must be at least 1, got {value}")
    if max_retries < 0:
        raise fail(f"--max-retries must be 0 or more, got {max_retries}")
    if gpus_per_trial < 0:
        raise fail(f"--gpus-per-trial must be 0 or more, got {gpus_per_trial}")
    if max_gpu_hours is not None and max_gpu_hours <= 0:
        raise fail(f"--max-gpu-hours must be positive, got {max_gpu_hours}")
    if memory_per_trial is not None and memory_per_trial <= 0:
        raise fail(f"--memory-per-trial must be positive (GiB), got {memory_per_trial}")
    ranges = {
        "lr_range": parse_range(lr_range, "--lr-range") if lr_range else LR_RANGE,
        "weight_decay_range": (
            parse_range(wd_range, "--wd-range") if wd_range else WEIGHT_DECAY_RANGE
        ),
    }
    return SweepConfig(
        sweep_id=sweep_id_for(out),
        datasets=base["datasets"],
        sizes=base["sizes"],
        methods=base["methods"],
        budgets=base["budgets"],
        trials=trials or base["trials"],
        search_budget=base["search_budget"],
        calibration=calibration,
        max_gpu_hours=max_gpu_hours,
        gpus_per_trial=gpus_per_trial,
        cpus_per_trial=cpus_per_trial,
        max_retries=max_retries,
        sampler=sampler,
        seed=seed,
        batch_size=batch_size or base.get("batch_size", 256),
        data_dir=str(data_dir) if data_dir else None,
        memory_per_trial_gib=memory_per_trial,
        max_examples=max_examples,
        max_epochs=max_epochs,
        checkpoint_every_epochs=checkpoint_every,
        **ranges,
    )


def parse_range(text: str, option: str) -> tuple[float, float]:
    """ "LOW,HIGH" with 0 < LOW < HIGH (a log-uniform range)."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise fail(f"{option} must be LOW,HIGH such as 1e-4,1e-1, got {text!r}") from None
    if not 0 < low < high:
        raise fail(f"{option} needs 0 < LOW < HIGH (searched log-uniformly), got {text!r}")
    return low, high


DatasetsOpt = Annotated[str | None, typer.Option(help="Comma-separated datasets.")]
SizesOpt = Annotated[str | None, typer.Option(help="Comma-separated sizes (XS,S,M,L).")]
MethodsOpt = Annotated[str | None, typer.Option(help="Comma-separated methods.")]
BudgetOpt = Annotated[
    str | None, typer.Option(help="Final-run budget(s), e.g. 24h or 2h,10h,24h (default 24h).")
]
TrialsOpt = Annotated[int | None, typer.Option(help="Search trials per cell (paper: 16).")]
SearchOpt = Annotated[str | None, typer.Option(help="Budget of each search trial (paper: 2h).")]
CalibOpt = Annotated[str, typer.Option(help="measure (this hardware) or paper-a100.")]
CapOpt = Annotated[
    float | None, typer.Option(help="Stop starting attempts past this many GPU-hours.")
]
GpusOpt = Annotated[float, typer.Option(help="GPUs per trial (0: CPU; 0.5: two per GPU).")]
CpusOpt = Annotated[int, typer.Option(help="CPU cores per trial.")]
RetriesOpt = Annotated[int, typer.Option(help="New-seed retries of a NaN attempt.")]
SamplerOpt = Annotated[str, typer.Option(help="Optuna sampler: random (paper) or tpe.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the samplers and final-run seeds.")]
BatchOpt = Annotated[int | None, typer.Option(help="Batch size (paper: 256).")]
DataOpt = Annotated[Path | None, typer.Option(help="Dataset folder (default $LIPSWEEP_DATA).")]
PresetOpt = Annotated[str | None, typer.Option(help="paper (default) or quickstart.")]
LrRangeOpt = Annotated[
    str | None, typer.Option(help="Learning rates searched, LOW,HIGH (paper: 1e-4,1e-1).")
]
WdRangeOpt = Annotated[
    str | None,
    typer.Option(help="Weight decays searched, LOW,HIGH (paper: 3.16e-6,3.16e-4)."),
]
MaxExamplesOpt = Annotated[
    int | None, typer.Option(help="Smoke runs: use only the first N examples of each split.")
]
MaxEpochsOpt = Annotated[
    int | None, typer.Option(help="Smoke runs: cap the epochs any budget buys.")
]
CheckpointOpt = Annotated[
    int, typer.Option(help="Checkpoint attempts every N epochs (and every 5 minutes).")
]
MemoryOpt = Annotated[
    float | None,
    typer.Option(help="GiB an attempt may allocate; past it the attempt ends as 'oom'."),
]


@app.command()
def launch(
    out: Annotated[
        Path, typer.Option(help="The sweep's folder (results, checkpoints, studies).")
    ] = Path("runs/sweep"),
    preset: PresetOpt = None,
    datasets: DatasetsOpt = None,
    sizes: SizesOpt = None,
    methods: MethodsOpt = None,
    budget: BudgetOpt = None,
    trials: TrialsOpt = None,
    search_budget: SearchOpt = None,
    calibration: CalibOpt = "measure",
    max_gpu_hours: CapOpt = None,
    gpus_per_trial: GpusOpt = 0.0,
    cpus_per_trial: CpusOpt = 1,
    max_retries: RetriesOpt = 2,
    sampler: SamplerOpt = "random",
    seed: SeedOpt = 0,
    batch_size: BatchOpt = None,
    data_dir: DataOpt = None,
    lr_range: LrRangeOpt = None,
    wd_range: WdRangeOpt = None,
    memory_per_trial: MemoryOpt = None,
    max_examples: MaxExamplesOpt = None,
    max_epochs: MaxEpochsOpt = None,
    checkpoint_every: CheckpointOpt = 10,
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
    time: Annotated[
        str | None, typer.Option(help="SLURM time limit per cell job (HH:MM:SS, D-HH:MM:SS).")
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
    from lipsweep.launch_command import launch as run_launch

    check_choice(backend, ("local", "ray", "slurm"), "backend")
    if backend == "ray" and not address:
        raise fail("--backend ray needs --address HOST:PORT of a running Ray cluster")
    if backend == "local" and gpus_per_trial > 0:
        import torch

        if not torch.cuda.is_available():
            raise fail(
                f"--gpus-per-trial {gpus_per_trial:g} but no CUDA device is visible here: "
                "use --gpus-per-trial 0 (CPU), or --backend slurm to run on GPU nodes"
            )
    config = _sweep_config(
        preset,
        out,
        datasets,
        sizes,
        methods,
        budget,
        trials,
        search_budget,
        calibration,
        max_gpu_hours,
        gpus_per_trial,
        cpus_per_trial,
        max_retries,
        sampler,
        seed,
        batch_size,
        data_dir,
        lr_range,
        wd_range,
        memory_per_trial,
        max_examples,
        max_epochs,
        checkpoint_every,
    )
    if backend == "slurm":
        from lipsweep.backends.slurm import SlurmOptions, launch_slurm

        try:
            options = (
                SlurmOptions.from_file(slurm_config) if slurm_config else SlurmOptions()
            ).with_overrides(
                partition=partition,
                gpus_per_node=gpus_per_node,
                cpus_per_task=cpus_per_task,
                mem=mem,
                time=time,
                account=account,
                qos=qos,
                constraint=constraint,
                array_parallelism=array_parallelism,
            )
            launch_slurm(config, out, options, console)
        except (FileNotFoundError, ValueError, TypeError) as error:
            raise fail(str(error)) from None
        return
    try:
        run_launch(config, out, address if backend == "ray" else None, console)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    _print_finals(out)


@app.command()
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
    search_budget: SearchOpt = None,
    calibration: CalibOpt = "paper-a100",
    gpus: Annotated[int, typer.Option(help="Devices to compute the makespan for.")] = 8,
    data_dir: DataOpt = None,
) -> None:
    """Print, before anything runs, the attempts, GPU-hours and makespan of a launch."""
    from lipsweep.launch_command import make_plans, plan_table
    from lipsweep.sweep import check_epochs, planned_trials

    config = _sweep_config(
        preset,
        out,
        datasets,
        sizes,
        methods,
        budget,
        trials,
        search_budget,
        calibration,
        None,
        1.0,
        1,
        2,
        "random",
        0,
        None,
        data_dir,
    )
    try:
        plans = make_plans(config, console)
        check_epochs(planned_trials(config, plans))
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    console.print(plan_table(config, plans, gpus))


@app.command()
def resume(
    out: Annotated[Path, typer.Argument(help="The sweep's folder.")],
    address: Annotated[str | None, typer.Option(help="Ray cluster address, if any.")] = None,
) -> None:
    """Finish a sweep that was interrupted: nothing finished runs again."""
    from lipsweep.launch_command import launch as run_launch
    from lipsweep.sweep import SweepConfig

    if not (out / "sweep.json").exists():
        raise fail(f"{out} holds no sweep (no sweep.json): start one with `lipsweep launch`")
    options_file = out / "slurm" / "options.json"
    try:
        if options_file.exists():  # a SLURM sweep: resubmit its unfinished cells
            from lipsweep.backends.slurm import SlurmOptions, launch_slurm

            options = SlurmOptions(**json.loads(options_file.read_text()))
            launch_slurm(SweepConfig.load(out), out, options, console)
            return
        run_launch(SweepConfig.load(out), out, address, console)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    _print_finals(out)


def _print_finals(out: Path) -> None:
    """The ranking of the sweep's final runs, its tables and figures (analysis package)."""
    from analysis.rank_command import run_rank

    run_rank([out], [1, 3, 10], 36, None, False, None, console)


@app.command()
def rank(
    dirs: Annotated[list[Path] | None, typer.Argument(help="Sweep folder(s) to rank.")] = None,
    top: Annotated[str, typer.Option(help="Comma-separated k's of the top-k counts.")] = "1,3,10",
    radius: Annotated[int, typer.Option(help="CRA radius in 1/255 units (36, 72, 108, 255).")] = 36,
    budget: Annotated[str | None, typer.Option(help="Rank only this budget, e.g. 24h.")] = None,
    paper: Annotated[bool, typer.Option(help="Rank the paper's own published numbers.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Where figures go (default DIR/analysis).")
    ] = None,
) -> None:
    """Rank methods by top-k certified robust accuracy; print the paper's tables; draw figures."""
    from analysis.rank_command import run_rank

    try:
        ks = sorted({int(k) for k in top.split(",") if k.strip()})
    except ValueError:
        raise fail(f"--top must be comma-separated integers such as 1,3,10, got {top!r}") from None
    if not ks or ks[0] < 1:
        raise fail(f"--top must list positive integers such as 1,3,10, got {top!r}")
    if radius not in (36, 72, 108, 255):
        raise fail(f"--radius must be one of 36, 72, 108, 255 (units of 1/255), got {radius}")
    folders = list(dirs or [])
    if not folders and not paper:
        raise fail("give a sweep folder to rank, or --paper to rank the paper's numbers")
    for folder in folders:
        if not folder.is_dir():
            raise fail(f"{folder} is not a folder: give the --out of a sweep")
    label = None
    if budget is not None:
        from lipsweep.sweep import budget_label

        check_budget(budget)
        label = budget_label(budget)
    raise typer.Exit(run_rank(folders, ks, radius, label, paper, out, console))


@app.command()
def status(
    out: Annotated[Path, typer.Argument(help="The sweep's folder.")],
    watch: Annotated[
        float, typer.Option(help="Refresh every N seconds until Ctrl-C (0: once).")
    ] = 0.0,
) -> None:
    """Show each cell's search trials, best validation CRA, final runs and GPU-hours."""
    import time

    from rich.live import Live

    from lipsweep.status_command import status_table

    if not (out / "sweep.json").exists():
        raise fail(f"{out} holds no sweep (no sweep.json): give the --out of a launch")
    if watch <= 0:
        console.print(status_table(out))
        return
    with Live(status_table(out), console=console, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(watch)
                live.update(status_table(out))
        except KeyboardInterrupt:
            pass


@app.command()
def cancel(out: Annotated[Path, typer.Argument(help="The sweep's folder.")]) -> None:
    """Cancel the sweep's queued and running SLURM jobs (scancel by job id)."""
    from lipsweep.backends.slurm import cancel_sweep, read_jobs

    if not read_jobs(out):
        raise fail(f"{out} has no SLURM jobs (no slurm/jobs.json): nothing to cancel")
    cancelled = cancel_sweep(out)
    console.print(f"cancelled {len(cancelled)} jobs: {' '.join(cancelled) or '-'}")


@app.command("slurm-cell")
def slurm_cell(
    out: Annotated[Path, typer.Argument(help="The sweep's folder (holding sweep.json).")],
    cell: Annotated[str, typer.Argument(help="The cell, e.g. cifar10-XS-aol.")],
) -> None:
    """Run one cell of a sweep inside a SLURM job (what jobs/lipsweep_cell.sbatch calls)."""
    from jobs.cell import CellJob
    from lipsweep.sweep import SweepConfig

    if not (out / "sweep.json").exists():
        raise fail(f"{out} holds no sweep (no sweep.json): start one with `lipsweep launch`")
    try:
        CellJob(out, SweepConfig.load(out), cell, None)()
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None


@app.command()
def bench(
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods (standard is always added).")
    ] = "aol,bcop,cpl,cayley,lot,sll,soc",
    sizes: Annotated[str, typer.Option(help="Comma-separated sizes.")] = "XS",
    dataset: Annotated[str, typer.Option(help="Input shape of this dataset.")] = "cifar10",
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size (default 64; 8 with --scaling; paper: 256).")
    ] = None,
    batches: Annotated[
        int, typer.Option(help="Timed batches per measurement (repeats with --scaling).")
    ] = 5,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch (default: torch's own).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the Parquet results and figures go.")] = Path(
        "runs/bench"
    ),
    scaling: Annotated[
        bool,
        typer.Option(
            "--scaling",
            help="Fit how single layers' time and saved memory grow with c and s, beside "
            "the paper's Table 1, instead of timing the models.",
        ),
    ] = False,
    channels: Annotated[
        str, typer.Option(help="--scaling: channel counts c (at s = the median input size).")
    ] = "16,32,64,128",
    input_sizes: Annotated[
        str, typer.Option(help="--scaling: input sizes s (at c = the median channel count).")
    ] = "8,16,32",
) -> None:
    """Time and memory of training and cached inference per method and size, with every figure
    as a ratio to the standard conv measured in the same run; with --scaling, the exponents of
    c and s of single layers beside the paper's Table 1."""
    import torch

    from lipsweep.data import DATASETS
    from lipsweep.layers import LAYERS
    from lipsweep.model import SIZES

    method_list = split_list(methods, list(LAYERS), "method")
    if batches < 1 or (batch_size is not None and batch_size < 1):
        raise fail("--batch-size and --batches must be at least 1")
    if threads is not None:
        if threads < 1:
            raise fail("--threads must be at least 1")
        torch.set_num_threads(threads)
    if scaling:
        from lipsweep.scaling import run_scaling

        grid_c = positive_ints(channels, "channels")
        grid_s = positive_ints(input_sizes, "input-sizes")
        run_scaling(
            method_list, grid_c, grid_s, batch_size or 8, pick_device(device), out, batches, console
        )
        return
    from lipsweep.bench import run_bench

    size_list = split_list(sizes, list(SIZES), "size")
    check_choice(dataset, list(DATASETS), "dataset")
    run_bench(
        method_list, size_list, dataset, batch_size or 64, pick_device(device), out, batches,
        console,
    )  # fmt: skip


def positive_ints(text: str, option: str) -> list[int]:
    """A comma-separated list of at least two distinct positive integers (a slope needs two)."""
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise fail(f"--{option} must be comma-separated integers, got {text!r}") from None
    if len(set(values)) < 2 or min(values) < 1:
        raise fail(f"--{option} needs at least two distinct positive integers, got {text!r}")
    return values
