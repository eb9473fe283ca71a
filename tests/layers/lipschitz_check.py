"""One shared measurement of a layer's Lipschitz constant, used by every layer test.

The Jacobian is exact (autograd, full matrix) on a small input, so its largest singular value
is the local Lipschitz constant at that point; for an affine layer it is the global one.
"""

from __future__ import annotations

import torch
from torch import nn


def jacobian_singular_values(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All singular values of d layer(x) / dx for one input x of shape (C, H, W)."""

    def flat(z: torch.Tensor) -> torch.Tensor:
        return layer(z.view(1, *x.shape)).reshape(-1)

    jacobian = torch.autograd.functional.jacobian(flat, x.reshape(-1))
    return torch.linalg.svdvals(jacobian)


def largest_singular_value(
    layer: nn.Module,
    shape: tuple[int, int, int],
    points: int = 3,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[float, float]:
    """(max over random points of sigma_max, min over points of sigma_min) of the Jacobian."""
    g = torch.Generator().manual_seed(seed)
    sigma_max, sigma_min = 0.0, float("inf")
    for _ in range(points):
        values = jacobian_singular_values(layer, torch.randn(shape, generator=g, dtype=dtype))
        sigma_max = max(sigma_max, values.max().item())
        sigma_min = min(sigma_min, values.min().item())
    return sigma_max, sigma_min


def adversarial_steps(
    layer: nn.Module,
    shape: tuple[int, int, int],
    steps: int = 30,
    lr: float = 0.05,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> None:
    """Optimizer steps (train mode) that try to push the layer past 1-Lipschitz.

    The loss rewards a large output-distance / input-distance ratio on nearby pairs plus a
    large output norm, so an unconstrained layer would grow without bound.
    """
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    layer.train()
    for _ in range(steps):
        x = torch.randn(8, *shape, generator=g, dtype=dtype)
        y = x + 0.1 * torch.randn(8, *shape, generator=g, dtype=dtype)
        ratio = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        growth = layer(x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
        loss = -(ratio.mean() + growth.mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
