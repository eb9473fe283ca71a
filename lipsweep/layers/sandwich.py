"""Sandwich: the 1-Lipschitz "sandwich" convolution (Wang & Manchester, ICML 2023, "Direct
Parameterization of Lipschitz-Bounded Deep Networks"; the paper this project reproduces left it
out of its comparison for vanishing gradients).

    y = sqrt(2) A^* Psi ReLU(sqrt(2) Psi^{-1} B x + b),   Psi = diag(exp(psi)) per channel,

with A, B circular convolutions (no padding), one c x c matrix each per frequency f of the
rfft grid. [A(f) B(f)] (c x 2c) is the Cayley transform of alpha P(f) / ||P||_F, P(f) the
spectrum of a c x 2c x k x k kernel (``wide_cayley``): its rows are orthonormal,
A A^H + B B^H = I. The paper's settings kept here: the kernel initialised like nn.Conv2d,
alpha = ||P||_F at initialisation (the paper sets it at the first forward), psi = 0, a bias on
the hidden layer only; the ReLU is part of the layer.

What it guarantees (1-Lipschitz, not orthogonal): the map is piecewise affine with Jacobians
J = 2 A^* Psi D Psi^{-1} B = 2 A^* D B, D diagonal in [0, 1] (ReLU'; Psi and D are both
diagonal in the pixel basis, so they commute). With W = [A B] and G = W^* D W, for unit u, v:
0 <= (u, -v)^* G (u, -v) gives Re u^* J v <= u^* G_11 u + v^* G_22 v =: s, and
(u, v)^* G (u, v) <= 2 ||W||^2 gives Re u^* J v <= 2 ||W||^2 - s; so ||J|| <= ||W||^2 = 1.
``lipsweep.bounds`` uses min(||W||^2, 2 ||A|| ||B||) from the cached weights (the second since
||D|| <= 1), with ||W|| <= max_f ||W(f)|| as for Cayley.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.cayley import conv_default_init, nonzero_norm
from lipsweep.layers.numerics import (
    complex_dtype,
    inverse,
    kernel_spectrum,
    map_rfft_grid,
    spectral_matmul,
)

SQRT2 = math.sqrt(2.0)
PSI_LIMIT = 10.0  # |psi| is clamped here: any positive diagonal Psi keeps the guarantee, and
# exp(+-10) keeps Psi^{-1} B x finite in float32 from any state


def wide_cayley(p: torch.Tensor) -> torch.Tensor:
    """[A B] (..., c, 2c) with orthonormal rows from P = [U V] (..., c, 2c): Z = U - U^H + V V^H,
    A = (I + Z)^{-1} (I - Z), B = -2 (I + Z)^{-1} V. Then A A^H + B B^H = (I + Z)^{-1} [(I - Z)
    (I - Z)^H + 4 V V^H] (I + Z)^{-H} = I, since (I + Z)(I + Z)^H - (I - Z)(I - Z)^H = 2 (Z +
    Z^H) = 4 V V^H. I + Z is invertible: its Hermitian part I + V V^H is >= I."""
    c = p.shape[-2]
    u, v = p[..., :c], p[..., c:]
    z = u - u.mH + v @ v.mH
    eye = torch.eye(c, dtype=p.dtype, device=p.device)
    inv = inverse(eye + z)
    return torch.cat([inv @ (eye - z), -2 * inv @ v], dim=-1)


def sandwich_apply(
    x: torch.Tensor, a_adjoint: torch.Tensor, b: torch.Tensor, psi: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """sqrt(2) A^* Psi ReLU(sqrt(2) Psi^{-1} B x + b) with the rfft-grid matrices of A^* and B
    (H, W // 2 + 1, c, c) each."""
    size = x.shape[-2:]
    scale = psi.clamp(-PSI_LIMIT, PSI_LIMIT).exp()[:, None, None]
    hidden = torch.fft.irfft2(spectral_matmul(b, torch.fft.rfft2(x)), s=size)
    active = F.relu(SQRT2 * hidden / scale + bias[:, None, None])
    return SQRT2 * torch.fft.irfft2(
        spectral_matmul(a_adjoint, torch.fft.rfft2(scale * active)), s=size
    )


class SandwichConv2d(CachedParametrization):
    """Sandwich k x k convolution (module docstring): eval caches (A^*(f), B(f)) per input size."""

    size_dependent = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        require_square(type(self).__name__, in_channels, out_channels)
        self.kernel_size = int(kernel_size)
        c = out_channels
        self.weight = nn.Parameter(torch.empty(c, 2 * c, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(c))
        conv_default_init(self.weight, self.bias)
        self.alpha = nn.Parameter(self.weight.detach().norm().reshape(()))
        self.psi = nn.Parameter(torch.zeros(c))

    def parametrize(
        self, training: bool, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A^*(f), B(f)) on the rfft grid of H x W, each (H, W // 2 + 1, c, c); float64 for
        the eval cache, cast back to the weight's complex dtype."""
        weight, alpha = self.weight, self.alpha
        if not training:
            weight, alpha = weight.double(), alpha.double()
        spectrum = kernel_spectrum(weight, height, width, onesided=True)
        scale = alpha / nonzero_norm(weight)
        rows = map_rfft_grid(lambda s: wide_cayley(s * scale), spectrum, width)
        rows = rows.to(complex_dtype(self.weight.dtype))
        c = rows.shape[-2]
        return rows[..., :c].mH.contiguous(), rows[..., c:].contiguous()

    def apply_weight(
        self, x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        a_adjoint, b = weight
        return sandwich_apply(x, a_adjoint, b, self.psi, self.bias)

    def extra_repr(self) -> str:
        c = self.weight.shape[0]
        return f"{c}, {c}, kernel_size={self.kernel_size}"
