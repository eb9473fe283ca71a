"""Speed and memory of every method and size against the standard conv (one run, ratios).

    .venv/bin/python benchmarks/layer_speed.py --sizes XS S --batch-size 32 --threads 1

Writes Parquet under --out/results/bench and prints the table (lipsweep.bench.run_bench).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lipsweep.bench import run_bench
from lipsweep.layers import METHODS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", default=["XS", "S"])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    run_bench(
        args.methods, args.sizes, args.dataset, args.batch_size, args.device, args.out, args.batches
    )


if __name__ == "__main__":
    main()
