"""Scaling of single layers with channels c and input size s, against the paper's Table 1.

    .venv/bin/python benchmarks/scaling.py --threads 1

For each method: parameter-transform time and input-op time (forward, best of --repeats),
and the bytes autograd keeps for backward in each, at c in --channels (s fixed) and at s in
--sizes (c fixed); prints the fitted log-log exponents beside Table 1's. Small CPU sizes
under-state exponents (fixed overheads); compare the largest points.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from lipsweep.bench import fit_exponent, layer_costs
from lipsweep.layers import LAYERS

# Paper Table 1 as exponents (c, s): parameter time, input time, parameter memory, input memory.
TABLE1: dict[str, dict[str, tuple[str, int | None, int | None]]] = {
    "standard": {"param_s": ("-", None, None), "input_s": ("b s^2 c^2 k^2", 2, 2),
                 "param_mem": ("P = c^2 k^2", 2, 0), "input_mem": ("M = b s^2 c", 1, 2)},
    "aol": {"param_s": ("c^3 k^4", 3, 0), "input_s": ("C", 2, 2),
            "param_mem": ("5P", 2, 0), "input_mem": ("M", 1, 2)},
    "bcop": {"param_s": ("c^3 k t + c^3 k^3", 3, 0), "input_s": ("C", 2, 2),
             "param_mem": ("c^2 k t + c^2 k^3", 2, 0), "input_mem": ("M", 1, 2)},
    "cayley": {"param_s": ("s^2 c^3", 3, 2), "input_s": ("b s^2 c^2", 2, 2),
               "param_mem": ("3/2 s^2 c^2", 2, 2), "input_mem": ("5/2 M", 1, 2)},
    "cpl": {"param_s": ("s^2 c^2 k^2", 2, 2), "input_s": ("2C", 2, 2),
            "param_mem": ("P + s^2 c", 2, 0), "input_mem": ("3M", 1, 2)},
    "lot": {"param_s": ("4 s^2 c^3 t", 3, 2), "input_s": ("b s^2 c^2", 2, 2),
            "param_mem": ("4 s^2 c^2 t", 2, 2), "input_mem": ("3M", 1, 2)},
    "sll": {"param_s": ("c^3 k^4", 3, 0), "input_s": ("2C", 2, 2),
            "param_mem": ("5P", 2, 0), "input_mem": ("3M", 1, 2)},
    "soc": {"param_s": ("c^2 k^2 t2", 2, 0), "input_s": ("C t1", 2, 2),
            "param_mem": ("P", 2, 0), "input_mem": ("M t1", 1, 2)},
}  # fmt: skip
FIGURES = {
    "param_s": "param_s",
    "input_s": "input_s",
    "param_mem": "param_saved_elements",
    "input_mem": "input_saved_elements",
}


def exponents(method: str, channels: list[int], sizes: list[int], fixed_c: int, fixed_s: int,
              batch: int, repeats: int) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Fitted (c exponent, s exponent) of every figure of one method."""
    by_c = [layer_costs(method, c, fixed_s, batch, repeats=repeats) for c in channels]
    by_s = [layer_costs(method, fixed_c, s, batch, repeats=repeats) for s in sizes]
    fitted = {}
    for name, column in FIGURES.items():
        if not all(row[column] > 0 for row in by_c + by_s):
            fitted[name] = (float("nan"), float("nan"))
            continue
        fitted[name] = (
            fit_exponent(channels, [row[column] for row in by_c]),
            fit_exponent(sizes, [row[column] for row in by_s]),
        )
    return fitted


def paper(method: str, name: str) -> str:
    text, c, s = TABLE1[method][name]
    return text if c is None else f"{text} (c^{c} s^{s})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=list(LAYERS))
    parser.add_argument("--channels", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--fixed-channels", type=int, default=32)
    parser.add_argument("--fixed-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table = Table(title=f"fitted exponents (c^a, s^b), batch {args.batch_size}, k = 3, CPU "
                  f"{torch.get_num_threads()} thread(s); Table 1 in brackets")  # fmt: skip
    table.add_column("method")
    for name in FIGURES:
        table.add_column(f"{name} fit c / s")
        table.add_column(f"{name} Table 1")
    for method in args.methods:
        fitted = exponents(method, args.channels, args.sizes, args.fixed_channels,
                           args.fixed_size, args.batch_size, args.repeats)  # fmt: skip
        cells = []
        for name in FIGURES:
            c, s = fitted[name]
            cells += [f"c^{c:.2f} s^{s:.2f}", paper(method, name)]
        table.add_row(method, *cells)
        Console().print(f"[dim]{method} done[/dim]")
    Console(width=250).print(table)


if __name__ == "__main__":
    main()
