"""SLL: SDP-based Lipschitz residual convolution (Araujo et al., ICLR 2023).

    y = x - K^T (T * ReLU(K x + b)),   K a zero-padded k x k convolution, K^T its adjoint,

with the paper's (commit faaa02e, as in 1LC) diagonal rescaling, q_hat = |q| + 1e-6:

    T_i = 2 / (sum_j sum_shifts |(K K^T)_ij(shift)| q_hat_j / q_hat_i + 1e-6).

Why it is 1-Lipschitz: the Jacobian is I - K^T T' K with T' = T * ReLU' in [0, T], which has
norm <= 1 iff K^T T' K <= 2 I, implied by K K^T <= 2 T^-1. The weighted Gershgorin (Schur)
test on the full-plane convolution gives that with the bound above; zero padding compresses
the full-plane operator (an isometric embedding, then a crop), so the bound still holds.

The official conv code broadcasts exp(q) and exp(-q) on the same axis, so q cancels and gets
no gradient (LAYERS.md 2.7); here q_hat_j weights the j axis and q_hat_i the i axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square

EPS = 1e-6


def init_kernel_and_bias(kernel: torch.Tensor, bias: torch.Tensor) -> None:
    """SLL's init (also used for CPL): Xavier-normal kernel, bias ~ U(+-1/sqrt(fan_in))."""
    nn.init.xavier_normal_(kernel)
    bound = 1 / math.sqrt(kernel[0].numel())
    nn.init.uniform_(bias, -bound, bound)


def residual_step(
    x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """x - K^T (scale * ReLU(K x + b)) with K the zero-padded conv (padding k // 2).

    ``conv_transpose2d`` with the same kernel and padding is the exact adjoint of ``conv2d``,
    also for even k (where the inner map has one more row and column than x).
    """
    padding = kernel.shape[-1] // 2
    inner = F.relu(F.conv2d(x, kernel, bias, padding=padding))
    return x - F.conv_transpose2d(scale * inner, kernel, padding=padding)


def sll_rescaling(kernel: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """T (out,) of the SLL paper for a kernel (out, in, k, k) and weights q (out,)."""
    gram = F.conv2d(kernel, kernel, padding=kernel.shape[-1] - 1)  # (out, out, 2k-1, 2k-1)
    q_hat = q.abs() + EPS
    bound = (gram.abs().sum(dim=(2, 3)) * q_hat[None, :]).sum(dim=1) / q_hat
    return 2 / (bound + EPS)


class SLLConv2d(CachedParametrization):
    """SLL residual convolution; T (and K) are cached in eval, inference still runs 2 convs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        require_square("SLLConv2d", in_channels, out_channels)
        self.kernel_size = kernel_size
        self.kernel = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.q = nn.Parameter(torch.randn(out_channels))
        init_kernel_and_bias(self.kernel, self.bias)

    def parametrize(self, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # The cached eval pair holds a copy of the kernel: the scale is only valid for the
        # kernel it was computed from, even if the live one is edited behind the cache's back.
        kernel = self.kernel if training else self.kernel.detach().clone()
        return kernel, sll_rescaling(kernel, self.q)[:, None, None]

    def apply_weight(
        self, x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        kernel, scale = weight
        return residual_step(x, kernel, self.bias, scale)

    def extra_repr(self) -> str:
        channels = self.kernel.shape[0]
        return f"{channels}, {channels}, kernel_size={self.kernel_size}"
