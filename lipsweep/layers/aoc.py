"""AOC: adaptive orthogonal convolution (Boissin et al., ICML 2025, "An Adaptive Orthogonal
Convolution Scheme for Efficient and Flexible CNN Architectures"; reference library
deel-ai/orthogonium), in the form it takes for a stride-1 c -> c convolution.

An explicit orthogonal k x k kernel from 2k matrices Q_r (c x c/2) with orthonormal columns
(Bjorck): rank-c/2 projectors P_r = Q_r Q_r^T; a 1 x 1 orthogonal factor H = (I - 2 P_0)
(I - 2 P_1), a product of two block reflectors; and k - 1 orthogonal 2 x 2 convolutions
B(P_{2j}, P_{2j+1}), composed by block convolution with H as in BCOP (``bcop.block_orth``,
``bcop.matrix_conv``). For k = 1 the kernel is one orthogonal c x c matrix (the paper's RKO
case, kernel size = stride). Half the Bjorck work of BCOP (c x c/2 instead of c x c matrices),
and inference is one plain circular convolution with the cached kernel.

What it guarantees (orthogonal): with circular padding the convolution's symbol at (z1, z2) on
the unit torus is H prod_j (P_{2j} + (I - P_{2j}) z1)(P_{2j+1} + (I - P_{2j+1}) z2), a product
of unitaries when the Q_r are exactly orthonormal. Bjorck from a pre-scaled sigma_max <= 1
(the exact sigma_max in eval, ``bcop.bjorck``) keeps every singular value of Q_r in [0, 1],
converged or not, so each P_r has eigenvalues in [0, 1], I - 2 P_r is a contraction and so is
every factor: the eval layer is 1-Lipschitz from any state (``lipsweep.bounds`` bounds the
cached kernel's circular convolution exactly, per frequency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.bcop import bjorck, block_orth, matrix_conv
from lipsweep.layers.numerics import random_unit_vectors
from lipsweep.layers.padding import circular_same_pad


def aoc_kernel(orthonormal: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Conv kernel (c, c, k, k) from the 2k matrices (2k, c, c/2) with orthonormal columns
    (module docstring); for k = 1 from one orthogonal matrix (1, c, c)."""
    if kernel_size == 1:
        return orthonormal[0][:, :, None, None]
    projectors = orthonormal @ orthonormal.mT  # (2k, c, c)
    eye = torch.eye(projectors.shape[-1], dtype=projectors.dtype, device=projectors.device)
    head = (eye - 2 * projectors[0]) @ (eye - 2 * projectors[1])
    blocks = block_orth(projectors[2::2], projectors[3::2])  # (k - 1, 2, 2, c, c)
    taps = head @ blocks[0]
    for block in blocks[1:]:
        taps = matrix_conv(taps, block)
    return taps.permute(2, 3, 0, 1).contiguous()


class AOCConv2d(CachedParametrization):
    """Orthogonal k x k convolution with circular padding, built as in AOC (module docstring).
    The paper's settings: orthogonal initialisation of the matrices, Bjorck orthonormalisation
    pre-scaled by power iteration (here: warm power iterations in training, the exact sigma_max
    in eval), zero bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bjorck_iterations: int = 20,
        power_iterations: int = 10,
    ) -> None:
        super().__init__()
        require_square(type(self).__name__, in_channels, out_channels)
        if kernel_size > 1 and out_channels < 2:
            raise ValueError("AOC needs at least 2 channels for a kernel larger than 1 x 1")
        self.kernel_size = int(kernel_size)
        self.bjorck_iterations = bjorck_iterations
        self.power_iterations = power_iterations
        c = out_channels
        shape = (1, c, c) if kernel_size == 1 else (2 * kernel_size, c, c // 2)
        matrices = torch.empty(shape)
        for matrix in matrices:
            nn.init.orthogonal_(matrix)  # gain 1, as the reference (BCOP here: 1 / sqrt(c))
        self.param_matrices = nn.Parameter(matrices)
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("power_u", random_unit_vectors(shape[0], shape[2]))

    def parametrize(self, training: bool) -> torch.Tensor:
        orthonormal = bjorck(self.param_matrices, self.bjorck_iterations, self.power_u,
                             self.power_iterations, training)  # fmt: skip
        return aoc_kernel(orthonormal, self.kernel_size)

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(circular_same_pad(x, self.kernel_size), weight, self.bias)

    def extra_repr(self) -> str:
        c = self.bias.shape[0]
        return f"{c}, {c}, kernel_size={self.kernel_size}"
