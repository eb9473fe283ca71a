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

    .venv/bin/python benchmarks/certify_bound.py [--sizes XS,M] [--estimate XS] [--perturb 0]
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
from lipsweep.model import build_model

torch.set_num_threads(2)  # the yardstick: 2 CPU cores
METHODS = ("standard", "aol", "bcop", "cpl", "cayley", "lot", "sll", "soc")
SHAPE = (3, 32, 32)
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


def small_grid_table() -> Table:
    table = Table(title="one layer, 4 channels, k = 3, 6 x 6 input, float64 (perturbed 0.5)")
    for column in ("method", "exact norm", "guaranteed", "old estimate", "guaranteed / exact"):
        table.add_column(column, justify="right")
    for method in METHODS:
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


def model_table(sizes: list[str], estimate_sizes: list[str], amount: float) -> Table:
    """'first' includes building the eval weights (the layers' eval caches, which evaluating
    the model builds anyway); 'cached' is the bound alone."""
    table = Table(title=f"whole CIFAR-10 models, float32, perturbed {amount} (2 threads)")
    columns = ["method", "size", "guaranteed", "first", "cached", "estimate", "estimate time"]
    for column in [*columns, "bound / estimate"]:
        table.add_column(column, justify="right")
    for method in METHODS:
        for size in sizes:
            torch.manual_seed(0)
            model = build_model(method, size, "cifar10").eval()
            perturb(model, amount)
            (bound, _), first = timed(model_bound, model, SHAPE)
            _, cached = timed(model_bound, model, SHAPE)
            row = [method, size, f"{bound:.4g}", f"{first:.2f}s", f"{cached:.2f}s", "-", "-", "-"]
            if size in estimate_sizes:
                estimate, estimate_time = timed(lipschitz_estimate, model, SHAPE)
                row[5:] = [f"{estimate:.4g}", f"{estimate_time:.1f}s", f"{bound / estimate:.5f}"]
            table.add_row(*row)
    return table


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
    args = parser.parse_args()
    console = Console()
    console.print(small_grid_table())
    sizes, estimates = args.sizes.split(","), [s for s in args.estimate.split(",") if s]
    console.print(model_table(sizes, estimates, args.perturb))
    console.print(cpl_step_table(args.perturb))


if __name__ == "__main__":
    main()
