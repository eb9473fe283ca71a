"""LOT: Layer-wise Orthogonal Training convolution (Xu, Li & Li, NeurIPS 2022).

Per frequency of the zero-padded image, the kernel spectrum V(f) is orthogonalised as
(V V^H)^{-1/2} V, with the inverse square root from a truncated Newton-Schulz iteration.
Following the paper's code (``lot_ortho_conv.py``): S = V V^H + 1e-4 I is divided by its own
Frobenius norm (+1e-4) at each frequency, 10 iterations are used in training and in eval,
and the full complex ``fft2`` is used. The input is zero-padded by k // 2 and the output
cropped back, so the layer is an orthogonal map compressed to the image: 1-Lipschitz, and
orthogonal for k = 1 (no padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.numerics import complex_dtype, kernel_spectrum, newton_schulz_inverse_sqrt

EPSILON = 1e-4  # regulariser of S and of its norm, as in the paper's code
ITERATIONS = 10  # Newton-Schulz steps, training and eval


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
        """W_orth(f), shape (H + 2p, W + 2p, C, C); float64 materialisation for the eval cache."""
        weight = self.weight if training else self.weight.double()
        v = kernel_spectrum(weight, height + 2 * self.padding, width + 2 * self.padding, False)
        eye = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
        s = v @ v.mH + EPSILON * eye
        norm = torch.linalg.matrix_norm(s, keepdim=True) + EPSILON  # per frequency
        z = newton_schulz_inverse_sqrt(s / norm, ITERATIONS)
        return (z @ v / norm.sqrt()).to(complex_dtype(self.weight.dtype))

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        p = self.padding
        height, width = x.shape[-2:]
        x_hat = torch.fft.fft2(F.pad(x, (p, p, p, p)))
        y = torch.fft.ifft2(torch.einsum("uvoi,biuv->bouv", weight, x_hat)).real
        return y[..., p : p + height, p : p + width] + self.bias[:, None, None]

    def extra_repr(self) -> str:
        channels = self.weight.shape[0]
        return f"{channels}, {channels}, kernel_size={self.kernel_size}"
