"""LOT: Layer-wise Orthogonal Training convolution (Xu, Li & Li, NeurIPS 2022).

Per frequency of the zero-padded image, the kernel spectrum V(f) is orthogonalised as
(V V^H)^{-1/2} V, with the inverse square root from a truncated Newton-Schulz iteration.
Following the paper's code (``lot_ortho_conv.py``): S = V V^H + 1e-4 I is divided by its own
Frobenius norm (+1e-4) at each frequency, and 10 iterations are used in training and in eval.
The input is zero-padded by k // 2 and the output cropped back, so the layer is an orthogonal
map compressed to the image: 1-Lipschitz, and orthogonal for k = 1 (no padding).

Speed (the same map as the paper's full ``fft2`` code, about half the work): a real kernel's
spectrum is Hermitian, V(-f) = conj(V(f)), and so is W_orth, so only the W // 2 + 1 columns of
``rfft2`` are orthogonalised (fewer still: ``map_rfft_grid`` skips the conjugate pairs inside
that grid) and the output is ``irfft2``. Every Newton-Schulz factor is a
Hermitian matrix, so their products use ``hermitian_matmul``, whose backward multiplies by the
factors themselves instead of their conjugate transposes (PyTorch's CPU batched matmul is
several times slower on conjugated operands).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.numerics import (
    complex_dtype,
    kernel_spectrum,
    map_rfft_grid,
    padded_spectral_conv,
)

EPSILON = 1e-4  # regulariser of S and of its norm, as in the paper's code
ITERATIONS = 10  # Newton-Schulz steps, training and eval


class _HermitianMatmul(torch.autograd.Function):
    """a @ b for Hermitian a and b: grad_a = g b^H = g b and grad_b = a^H g = a g."""

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        return grad @ b, a @ grad


def hermitian_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched a @ b of Hermitian matrices, with a backward that never conjugates."""
    return _HermitianMatmul.apply(a, b)


def newton_schulz_hermitian(matrices: torch.Tensor, iterations: int) -> torch.Tensor:
    """S^{-1/2} by the coupled Newton-Schulz iteration of LOT (Xu et al., NeurIPS 2022):
    Y_0 = S, Z_0 = I; T = (3I - Z Y) / 2, Y <- Y T, Z <- T Z. It converges for spectra in
    (0, 1]; a truncated Z under-estimates S^{-1/2}, so Z S Z <= I.

    The first step (Z = I) is done without products, the last Y (unused) is not formed; all
    factors are Hermitian polynomials in S, hence ``hermitian_matmul``. T is one fused
    1.5 I - 0.5 Z Y (one pass over the matrices, forward and backward).
    """
    half_3i = 1.5 * torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    t = torch.add(half_3i, matrices, alpha=-0.5)
    y, z = hermitian_matmul(matrices, t), t
    for step in range(1, iterations):
        t = torch.add(half_3i, hermitian_matmul(z, y), alpha=-0.5)
        z = hermitian_matmul(t, z)
        if step + 1 < iterations:
            y = hermitian_matmul(y, t)
    return z


def orthogonalize(v: torch.Tensor) -> torch.Tensor:
    """Z V / sqrt(n) for a batch of square matrices V: S = V V^H + eps I, n = ||S||_F + eps,
    Z ~ (S / n)^{-1/2} by Newton-Schulz (``ITERATIONS`` steps)."""
    eye = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
    s = v @ v.mH + EPSILON * eye
    norm = torch.linalg.matrix_norm(s, keepdim=True) + EPSILON  # per frequency
    z = newton_schulz_hermitian(s / norm, ITERATIONS)
    return z @ v / norm.sqrt()


class LOTConv2d(CachedParametrization):
    """Orthogonalised k x k convolution: y = crop(ifft2(W_orth(f) fft2(pad(x))(f))) + b.

    W_orth(f) = Z(f) V(f) / sqrt(n(f)) with S(f) = V V^H + eps I, n(f) = ||S(f)||_F + eps and
    Z(f) ~ (S(f) / n(f))^{-1/2}. Identity (Dirac) initialisation and zero bias.
    """

    size_dependent = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        require_square(type(self).__name__, in_channels, out_channels)
        self.kernel_size = int(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.dirac_(self.weight)

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def parametrize(self, training: bool, height: int, width: int) -> torch.Tensor:
        """W_orth(f) on the rfft grid, shape (H + 2p, (W + 2p) // 2 + 1, C, C); for k = 1,
        where V(f) = W at every frequency, the one real matrix W_orth (C, C). Float64
        materialisation for the eval cache."""
        weight = self.weight if training else self.weight.double()
        if self.kernel_size == 1:
            return orthogonalize(weight[:, :, 0, 0]).to(self.weight.dtype)
        padded_width = width + 2 * self.padding
        v = kernel_spectrum(weight, height + 2 * self.padding, padded_width, True)
        return map_rfft_grid(orthogonalize, v, padded_width).to(complex_dtype(self.weight.dtype))

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return padded_spectral_conv(x, weight, self.bias, self.padding)

    def extra_repr(self) -> str:
        channels = self.weight.shape[0]
        return f"{channels}, {channels}, kernel_size={self.kernel_size}"
