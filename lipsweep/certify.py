"""Certification and soundness checks: margins, certified robust accuracy (CRA), a Lipschitz
upper bound of a trained model, the activation-variance check and a PGD attack check.

Certificate (1LC Sec. 4; LAYERS.md Sec. 1). For an L-Lipschitz model (l2) with logits z, a
prediction is certified at radius eps iff it is correct and

    z_y - max_{j != y} z_j > sqrt(2) L eps,

since no perturbation of norm eps can then close the gap. A tie at the top is not a correct
prediction (argmax would be arbitrary), so it is never certified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lipsweep.layers import (
    LAYERS,
    LINEAR_HEADS,
    CPLConv2d,
    FirstChannels,
    MaxMin,
    SLLConv2d,
    ZeroChannelPad,
)
from lipsweep.layers.numerics import LANCZOS_CYCLE, largest_eigenpair
from lipsweep.loss import offset_cross_entropy
from lipsweep.model import stages

# Radii of the paper's logs: 36/255, 72/255, 108/255 and 1.0 (= 255/255).
RADII: tuple[float, ...] = (36 / 255, 72 / 255, 108 / 255, 1.0)

# Stages that are 1-Lipschitz without any parameter: sorting pairs, projections, isometric
# embeddings and permutations (AdaptiveMaxPool2d(1) is accepted separately: output size 1).
NONEXPANSIVE: tuple[type[nn.Module], ...] = (
    MaxMin,
    FirstChannels,
    ZeroChannelPad,
    nn.PixelUnshuffle,
    nn.PixelShuffle,
    nn.Flatten,
    nn.Identity,
    nn.ReLU,
)
# Residual layers x - K^T (s * ReLU(K x + b)) of ``lipsweep.layers.sll.residual_step``.
RESIDUAL: tuple[type[nn.Module], ...] = (CPLConv2d, SLLConv2d)
# Affine layers A x + b: every registered conv except the residual ones, and the dense heads.
AFFINE: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    *(cls for cls in LAYERS.values() if cls not in RESIDUAL),
    *LINEAR_HEADS.values(),
)


def radius_key(eps: float) -> str:
    """Result key of the CRA at radius eps: "cra_36" for 36/255, ..., "cra_255" for 1.0."""
    return f"cra_{round(eps * 255)}"


# ----------------------------------------------------------------------------- metrics


def logit_gaps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per example: positive iff the prediction is strictly correct."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit where the prediction is correct, else 0 (1LC Sec. 4).

    Equal to max(z_y - max_{j != y} z_j, 0): a tie at the top (z_y equal to another logit)
    counts as wrong and gets margin 0.
    """
    return logit_gaps(logits, labels).clamp_min(0)


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Strictly correct predictions (bool per example); ties at the top are wrong."""
    return logit_gaps(logits, labels) > 0


def certified(
    logits: torch.Tensor, labels: torch.Tensor, eps: float, lipschitz: float = 1.0
) -> torch.Tensor:
    """Certified at radius eps (bool per example): correct and gap > sqrt(2) L eps."""
    return logit_gaps(logits, labels) > math.sqrt(2) * lipschitz * eps


def certified_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, eps: float, lipschitz: float = 1.0
) -> float:
    """Fraction of examples certified at radius eps (eps = 0: strict clean accuracy)."""
    return certified(logits, labels, eps, lipschitz).double().mean().item()


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of ``batches`` (model in eval mode, no gradient), on the CPU."""
    was_training = model.training
    model.eval()
    try:
        pairs = [(model(x).cpu(), y.cpu()) for x, y in batches]
    finally:
        model.train(was_training)
    if not pairs:
        raise ValueError("evaluate needs at least one batch")
    return torch.cat([z for z, _ in pairs]), torch.cat([y for _, y in pairs])


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    lipschitz: float = 1.0,
) -> dict[str, float]:
    """Clean accuracy, CRA at every radius of ``RADII``, margins and loss over ``batches``.

    Keys: "accuracy" (strict clean accuracy), "cra_36", "cra_72", "cra_108", "cra_255", "median_margin"
    (median over all examples of ``margins``, wrong ones counting 0), "loss" (offset CE with
    the paper's defaults) and "examples". ``lipschitz`` is the model's constant (1 for a
    1-Lipschitz model).
    """
    logits, labels = predict(model, batches)
    result = {"accuracy": certified_accuracy(logits, labels, 0.0)}
    for eps in RADII:
        result[radius_key(eps)] = certified_accuracy(logits, labels, eps, lipschitz)
    result["median_margin"] = margins(logits, labels).double().quantile(0.5).item()
    result["loss"] = offset_cross_entropy(logits.double(), labels).item()
    result["examples"] = float(len(labels))
    return result


# ----------------------------------------------------------------------------- Lipschitz bound


@dataclass(frozen=True)
class LayerBound:
    """The Lipschitz bound of one stage and how it was obtained."""

    name: str
    kind: str  # "nonexpansive", "affine" or "residual"
    bound: float
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


def affine_bound(
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


def residual_bound(
    layer: nn.Module, shape: tuple[int, ...], iterations: int, rtol: float
) -> tuple[float, int, bool]:
    """Bound of a CPL/SLL layer y = x - K^T S ReLU(K x + b) from its own (eval) constants.

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


def layer_bounds(
    model: nn.Module,
    input_shape: tuple[int, ...],
    iterations: int = 1000,
    rtol: float = 1e-9,
) -> list[LayerBound]:
    """Per-stage Lipschitz bounds of a sequential model for inputs of ``input_shape`` (C, H, W).

    Each parametrised stage is measured on a float64 copy (the model is left unchanged), at
    the input size it sees in the model. A stage of unknown type raises
    ``TypeError``: it cannot be bounded silently.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, dtype=dtype_of(model), device=device_of(model))
    bounds = []
    try:
        for name, stage in stages(model):
            bounds.append(stage_bound(name, stage, tuple(x.shape[1:]), iterations, rtol))
            with torch.no_grad():
                x = stage(x)
    finally:
        model.train(was_training)
    return bounds


def stage_bound(
    name: str, stage: nn.Module, shape: tuple[int, ...], iterations: int, rtol: float
) -> LayerBound:
    """The Lipschitz bound of one stage at input shape ``shape`` (see ``layer_bounds``)."""
    if isinstance(stage, NONEXPANSIVE) or is_global_max_pool(stage):
        return LayerBound(name, "nonexpansive", 1.0, 0, True)
    if isinstance(stage, RESIDUAL):
        bound, steps, done = residual_bound(stage, shape, iterations, rtol)
        return LayerBound(name, "residual", bound, steps, done)
    if isinstance(stage, AFFINE):
        bound, steps, done = affine_bound(stage, shape, iterations, rtol)
        return LayerBound(name, "affine", bound, steps, done)
    raise TypeError(f"no Lipschitz bound known for stage {name!r} ({type(stage).__name__})")


def is_global_max_pool(stage: nn.Module) -> bool:
    """AdaptiveMaxPool2d(1): each output is a max over one channel, so it is 1-Lipschitz."""
    return isinstance(stage, nn.AdaptiveMaxPool2d) and stage.output_size in (1, (1, 1))


def lipschitz_upper_bound(
    model: nn.Module,
    input_shape: tuple[int, ...],
    iterations: int = 1000,
    rtol: float = 1e-9,
    safety: float = 0.0,
) -> float:
    """Product of the per-stage bounds of ``layer_bounds``, each times (1 + safety).

    Honest caveat: for affine stages the per-layer figure comes from power iteration, which
    never overestimates the layer norm, so the product is an upper bound of the model's
    Lipschitz constant only up to the (small, rtol-level once converged) power-iteration
    error; pass ``safety`` > 0 to inflate each factor, and check ``layer_bounds(...)[i]
    .converged``. The paper reports the same product with 1000 iterations per layer, but
    with CPL and SLL counted as 1; here they are bounded from their own constants.
    """
    bound = 1.0
    for layer in layer_bounds(model, input_shape, iterations, rtol):
        bound *= layer.bound * (1.0 + safety)
    return bound


# ----------------------------------------------------------------------------- variance check


def batch_variance(activations: torch.Tensor) -> float:
    """(1/b) sum_i ||a_i - mu||^2 over a batch of b activations (1LC App. F)."""
    flat = activations.flatten(1)
    return (flat - flat.mean(dim=0)).square().sum(dim=1).mean().item()


@torch.no_grad()
def activation_variances(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Batch variance of the input, then after every stage of ``stages(model)`` (eval mode).

    (1/b) sum_i ||a_i - mu||^2 = (1/(2 b^2)) sum_{i,j} ||a_i - a_j||^2, so a 1-Lipschitz
    stage can never increase it (1LC App. F): an increase proves a stage is not 1-Lipschitz.
    """
    was_training = model.training
    model.eval()
    try:
        variances = [batch_variance(x)]
        for _, stage in stages(model):
            x = stage(x)
            variances.append(batch_variance(x))
    finally:
        model.train(was_training)
    return variances


def variance_increases(variances: list[float], rtol: float = 1e-6) -> list[int]:
    """Stage numbers i (1-based, as in ``activation_variances``) whose variance grew by more
    than the relative tolerance rtol; empty for a model that passes the check."""
    return [i for i in range(1, len(variances)) if variances[i] > variances[i - 1] * (1 + rtol)]


# ----------------------------------------------------------------------------- attack check


def pgd_l2_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 50,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """Adversarial inputs within the l2 ball of radius eps around x (PGD, margin loss).

    Each step moves along the normalised gradient that lowers z_y - max_{j != y} z_j and
    projects back onto the ball; the point with the lowest gap seen is returned per example.
    Inputs are not clipped to the image range: the certificate covers the whole ball, so the
    unclipped attack is the stronger test. Default step size 2.5 eps / steps. The model's mode
    is left unchanged; call ``model.eval()`` first to attack the inference model.
    """
    step_size = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        radius = eps * torch.rand(len(x), generator=generator, dtype=x.dtype).to(x.device)
        delta = unit(noise) * radius.view(-1, *[1] * (x.dim() - 1))
    best, best_gap = x + delta, torch.full((len(x),), float("inf"), device=x.device)
    for step in range(steps + 1):
        delta.requires_grad_(step < steps)
        gap = logit_gaps(model(x + delta), y)
        better = gap.detach() < best_gap
        best = torch.where(expand(better, x), (x + delta).detach(), best)
        best_gap = torch.where(better, gap.detach(), best_gap)
        if step == steps:
            break
        (grad,) = torch.autograd.grad(gap.sum(), delta)
        delta = project(delta.detach() - step_size * unit(grad), eps)
    return best


def expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example mask (B,) viewed to broadcast against ``like`` (B, ...)."""
    return mask.view(-1, *[1] * (like.dim() - 1))


def unit(delta: torch.Tensor) -> torch.Tensor:
    """Each example of ``delta`` scaled to l2 norm 1 (zero stays zero)."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta / expand(norms, delta)


def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Each example of ``delta`` scaled into the l2 ball of radius eps."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * expand((eps / norms).clamp(max=1.0), delta)


@dataclass(frozen=True)
class AttackCheck:
    """Outcome of ``attack_check`` at one radius."""

    eps: float
    clean_accuracy: float
    certified_accuracy: float
    attacked_accuracy: float
    certified_flipped: int  # certified examples the attack made wrong: must be 0


def attack_check(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    lipschitz: float = 1.0,
    steps: int = 50,
    step_size: float | None = None,
) -> AttackCheck:
    """Attack the eval model with PGD at radius eps and compare with its certificates (T13).

    Sound certificates imply ``certified_flipped == 0`` and hence attacked accuracy >= CRA.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
        adversarial = pgd_l2_attack(model, x, y, eps, steps, step_size)
        with torch.no_grad():
            robust = correct(model(adversarial), y)
    finally:
        model.train(was_training)
    is_certified = certified(logits, y, eps, lipschitz)
    return AttackCheck(
        eps=eps,
        clean_accuracy=correct(logits, y).double().mean().item(),
        certified_accuracy=is_certified.double().mean().item(),
        attacked_accuracy=robust.double().mean().item(),
        certified_flipped=int((is_certified & ~robust).sum().item()),
    )
