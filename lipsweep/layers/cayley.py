"""Cayley orthogonal convolution and its dense head (Trockman & Kolter, ICLR 2021).

A circular convolution is block-diagonal in the 2-D DFT: one c x c matrix W_hat(f) per
frequency. The layer replaces each by the Cayley transform of its skew part, a unitary matrix,
so the convolution is exactly orthogonal. Only the W // 2 + 1 columns of ``rfft2`` are needed.

Scaling. The paper's code uses Q(f) = cayley(alpha W_hat(f) / ||W_hat||_F) with the global
Frobenius norm over the rfft grid of the first input size, and alpha = ||W_hat||_F created
lazily in the first forward (so never handed to the optimizer). Here the norm is measured as
the root mean square of ||W_hat(f)||_F over the full frequency grid, which by Parseval is
||W||_F for any input size (k <= H, W). So Q(f) = cayley(alpha W_hat(f) / ||W||_F) with
alpha = ||W||_F created in ``__init__`` and trained: the map at initialisation is the
reference's at every input size, alpha has a size-independent meaning, and the weight is
still scale-free. ``CayleyLinear`` already did this in the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.numerics import (
    cayley_transform,
    complex_dtype,
    kernel_spectrum,
    map_rfft_grid,
    spectral_matmul,
)


class CayleyConv2d(CachedParametrization):
    """Orthogonal k x k circular convolution parametrised in the Fourier domain.

    y = irfft2(Q(f) rfft2(x)(f)) + b with Q(f) = cayley(alpha W_hat(f) / ||W||_F) per
    frequency f; W_hat is the centred circular kernel spectrum (see ``kernel_spectrum``).
    """

    size_dependent = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        require_square(type(self).__name__, in_channels, out_channels)
        self.kernel_size = int(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        conv_default_init(self.weight, self.bias)
        self.alpha = nn.Parameter(self.weight.detach().norm())

    def parametrize(self, training: bool, height: int, width: int) -> torch.Tensor:
        """Q(f), shape (H, W // 2 + 1, C, C); float64 materialisation for the eval cache."""
        weight, alpha = self.weight, self.alpha
        if not training:
            weight, alpha = weight.double(), alpha.double()
        spectrum = kernel_spectrum(weight, height, width, onesided=True)
        scale = alpha / nonzero_norm(weight)  # a scalar first: backward keeps one grid, not two
        q = map_rfft_grid(lambda s: cayley_transform(s * scale), spectrum, width)
        return q.to(complex_dtype(self.weight.dtype))

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return fft_conv2d(x, weight) + self.bias[:, None, None]

    def extra_repr(self) -> str:
        channels = self.weight.shape[0]
        return f"{channels}, {channels}, kernel_size={self.kernel_size}"


class CayleyLinear(CachedParametrization):
    """Orthogonal dense layer: y = Q x + b with Q = cayley(alpha W / ||W||_F).

    The 1-Lipschitz head used with Cayley convolutions. W and b ~ U(+-1/sqrt(in)) and
    alpha = ||W||_F at initialisation, as in the reference.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        require_square(type(self).__name__, in_features, out_features)
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.alpha = nn.Parameter(self.weight.detach().norm())

    def parametrize(self, training: bool) -> torch.Tensor:
        """Q (out, in); float64 materialisation for the eval cache."""
        weight, alpha = self.weight, self.alpha
        if not training:
            weight, alpha = weight.double(), alpha.double()
        return cayley_transform(alpha * weight / nonzero_norm(weight)).to(self.weight.dtype)

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


def nonzero_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W||_F, or 1 for W = 0 (whose scaled copy is then 0 and Q = I, not NaN)."""
    norm = weight.norm()
    return torch.where(norm > 0, norm, 1)


def conv_default_init(weight: nn.Parameter, bias: nn.Parameter) -> None:
    """``nn.Conv2d``'s default initialisation: kaiming_uniform(a=sqrt(5)), U(+-1/sqrt(fan_in))."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(weight[0].numel())
    nn.init.uniform_(bias, -bound, bound)


def fft_conv2d(x: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """Circular convolution of x (B, C, H, W) given its rfft-grid matrices (H, W // 2 + 1, O, C)."""
    return torch.fft.irfft2(spectral_matmul(spectrum, torch.fft.rfft2(x)), s=x.shape[-2:])
