"""Guaranteed Lipschitz bound (lipsweep.bounds) against the old Lanczos estimate, per method.

Three tables:
- small grid: one perturbed layer (4 channels, k = 3, 6 x 6 input, float64): the exact norm
  (max of full autograd Jacobian norms over random points), the guaranteed bound and the old
  estimate (``estimate.stage_estimate``);
- whole CIFAR-10 models (float32, at initialisation, or perturbed with ``--perturb``): the
  guaranteed bound and its time at each size, the old estimate (``estimate.
  lipschitz_estimate``) and its time at the sizes in ``--estimate``, and bound / estimate;
- CPL's eval step: per XS layer resolution, (Lanczos estimate / guaranteed norm)^2, the
  factor by which the guaranteed eval step is smaller than the converged-estimate step.

Then a verdict line for issue 15's target: the guaranteed bound of a whole XS model (its
"first" time, eval weights included) <= 5 s on 2 CPU cores, for every method measured. The
methods are the registry's (``lipsweep.layers.registry.METHODS``, so BRO and later ones are
in) and the standard conv.

    .venv/bin/python benchmarks/certify_bound.py [--sizes XS,M] [--estimate XS] [--perturb 0]
        [--methods aol,bro]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from rich.console import Console
from rich.table import Table

from lipsweep.bounds import layer_bound, model_bound
from lipsweep.estimate import lipschitz_estimate, stage_estimate
from lipsweep.layers import LAYERS
from lipsweep.layers.cpl import CPLConv2d
from lipsweep.layers.norms import torus_bound
from lipsweep.layers.registry import METHODS as REGISTERED
from lipsweep.model import build_model

torch.set_num_threads(2)  # the yardstick: 2 CPU cores
METHODS = ("standard", *REGISTERED)
SHAPE = (3, 32, 32)
XS_TARGET_S = 5.0  # issue 15: a whole XS model's guaranteed bound within 5 s on 2 cores
T = TypeVar("T")


def perturb(module: torch.nn.Module, amount: float, seed: int = 0) -> None:
    """Add amount x (the parameter's RMS) x Gaussian noise to every parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(amount * parameter.square().mean().sqrt() * noise)


def exact_norm(layer: torch.nn.Module, shape: tuple[int, int, int], points: int = 3) -> float:
    generator = torch.Generator().manual_seed(0)
    best = 0.0
    for _ in range(points):
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        jacobian = torch.autograd.functional.jacobian(
            lambda z: layer(z.view(1, *shape)).reshape(-1), x.reshape(-1)
        )
        best = max(best, torch.linalg.matrix_norm(jacobian, ord=2).item())
    return best


def small_grid_table(methods: list[str]) -> Table:
    table = Table(title="one layer, 4 channels, k = 3, 6 x 6 input, float64 (perturbed 0.5)")
    for column in ("method", "exact norm", "guaranteed", "old estimate", "guaranteed / exact"):
        table.add_column(column, justify="right")
    for method in methods:
        torch.manual_seed(0)
        layer = LAYERS[method](4, 4, 3).double()
        perturb(layer, 0.5)
        layer.eval()
        shape = (4, 6, 6)
        exact, bound = exact_norm(layer, shape), layer_bound(layer, (6, 6))
        estimate = stage_estimate(method, layer, shape, 1000, 1e-9).estimate
        table.add_row(
            method, f"{exact:.6f}", f"{bound:.6f}", f"{estimate:.6f}", f"{bound / exact:.4f}"
        )
    return table


def timed(function: Callable[..., T], *args: Any) -> tuple[T, float]:
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def model_table(
    methods: list[str], sizes: list[str], estimate_sizes: list[str], amount: float
) -> tuple[Table, dict[str, float]]:
    """The table and each method's 'first' time at XS. 'first' includes building the eval
    weights (the layers' eval caches, which evaluating the model builds anyway); 'cached' is
    the bound alone."""
    table = Table(title=f"whole CIFAR-10 models, float32, perturbed {amount} (2 threads)")
    columns = ["method", "size", "guaranteed", "first", "cached", "estimate", "estimate time"]
    for column in [*columns, "bound / estimate"]:
        table.add_column(column, justify="right")
    xs_seconds = {}
    for method in methods:
        for size in sizes:
            torch.manual_seed(0)
            model = build_model(method, size, "cifar10").eval()
            perturb(model, amount)
            (bound, _), first = timed(model_bound, model, SHAPE)
            _, cached = timed(model_bound, model, SHAPE)
            if size == "XS":
                xs_seconds[method] = first
            row = [method, size, f"{bound:.4g}", f"{first:.2f}s", f"{cached:.2f}s", "-", "-", "-"]
            if size in estimate_sizes:
                estimate, estimate_time = timed(lipschitz_estimate, model, SHAPE)
                row[5:] = [f"{estimate:.4g}", f"{estimate_time:.1f}s", f"{bound / estimate:.5f}"]
            table.add_row(*row)
    return table, xs_seconds


def xs_verdict(xs_seconds: dict[str, float]) -> str:
    """One line: is every measured method's whole-XS-model bound within XS_TARGET_S?"""
    target = f"target: guaranteed bound of a whole XS model <= {XS_TARGET_S:g} s (2 cores)"
    if not xs_seconds:
        return f"{target}: not measured (XS not in --sizes)"
    slowest = max(xs_seconds, key=xs_seconds.__getitem__)
    over = [f"{m} {s:.2f} s" for m, s in xs_seconds.items() if s > XS_TARGET_S]
    if over:
        missed = f"MISSED by {len(over)} of {len(xs_seconds)} measured methods"
        return f"{target}: {missed} ({', '.join(over)})"
    return (
        f"{target}: MET by all {len(xs_seconds)} measured methods "
        f"(slowest {slowest} {xs_seconds[slowest]:.2f} s)"
    )


def cpl_step_table(amount: float) -> Table:
    table = Table(title="CPL eval step vs converged-estimate step, XS layers (per resolution)")
    for column in ("layer", "H = W", "Lanczos", "torus", "guaranteed", "step ratio"):
        table.add_column(column, justify="right")
    torch.manual_seed(0)
    model = build_model("cpl", "XS", "cifar10")
    perturb(model, amount)
    seen: set[int] = set()
    for name, layer in model.named_modules():
        if isinstance(layer, CPLConv2d) and layer.input_size not in seen:
            seen.add(layer.input_size)
            size = layer.input_size
            estimate = layer.spectral_norm().double().item()
            torus = torus_bound(layer.kernel, size, size).item()
            guaranteed = layer.guaranteed_norm(size, size).item()
            ratio = (estimate / guaranteed) ** 2
            row = (f"{estimate:.6f}", f"{torus:.6f}", f"{guaranteed:.6f}", f"{ratio:.5f}")
            table.add_row(name, str(size), *row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="XS,M")
    parser.add_argument("--estimate", default="XS", help="sizes that also run the old estimate")
    parser.add_argument("--perturb", type=float, default=0.0)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    console = Console()
    console.print(small_grid_table(methods))
    sizes, estimates = args.sizes.split(","), [s for s in args.estimate.split(",") if s]
    table, xs_seconds = model_table(methods, sizes, estimates, args.perturb)
    console.print(table)
    if "cpl" in methods:
        console.print(cpl_step_table(args.perturb))
    console.print(xs_verdict(xs_seconds))


if __name__ == "__main__":
    main()
