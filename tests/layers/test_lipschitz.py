"""Every 1-Lipschitz layer, measured: exact Jacobian singular values in train and eval mode,
at initialisation and after adversarial optimizer steps (float64)."""

from __future__ import annotations

import pytest
import torch

from lipsweep.layers import LAYERS, METHODS
from tests.layers.lipschitz_check import adversarial_steps, largest_singular_value

# (train tolerance, eval tolerance) on sigma_max <= 1 + tol, each with its reason.
TOLERANCE: dict[str, tuple[float, float]] = {
    # Exact bounds (Gershgorin / SDP rescaling): only float64 round-off.
    "aol": (1e-5, 1e-5),
    "sll": (1e-5, 1e-5),
    # Exactly orthogonal maps up to float64 round-off; BCOP's 20 Bjorck steps never push a
    # singular value above 1 after power-iteration pre-scaling.
    "bcop": (1e-5, 1e-5),
    "aoc": (1e-5, 1e-5),  # BCOP's argument: Bjorck from sigma_max <= 1, contractions multiplied
    "cayley": (1e-5, 1e-5),
    # BRO's reflector I - 2V(V^H V + eps I)^-1 V^H has eigenvalues 1 - 2s/(s + eps) in (-1, 1].
    "bro": (1e-5, 1e-5),
    # Sandwich: Jacobians 2 A^* D B with [A B] exactly orthonormal rows (Cayley): ||J|| <= 1.
    "sandwich": (1e-5, 1e-5),
    # Truncated Newton-Schulz: unconverged directions shrink (never grow) in exact arithmetic.
    "lot": (1e-4, 1e-4),
    # exp(L) truncated after 5 terms in training (remainder <= |L|^6/6!), 12 in eval.
    "soc": (3e-2, 1e-4),
    # One warm-started power iteration per training step lags the true sigma after each
    # update; eval runs the power iteration to convergence.
    "cpl": (2e-2, 1e-3),
}
# Orthogonal layers keep sigma_min ~ 1 (eval mode). LOT only without padding: its zero padding
# and crop make the map a compression of an orthogonal one, so sigma_min < 1 is correct there.
ORTHOGONAL = {"bcop": 1e-4, "aoc": 1e-4, "cayley": 1e-5, "soc": 1e-4, "lot": 1e-3}
SHAPES = [(3, 4, 8), (3, 6, 6), (1, 8, 6)]  # (kernel, channels, spatial size)


def build(method: str, channels: int, kernel: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return LAYERS[method](channels, channels, kernel).double()


def assert_bounded(
    method: str, layer: torch.nn.Module, shape: tuple[int, int, int], when: str
) -> None:
    train_tol, eval_tol = TOLERANCE[method]
    layer.train()
    sigma_train, _ = largest_singular_value(layer, shape)
    layer.eval()
    sigma_eval, sigma_min = largest_singular_value(layer, shape)
    assert sigma_train <= 1 + train_tol, f"{method} {when}, train mode: sigma_max {sigma_train}"
    assert sigma_eval <= 1 + eval_tol, f"{method} {when}, eval mode: sigma_max {sigma_eval}"
    kernel = getattr(layer, "kernel_size", None)
    orthogonal = method in ORTHOGONAL and not (method == "lot" and kernel not in (1, (1, 1)))
    if orthogonal:
        assert sigma_min >= 1 - ORTHOGONAL[method], f"{method} {when}: sigma_min {sigma_min}"


@pytest.mark.parametrize("kernel,channels,size", SHAPES)
@pytest.mark.parametrize("method", METHODS)
def test_jacobian_is_bounded_at_init_and_after_adversarial_steps(
    method: str, kernel: int, channels: int, size: int
) -> None:
    layer = build(method, channels, kernel)
    shape = (channels, size, size)
    assert_bounded(method, layer, shape, "at init")
    adversarial_steps(layer, shape)
    assert_bounded(method, layer, shape, "after adversarial steps")


def test_standard_conv_is_not_constrained() -> None:
    """The measurement itself can fail: an unconstrained conv scaled up is caught."""
    layer = build("standard", 4, 3)
    with torch.no_grad():
        layer.weight.mul_(10)
    sigma, _ = largest_singular_value(layer, (4, 8, 8))
    assert sigma > 1.5
