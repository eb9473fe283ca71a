"""AOL: Almost-Orthogonal Lipschitz convolution (Prach & Lampert, ECCV 2022).

The kernel P is rescaled per input channel, W = P D with (paper Lemma 2)

    D_ii = (sum_j sum_shifts |(P^T P)_ij(shift)| + 1e-6)^(-1/2),

where (P^T P)_ij(shift) is the full self-correlation of the kernel, ``conv2d(Pt, Pt, k-1)``
with Pt = P.transpose(0, 1). Every row sum of |J^T J| is then at most 1, so by the Gershgorin
(Schur) test ||J||_2 <= 1 for any padding; the circular 'same' padding used here only sums
aliased shifts, which the absolute values already bound. In eval mode the rescaled kernel is
cached, so inference is one plain convolution.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.padding import circular_same_pad

EPS = 1e-6


def aol_rescale(kernel: torch.Tensor) -> torch.Tensor:
    """The AOL kernel P D for a kernel P of shape (out, in, k, k) (paper Lemma 2)."""
    transposed = kernel.transpose(0, 1)  # (in, out, k, k)
    gram = F.conv2d(transposed, transposed, padding=kernel.shape[-1] - 1)  # (in, in, 2k-1, 2k-1)
    row_sums = gram.abs().sum(dim=(1, 2, 3))
    return kernel * (row_sums + EPS).rsqrt()[None, :, None, None]


class AOLConv2d(CachedParametrization):
    """AOL convolution, 'same' circular padding, stride 1, as in the paper's ConvNets.

    ``init="dirac"`` (identity, the paper's choice inside blocks) or ``"orthogonal"`` (the
    paper's first conv and head). Bias starts at zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        init: Literal["dirac", "orthogonal"] = "dirac",
    ) -> None:
        super().__init__()
        require_square("AOLConv2d", in_channels, out_channels)
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if init == "dirac":
            nn.init.dirac_(self.weight)
        elif init == "orthogonal":
            nn.init.orthogonal_(self.weight)
        else:
            raise ValueError(f"AOLConv2d init must be 'dirac' or 'orthogonal', got {init!r}")

    def parametrize(self, training: bool) -> torch.Tensor:
        return aol_rescale(self.weight)

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(circular_same_pad(x, self.kernel_size), weight, self.bias)

    def extra_repr(self) -> str:
        channels = self.weight.shape[0]
        return f"{channels}, {channels}, kernel_size={self.kernel_size}"
