"""Search efficiency: successive halving against the paper's random search, on real data.

For each search (``random``; ``halving``; ``halving-<n>`` for each other count of configurations
in ``--halving-trials``; with ``--loss`` also ``halving+loss``, the halving search with the
loss's temperature and offset in its space, at the halving search's cost) and
each of ``--seeds`` search seeds, a real sweep of one cell (digits by default, or the CIFAR-10
subset with ``--dataset cifar10 --data-dir ../shared/data``) with fixed epochs: the search, the
selection, one final run on the full training set. Per sweep it reports the device-hours its
search spent (the Parquet rows' measured ``gpu_hours``, retries and evaluations included, not
the plan's estimate) and the test CRA@36 of the final run with the selected configuration;
then per search the mean and sample standard deviation over seeds, and each search's
device-hours and CRA against the random search's. The issue's goal: halving's mean CRA within
the random search's seed-to-seed spread of its mean, for at most 1/3 of its device-hours.

    .venv/bin/python benchmarks/search_efficiency.py [--seeds 3] [--trials 16] [--eta 3]
        [--search-epochs 9] [--final-epochs 12] [--max-examples 256] [--loss] [--out DIR]
        [--halving-trials 18,9]

A halving search of n configurations at eta e costs sum_r n_r e_r epochs (README): 18 at eta
3 run 18 x E/9, 6 x E/3 and 2 x E (1/3 of 18 E), 9 at eta 3 run 9 x E/3 and 3 x E (also 1/3
of 18 E, with a first rung three times longer).

Ray starts once (2 CPU slots, 1 torch thread each), every sweep runs on it; without ``--out``
the sweeps go to a temporary folder. The planned hours use a nominal 1 s per epoch (no
calibration): only measured hours are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rich.console import Console
from rich.table import Table

from lipsweep.backends.local import LocalBackend
from lipsweep.config import SweepConfig
from lipsweep.plan import CellPlan, save_plan
from lipsweep.results import read_attempts

LOSS_SPACE = ("lr", "wd", "temperature", "offset")


def arm_settings(arm: str, trials: int) -> dict[str, object]:
    """SweepConfig fields of an arm: random, halving, halving-<n> or halving+loss."""
    if arm == "random":
        return {"search": "random", "trials": trials}
    if arm == "halving+loss":
        return {"search": "halving", "trials": trials, "search_space": LOSS_SPACE}
    count = int(arm.removeprefix("halving-")) if arm.startswith("halving-") else trials
    return {"search": "halving", "trials": count}


@dataclass(frozen=True)
class Run:
    arm: str
    seed: int
    search_hours: float
    search_attempts: int
    lr: float
    temperature: float
    val_cra: float  # the selected trial's validation CRA@36 at the search epochs
    test_cra: float  # the final run's test CRA@36 (certified, float64)
    wall_s: float


def sweep(args: argparse.Namespace, arm: str, seed: int, root: Path) -> Run:
    out = root / f"{arm}-s{seed}"
    config = SweepConfig(
        sweep_id=f"{arm.replace('+', '-')}-s{seed}",
        datasets=(args.dataset,),
        sizes=(args.size,),
        methods=(args.method,),
        budgets=("2h",),
        search_budget="1h",
        eta=args.eta,
        seed=seed,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
        data_dir=args.data_dir,
        lr_range=tuple(float(v) for v in args.lr_range.split(",")),
        **arm_settings(arm, args.trials),
    )
    plan = {"1h": args.search_epochs, "2h": args.final_epochs}
    save_plan(out, CellPlan(args.dataset, args.size, args.method, 1.0, plan))
    clock = time.monotonic()
    LocalBackend().launch(config, out, monitor=lambda line: None)
    wall = time.monotonic() - clock
    attempts = read_attempts(out)
    search = attempts[attempts["stage"] == "search"]
    (final,) = attempts[attempts["stage"] == "final"].itertuples()
    selected = search[
        (search["lr"] == final.lr)
        & (search["weight_decay"] == final.weight_decay)
        & (search["epochs_planned"] == args.search_epochs)  # halving: its last rung's run
    ]
    return Run(
        arm=arm,
        seed=seed,
        search_hours=float(search["gpu_hours"].sum()),
        search_attempts=len(search),
        lr=final.lr,
        temperature=final.loss_temperature,
        val_cra=float(selected["cra_36"].max()),
        test_cra=float(final.cra_36),
        wall_s=wall,
    )


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def report(runs: list[Run], args: argparse.Namespace, console: Console) -> None:
    table = Table(title=f"{args.dataset} {args.size} {args.method}: one sweep per search and seed")
    for column in (
        "search",
        "seed",
        "search dev-s",
        "attempts",
        "lr",
        "tau",
        "val CRA",
        "test CRA",
        "wall s",
    ):
        table.add_column(column, justify="left" if column == "search" else "right")
    for run in runs:
        table.add_row(
            run.arm, str(run.seed), f"{run.search_hours * 3600:.1f}", str(run.search_attempts),
            f"{run.lr:.3g}", f"{run.temperature:.3g}", f"{run.val_cra:.3f}",
            f"{run.test_cra:.3f}", f"{run.wall_s:.0f}",
        )  # fmt: skip
    console.print(table)
    summary = Table(title="per search: mean and sample sd over seeds; ratios to the random search")
    for column in ("search", "test CRA@36", "search device-s", "hours / random", "CRA - random"):
        summary.add_column(column, justify="left" if column == "search" else "right")
    base = [r for r in runs if r.arm == "random"]
    base_hours = statistics.mean(r.search_hours for r in base)
    base_cra = statistics.mean(r.test_cra for r in base)
    for arm in dict.fromkeys(r.arm for r in runs):
        mine = [r for r in runs if r.arm == arm]
        cra = [r.test_cra for r in mine]
        hours = [r.search_hours * 3600 for r in mine]
        summary.add_row(
            arm, f"{statistics.mean(cra):.3f} ± {spread(cra):.3f}",
            f"{statistics.mean(hours):.1f} ± {spread(hours):.1f}",
            f"{statistics.mean(hours) / 3600 / base_hours:.2f}",
            f"{statistics.mean(cra) - base_cra:+.3f}",
        )  # fmt: skip
    console.print(summary)
    halving = [r for r in runs if r.arm == "halving"]
    for arm in dict.fromkeys(r.arm for r in runs if r.arm.startswith("halving")):
        mine = [r for r in runs if r.arm == arm]
        ratio = statistics.mean(r.search_hours for r in mine) / base_hours
        within = statistics.mean(r.test_cra for r in mine) >= base_cra - spread(
            [r.test_cra for r in base]
        )
        console.print(
            f"{arm}: {ratio:.2f} of the random search's device-hours; its mean test CRA is "
            f"{'within' if within else 'below'} the random search's mean minus one sd; goal "
            f"(within, ratio <= 1/3) {'met' if within and ratio <= 1 / 3 else 'not met'}"
        )
    loss = [r for r in runs if r.arm == "halving+loss"]
    if loss and halving:
        gain = statistics.mean(r.test_cra for r in loss) - statistics.mean(
            r.test_cra for r in halving
        )
        hours = statistics.mean(r.search_hours for r in loss) / base_hours
        console.print(
            f"temperature and offset searched (halving+loss, {hours:.2f} of random's hours): "
            f"{gain:+.3f} test CRA@36 over halving with the paper's loss"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--search-epochs", type=int, default=9)
    parser.add_argument("--final-epochs", type=int, default=12)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--size", default="XS")
    parser.add_argument("--method", default="aol")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-examples", type=int, default=256)
    parser.add_argument("--lr-range", default="0.005,0.5")
    parser.add_argument("--loss", action="store_true", help="also halving+loss")
    parser.add_argument(
        "--halving-trials", default=None, help="configurations per halving search, e.g. 18,9"
    )
    parser.add_argument("--out", type=Path, default=None, help="keep the sweeps here")
    args = parser.parse_args()
    console = Console(width=120)

    from lipsweep.ray_local import start_local_ray

    start_local_ray(num_cpus=2)
    counts = [int(v) for v in (args.halving_trials or str(args.trials)).split(",")]
    halvings = ["halving" if n == args.trials else f"halving-{n}" for n in counts]
    arms = ["random", *halvings, *(["halving+loss"] if args.loss else [])]
    with tempfile.TemporaryDirectory() as temporary:
        root = args.out or Path(temporary)
        runs = []
        for seed in range(args.seeds):
            for arm in arms:
                runs.append(sweep(args, arm, seed, root))
                console.print(f"{arm} seed {seed}: {runs[-1]}", soft_wrap=True)
    report(runs, args, console)


if __name__ == "__main__":
    main()
