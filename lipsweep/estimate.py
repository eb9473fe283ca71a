"""Lipschitz estimates of a trained model: per-stage Lanczos from a random start (1LC's T3).

Every figure here is an estimate from below (a Rayleigh quotient never exceeds the top
eigenvalue), kept to compare with the paper and to show how tight ``lipsweep.bounds`` is.
Certificates never use it: they use the guaranteed ``lipsweep.bounds.model_bound``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lipsweep.bounds import NONEXPANSIVE, is_global_max_pool
from lipsweep.layers import LAYERS, LINEAR_HEADS, CPLConv2d, SandwichConv2d, SLLConv2d
from lipsweep.layers.numerics import LANCZOS_CYCLE, largest_eigenpair, spectral_matmul
from lipsweep.model import stages

# Residual layers x - K^T (s * ReLU(K x + b)) of ``lipsweep.layers.sll.residual_step``.
RESIDUAL: tuple[type[nn.Module], ...] = (CPLConv2d, SLLConv2d)
# Affine layers A x + b: every registered conv except the nonlinear ones, and the dense heads.
AFFINE: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    *(cls for cls in LAYERS.values() if cls not in (*RESIDUAL, SandwichConv2d)),
    *LINEAR_HEADS.values(),
)


@dataclass(frozen=True)
class StageEstimate:
    """The Lipschitz estimate of one stage and how it was obtained."""

    name: str
    kind: str  # "nonexpansive", "affine", "residual" or "sandwich"
    estimate: float
    iterations: int  # power-iteration steps taken (0 for nonexpansive stages)
    converged: bool


def power_iteration(
    linear: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    like: torch.Tensor,
    iterations: int,
    rtol: float,
    seed: int = 0,
) -> tuple[float, int, bool]:
    """Largest singular value of a linear map from the top eigenpair of A^T A (1LC's T3).

    A^T A v is the vector-Jacobian product of A at v with cotangent A v. The eigenpair comes
    from restarted Lanczos with full reorthogonalisation (``largest_eigenpair``, cycles of at
    most ``LANCZOS_CYCLE`` steps) from a seeded random start, in ``like``'s dtype, instead of
    plain power iteration: on the clustered top of a convolution's spectrum power iteration
    stalls below sigma_max, Lanczos converges at a rate in the square root of the gap.
    Returns (||A y|| for the unit Ritz vector y, matvecs of A^T A, converged), converged
    meaning the Ritz residual ||A^T A y - theta y|| <= rtol theta (rtol is raised to
    1000 eps of the dtype, the attainable level) within ``iterations`` matvecs.
    ||A y|| <= sigma_max for every unit y, so the estimate can only be low, never high.
    """
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(shape, generator=generator, dtype=torch.float64).to(like)

    def gram(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().requires_grad_(True)
        out = linear(v)
        (gram_v,) = torch.autograd.grad(out, v, grad_outputs=out.detach())
        return gram_v.detach()

    rtol = max(rtol, 1e3 * torch.finfo(like.dtype).eps)
    steps = min(iterations, LANCZOS_CYCLE)
    _, y, matvecs, converged = largest_eigenpair(gram, start, steps, rtol, iterations)
    with torch.no_grad():
        return linear(y).norm().item(), matvecs, converged


def affine_estimate(
    layer: nn.Module, shape: tuple[int, ...], iterations: int, rtol: float
) -> tuple[float, int, bool]:
    """||A|| of an affine layer f(x) = A x + b at input shape (C, H, W) or (F,), float64.

    A v = f(v) - f(0) exactly, so this measures the layer minus its bias at the resolution it
    really runs at (the spectrum of a conv depends on it). Works on a float64 copy.
    """
    layer = copy.deepcopy(layer).double().eval()
    like = torch.zeros(1, *shape, dtype=torch.float64, device=device_of(layer))
    with torch.no_grad():
        offset = layer(like)
    return power_iteration(lambda v: layer(v) - offset, like.shape, like, iterations, rtol)


def residual_estimate(
    layer: nn.Module, shape: tuple[int, ...], iterations: int, rtol: float
) -> tuple[float, int, bool]:
    """Estimate of a CPL/SLL layer's Lipschitz constant y = x - K^T S ReLU(K x + b) from its own (eval) constants.

    The Jacobian is I - K^T S^(1/2) D S^(1/2) K with D diagonal in [0, 1], so its
    eigenvalues lie in [1 - lam, 1] with lam = ||S^(1/2) K||^2 and ||J|| <= max(1, lam - 1)
    (CPL: lam = 2 sigma_true^2 / (sigma_used^2 + 1e-6)). lam is measured in float64 by power
    iteration of the zero-padded conv (padding k // 2, as ``residual_step``) at this input
    size, with the eval scale S that a float64 copy of the layer computes for that size.
    """
    layer = copy.deepcopy(layer).double().eval()
    size = tuple(shape[-2:]) if getattr(layer, "size_dependent", False) else ()
    kernel, scale = layer.cached_weight(*size)
    root = scale.clamp_min(0).sqrt()
    padding = kernel.shape[-1] // 2

    def scaled_conv(v: torch.Tensor) -> torch.Tensor:
        return root * nn.functional.conv2d(v, kernel, padding=padding)

    like = torch.zeros(1, *shape, dtype=torch.float64, device=kernel.device)
    norm, steps, converged = power_iteration(scaled_conv, like.shape, like, iterations, rtol)
    return max(1.0, norm**2 - 1.0), steps, converged


def sandwich_estimate(
    layer: SandwichConv2d, shape: tuple[int, ...], iterations: int, rtol: float
) -> tuple[float, int, bool]:
    """Estimate of a Sandwich layer's constant: ||2 A^* B||, its Jacobian with every ReLU
    active (D = I), by Lanczos on that linear map in float64. One activation pattern of many,
    so an estimate from below of sup_D ||2 A^* D B||."""
    layer = copy.deepcopy(layer).double().eval()
    a_adjoint, b = layer.cached_weight(*shape[-2:])
    size = tuple(shape[-2:])

    def linear(v: torch.Tensor) -> torch.Tensor:
        hidden = torch.fft.irfft2(spectral_matmul(b, torch.fft.rfft2(v)), s=size)
        return 2 * torch.fft.irfft2(spectral_matmul(a_adjoint, torch.fft.rfft2(hidden)), s=size)

    like = torch.zeros(1, *shape, dtype=torch.float64, device=b.device)
    return power_iteration(linear, like.shape, like, iterations, rtol)


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU if it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter (float32 if it has none)."""
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def stage_estimates(
    model: nn.Module,
    input_shape: tuple[int, ...],
    iterations: int = 1000,
    rtol: float = 1e-9,
) -> list[StageEstimate]:
    """Per-stage Lipschitz estimates of a sequential model for inputs of ``input_shape`` (C, H, W).

    Each parametrised stage is measured on a float64 copy (the model is left unchanged), at
    the input size it sees in the model. A stage of unknown type raises
    ``TypeError``: it cannot be bounded silently.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, dtype=dtype_of(model), device=device_of(model))
    estimates = []
    try:
        for name, stage in stages(model):
            estimates.append(stage_estimate(name, stage, tuple(x.shape[1:]), iterations, rtol))
            with torch.no_grad():
                x = stage(x)
    finally:
        model.train(was_training)
    return estimates


def stage_estimate(
    name: str, stage: nn.Module, shape: tuple[int, ...], iterations: int, rtol: float
) -> StageEstimate:
    """The Lipschitz estimate of one stage at input shape ``shape`` (see ``stage_estimates``)."""
    if isinstance(stage, NONEXPANSIVE) or is_global_max_pool(stage):
        return StageEstimate(name, "nonexpansive", 1.0, 0, True)
    if isinstance(stage, RESIDUAL):
        value, steps, done = residual_estimate(stage, shape, iterations, rtol)
        return StageEstimate(name, "residual", value, steps, done)
    if isinstance(stage, SandwichConv2d):
        value, steps, done = sandwich_estimate(stage, shape, iterations, rtol)
        return StageEstimate(name, "sandwich", value, steps, done)
    if isinstance(stage, AFFINE):
        value, steps, done = affine_estimate(stage, shape, iterations, rtol)
        return StageEstimate(name, "affine", value, steps, done)
    raise TypeError(f"no Lipschitz estimate known for stage {name!r} ({type(stage).__name__})")


def lipschitz_estimate(
    model: nn.Module,
    input_shape: tuple[int, ...],
    iterations: int = 1000,
    rtol: float = 1e-9,
) -> float:
    """Product of the per-stage estimates of ``stage_estimates`` (1LC's Lipschitz "bound").

    An estimate, not a bound: for affine stages the figure comes from Lanczos, which never
    overestimates a layer's norm, so the product can only be low. The paper reports the same
    product with 1000 iterations per layer (with CPL and SLL counted as 1; here they are
    estimated from their own constants). Certificates use ``lipsweep.bounds.model_bound``.
    """
    return math.prod(
        stage.estimate for stage in stage_estimates(model, input_shape, iterations, rtol)
    )
