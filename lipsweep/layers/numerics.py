"""Numerical helpers shared by several layers: power iteration, Bjorck orthonormalisation.

All functions are batched over leading dimensions and contain no Python loop over channels or
frequencies.
"""

from __future__ import annotations

import torch


def matrix_power_iteration(
    matrices: torch.Tensor, u: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest singular value of each matrix in a batch (..., m, n), by power iteration.

    ``u`` (..., n) is the start vector (warm start); returns (sigma, u, v) with sigma (...,)
    the estimate u^T A v. The estimate never exceeds the true sigma_max.
    """
    for _ in range(iterations):
        v = matrices @ u.unsqueeze(-1)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(1e-12)
        u = (matrices.mT @ v).squeeze(-1)
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    v = matrices @ u.unsqueeze(-1)
    sigma = v.norm(dim=-2).squeeze(-1)
    return sigma, u, (v / sigma[..., None, None].clamp_min(1e-12)).squeeze(-1)


def bjorck_orthonormalize(
    matrices: torch.Tensor, iterations: int, u: torch.Tensor | None = None, power_iterations: int = 10
) -> torch.Tensor:
    """Orthonormalise each matrix of a batch (..., m, n) with the Bjorck-Bowie iteration.

    W <- W (3I - W^T W) / 2 (beta = 0.5, order 1). Each step maps a singular value s to
    1.5 s - 0.5 s^3, which stays in [0, 1] for s in [0, sqrt(3)], so after pre-scaling by the
    power-iteration estimate of sigma_max (slightly low, never by a factor sqrt(3)) no singular
    value ever exceeds 1. Without ``u`` the pre-scaling uses the Frobenius norm (an exact upper
    bound). Works on the wide side if rows < cols.
    """
    transpose = matrices.shape[-2] < matrices.shape[-1]
    w = matrices.mT if transpose else matrices
    if u is None:
        scale = torch.linalg.matrix_norm(w, ord="fro")
    else:
        # u (..., n) lives on the column side of the (possibly transposed) matrix.
        scale, _, _ = matrix_power_iteration(w.detach(), u, power_iterations)
    w = w / scale[..., None, None].clamp_min(1e-12)
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    for _ in range(iterations):
        w = w @ (1.5 * eye - 0.5 * (w.mT @ w))
    return w.mT if transpose else w
