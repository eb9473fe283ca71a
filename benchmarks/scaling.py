"""Scaling of single layers with channels c and input size s, against the paper's Table 1.

    .venv/bin/python benchmarks/scaling.py --threads 1

The same as ``lipsweep bench --scaling`` (``lipsweep.scaling.run_scaling``): fitted c and s
exponents of parameter-transform time, input-op time and saved memory beside Table 1's, and
the fits as Parquet under --out/results/scaling.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lipsweep.layers import METHODS
from lipsweep.scaling import run_scaling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--channels", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    run_scaling(
        args.methods, args.channels, args.sizes, args.batch_size, args.device, args.out,
        args.repeats,
    )  # fmt: skip


if __name__ == "__main__":
    main()
