"""BRO: Block Reflector Orthogonal convolution (Lai et al., ICML 2025, "Enhancing Certified
Robustness via Block Reflector Orthogonal Layers").

Per frequency f of the zero-padded image, a low-rank kernel spectrum V(f) (c x r) defines the
block reflector W(f) = I - 2 V (V^H V + eps I)^{-1} V^H: one linear solve, no iteration. The
paper's settings, kept here: rank r = c // 2 (its default ablation setting), eps = 1e-5 times
the mean diagonal of V^H V per frequency, V initialised to [I_r; 0] at the centre tap (so W
starts as a reflection of the first r channels), zero padding by k // 2 and a crop, as LOT.

What it guarantees: with the SVD V = U S Q^H, V (V^H V + eps I)^{-1} V^H = U diag(s^2 / (s^2 +
eps)) U^H has eigenvalues t in [0, 1), so W(f) is Hermitian with eigenvalues 1 - 2t in (-1, 1]:
||W(f)|| <= 1 (orthogonal exactly when eps = 0 and V has full rank r). The padded circular map
is therefore 1-Lipschitz and, as for LOT, the crop keeps it so. A frequency where V(f) = 0 has
eps = 0 there; a floor of 1e-12 keeps the solve defined (W = I at that frequency). For k = 1
the same formula on the real c x r matrix gives a real 1 x 1 conv.
"""

from __future__ import annotations

import torch
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.numerics import (
    complex_dtype,
    kernel_spectrum,
    map_rfft_grid,
    padded_spectral_conv,
    solve,
)

PERTURBATION = 1e-5  # eps / mean diagonal of V^H V, as in the paper's code
FLOOR = 1e-12  # eps where V(f) = 0


def block_reflector(v: torch.Tensor) -> torch.Tensor:
    """I - 2 V (V^H V + eps I)^{-1} V^H for a batch of c x r matrices V (the module docstring)."""
    gram = v.mH @ v
    eye = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
    eps = gram.diagonal(dim1=-2, dim2=-1).real.mean(-1) * PERTURBATION + FLOOR
    solved = solve(gram + eps[..., None, None] * eye, v.mH)
    identity = torch.eye(v.shape[-2], dtype=v.dtype, device=v.device)
    return identity - 2 * v @ solved


class BROConv2d(CachedParametrization):
    """Block-reflector k x k convolution: y = crop(irfft2(W(f) rfft2(pad(x))(f))) + b, with
    W(f) = I - 2 V(f) (V(f)^H V(f) + eps I)^{-1} V(f)^H and V the spectrum of a c x r kernel."""

    size_dependent = True

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, rank: int | None = None
    ) -> None:
        super().__init__()
        require_square(type(self).__name__, in_channels, out_channels)
        self.kernel_size = int(kernel_size)
        self.rank = max(1, out_channels // 2) if rank is None else int(rank)
        if not 1 <= self.rank < out_channels:
            raise ValueError(f"BRO's rank must be in [1, {out_channels - 1}], got {self.rank}")
        self.weight = nn.Parameter(torch.zeros(out_channels, self.rank, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        with torch.no_grad():
            centre = self.kernel_size // 2
            self.weight[:, :, centre, centre] = torch.eye(out_channels, self.rank)

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def parametrize(self, training: bool, height: int, width: int) -> torch.Tensor:
        """W(f) on the rfft grid of the padded image, (H + 2p, (W + 2p) // 2 + 1, C, C); for
        k = 1 the one real matrix W (C, C). Float64 materialisation for the eval cache."""
        weight = self.weight if training else self.weight.double()
        if self.kernel_size == 1:
            return block_reflector(weight[:, :, 0, 0]).to(self.weight.dtype)
        padded_width = width + 2 * self.padding
        v = kernel_spectrum(weight, height + 2 * self.padding, padded_width, True)
        grid = map_rfft_grid(block_reflector, v, padded_width)
        return grid.to(complex_dtype(self.weight.dtype))

    def apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return padded_spectral_conv(x, weight, self.bias, self.padding)

    def extra_repr(self) -> str:
        channels = self.weight.shape[0]
        return f"{channels}, {channels}, kernel_size={self.kernel_size}, rank={self.rank}"
