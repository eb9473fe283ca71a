"""Certification and soundness checks: margins, certified robust accuracy (CRA), the
certificate of a trained model (guaranteed bound, float64 margins, PGD check), the
activation-variance check and a PGD attack check.

Certificate (1LC Sec. 4; LAYERS.md Sec. 1). For an L-Lipschitz model (l2) with logits z, a
prediction is certified at radius eps iff it is correct and

    z_y - max_{j != y} z_j > sqrt(2) L eps,

since no perturbation of norm eps can then close the gap. A tie at the top is not a correct
prediction (argmax would be arbitrary), so it is never certified.

What a certificate covers. ``certify_model`` evaluates a float64 copy of the stored weights: its
certificates hold for the exact (float64) evaluation of those weights, GAP_SLACK covering the
float64 rounding. The float32 model a user runs rounds differently; ``certify_model`` measures
by how much, d = max |z32 - z64| over every logit of the certified data
(``float32_logit_deviation``). Each logit moving by at most d moves a gap by at most 2 d, so a
point certified in float64 stays correct in float32 within eps if gap64 > sqrt(2) L eps + 2 d;
a user who reads the gap from float32 logits pays 2 d at x and 2 d at the perturbed point and
should require gap32 > sqrt(2) L eps + 4 d. These are estimate-based margins, not proofs: d is
measured on the data, not bounded at every point of the ball.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lipsweep.bounds import model_bound
from lipsweep.loss import offset_cross_entropy
from lipsweep.model import stages

# Radii of the paper's logs: 36/255, 72/255, 108/255 and 1.0 (= 255/255).
RADII: tuple[float, ...] = (36 / 255, 72 / 255, 108 / 255, 1.0)


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
    logits: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    lipschitz: float = 1.0,
    slack: float = 0.0,
) -> torch.Tensor:
    """Certified at radius eps (bool per example): correct and gap > sqrt(2) L eps + slack."""
    return logit_gaps(logits, labels) > math.sqrt(2) * lipschitz * eps + slack


def certified_accuracy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    lipschitz: float = 1.0,
    slack: float = 0.0,
) -> float:
    """Fraction of examples certified at radius eps (eps = 0: strict clean accuracy)."""
    return certified(logits, labels, eps, lipschitz, slack).double().mean().item()


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of ``batches`` (model in eval mode, no gradient), on the CPU."""
    was_training = model.training
    model.eval()
    batches = list(batches) if progress is not None else batches
    pairs = []
    try:
        for x, y in batches:
            pairs.append((model(x).cpu(), y.cpu()))
            if progress is not None:
                progress("certify", len(pairs), len(batches))  # type: ignore[arg-type]
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
    return evaluate_logits(*predict(model, batches), lipschitz)


def evaluate_logits(
    logits: torch.Tensor, labels: torch.Tensor, lipschitz: float = 1.0, slack: float = 0.0
) -> dict[str, float]:
    """``evaluate`` from logits already computed (``slack``: see ``certified``)."""
    result = {"accuracy": certified_accuracy(logits, labels, 0.0)}
    for eps in RADII:
        result[radius_key(eps)] = certified_accuracy(logits, labels, eps, lipschitz, slack)
    result["median_margin"] = margins(logits, labels).double().quantile(0.5).item()
    result["loss"] = offset_cross_entropy(logits.double(), labels).item()
    result["examples"] = float(len(labels))
    return result


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


# ----------------------------------------------------------------------------- the certificate

# Absolute slack on the logit gap of a float64 certificate. The float64 rounding of the forward
# pass is far smaller: ~ depth x (k^2 C) x u x ||activation|| ~ 30 x 9216 x 1.1e-16 x 100, 3e-9.
GAP_SLACK = 1e-6
ATTACK_STEPS = 50
Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class RadiusCheck:
    """The certificate at one radius and the PGD attack on the points it certifies."""

    eps: float
    certified: int  # points certified at eps (correct, gap > sqrt(2) L eps + GAP_SLACK)
    attacked: int  # certified points attacked (all of them unless ``attack_limit`` cut it)
    flipped: int  # attacked certified points the attack made wrong: any flip is a bug


@dataclass(frozen=True)
class Certificate:
    """What ``certify_model`` proves about one model on one dataset."""

    lipschitz_bound: float  # guaranteed bound of the eval model (``lipsweep.bounds``)
    lipschitz: float  # the L that certifies: max(1, lipschitz_bound)
    stages: list[tuple[str, float]]  # the guaranteed bound of every stage
    metrics: dict[str, float]  # ``evaluate``'s keys, from float64 logits with L = ``lipschitz``
    radii: list[RadiusCheck]
    seconds: dict[str, float]  # "bound", "certify", "attack"
    # max |z32 - z64| over every logit of the data: the float32 model against the float64 one
    # (a measurement; see the module docstring for the margin it suggests)
    float32_logit_deviation: float

    @property
    def flipped(self) -> int:
        return sum(check.flipped for check in self.radii)


def certify_model(
    model: nn.Module,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attack: bool = True,
    attack_steps: int = ATTACK_STEPS,
    attack_limit: int | None = None,
    progress: Progress | None = None,
) -> Certificate:
    """Certify ``model`` on the batches ``data``: guaranteed bound, float64 CRA, PGD check.

    The certificate is computed on a float64 copy of the eval model (``model`` is left
    alone): the guaranteed Lipschitz bound L_g of every stage (``lipsweep.bounds``), then the
    logits of every point in float64, certified at radius eps iff correct with gap >
    sqrt(2) L eps + GAP_SLACK, L = max(1, L_g). It holds for the exact (float64) evaluation of
    the stored weights; a float32 copy runs on the same data to measure how far float32 logits
    are from them (``float32_logit_deviation``; the module docstring gives the margin a float32
    user should add). With ``attack``, PGD-L2 (``attack_steps`` steps, unclipped) attacks
    every certified point at its radius, at most ``attack_limit`` per radius; a certified
    point it flips would disprove the certificate.
    """
    start = time.perf_counter()
    checked = copy.deepcopy(model).double().eval()
    batches = [(x.double(), y) for x, y in data]
    if not batches:
        raise ValueError("certify_model needs at least one batch")
    bound, stage_list = model_bound(checked, tuple(batches[0][0].shape[1:]))
    if not math.isfinite(bound):  # max(1.0, nan) is 1.0: never certify with it
        raise ValueError(f"the model's Lipschitz bound is {bound} (non-finite weights)")
    lipschitz = max(1.0, bound)
    seconds = {"bound": time.perf_counter() - start}
    start = time.perf_counter()
    logits, labels = predict(checked, batches, progress)
    metrics = evaluate_logits(logits, labels, lipschitz, GAP_SLACK)
    deviation = float32_deviation(model, batches, logits)
    seconds["certify"] = time.perf_counter() - start
    start = time.perf_counter()
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    radii = [
        check_radius(checked, (x, y.to(x.device)), len(batches[0][0]), logits, eps, lipschitz,
                     attack, attack_steps, attack_limit, progress)
        for eps in RADII
    ]  # fmt: skip
    seconds["attack"] = time.perf_counter() - start
    return Certificate(bound, lipschitz, stage_list, metrics, radii, seconds, deviation)


def float32_deviation(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], logits64: torch.Tensor
) -> float:
    """max |z32 - z64| over every logit: a float32 copy of the eval model on the inputs of
    ``batches`` rounded to float32, against the float64 logits ``logits64`` of the same points."""
    model32 = copy.deepcopy(model).float()
    logits32, _ = predict(model32, ((x.float(), y) for x, y in batches))
    return (logits32.double() - logits64).abs().max().item()


def check_radius(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    size: int,
    logits: torch.Tensor,
    eps: float,
    lipschitz: float,
    attack: bool,
    steps: int,
    limit: int | None,
    progress: Progress | None = None,
) -> RadiusCheck:
    """Count the points certified at eps and attack them, ``size`` at a time (``certify_model``)."""
    x, y = data
    mask = certified(logits, y.cpu(), eps, lipschitz, GAP_SLACK).to(x.device)
    targets = mask.nonzero().flatten()
    if not attack:
        return RadiusCheck(eps, len(targets), 0, 0)
    targets = targets[:limit] if limit is not None else targets
    flipped, done = 0, 0
    for chunk in targets.split(size) if len(targets) else ():
        adversarial = pgd_l2_attack(model, x[chunk], y[chunk], eps, steps)
        with torch.no_grad():
            flipped += int((~correct(model(adversarial), y[chunk])).sum())
        done += len(chunk)
        if progress is not None:
            progress(f"attack {radius_key(eps)}", done, len(targets))
    return RadiusCheck(eps, int(mask.sum()), len(targets), flipped)


def certificate_record(certificate: Certificate) -> dict[str, Any]:
    """The certificate as plain JSON values."""
    return {
        "lipschitz_bound": certificate.lipschitz_bound,
        "certified_lipschitz": certificate.lipschitz,
        "stages": [{"stage": name, "bound": bound} for name, bound in certificate.stages],
        "metrics": certificate.metrics,
        "radii": [
            {
                "radius": radius_key(c.eps),
                "eps": c.eps,
                "certified": c.certified,
                "attacked": c.attacked,
                "flipped": c.flipped,
            }
            for c in certificate.radii
        ],
        "seconds": certificate.seconds,
        "float32_logit_deviation": certificate.float32_logit_deviation,
    }
