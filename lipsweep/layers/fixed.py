"""Fixed (parameter-free) forms of the eval layers, for export (``lipsweep.export``).

Each module holds, as buffers, the weights an eval layer caches (``cached_weight``) and applies
them exactly as that layer does, with the same functions: an exported model computes the same
logits as the trained one, and ``lipsweep.bounds`` bounds these modules with the same
arguments as the layers they come from. Layers whose inference is one plain convolution or
matrix (AOL, BCOP, the dense heads, the standard conv) need none of these: they become
``nn.Conv2d`` / ``nn.Linear`` with the cached weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.numerics import padded_spectral_conv
from lipsweep.layers.sandwich import sandwich_apply
from lipsweep.layers.sll import residual_step


class SpectralConv(nn.Module):
    """crop(irfft2(W(f) rfft2(pad(x)))) + b with fixed per-frequency matrices W (H + 2p,
    (W + 2p) // 2 + 1, C, C): Cayley (p = 0), LOT and BRO (p = k // 2). A real W (C, C) (their
    k = 1 form) is the same matrix at every pixel. W is only valid for inputs of ``input_hw``."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, padding: int, input_hw: tuple[int, int]
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.padding = int(padding)
        # The (H, W) a complex grid was built for (None for a real, size-free matrix).
        self.input_hw = (int(input_hw[0]), int(input_hw[1])) if weight.is_complex() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_spectral_conv(x, self.weight, self.bias, self.padding)


class ResidualStep(nn.Module):
    """CPL, SLL: y = x - K^T (S * ReLU(K x + b)) with a fixed kernel K and scale S (``sll``'s
    ``residual_step``, zero padding k // 2)."""

    def __init__(self, kernel: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_step(x, self.kernel, self.bias, self.scale)


class SkewSeries(nn.Module):
    """SOC: y = sum_{i <= T} L^{*i} x / i! + b with a fixed filter L (zero padding k // 2) and
    T = ``terms``, the eval number of terms."""

    def __init__(self, kernel: torch.Tensor, bias: torch.Tensor, terms: int) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.terms = int(terms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = term = x
        for i in range(1, self.terms + 1):
            term = F.conv2d(term, self.kernel, padding=self.kernel.shape[-1] // 2) / i
            out = out + term
        return out + self.bias[:, None, None]


class SandwichStep(nn.Module):
    """Sandwich: sqrt(2) A^* Psi ReLU(sqrt(2) Psi^{-1} B x + b) with fixed rfft-grid matrices of
    A^* and B (``sandwich``'s ``sandwich_apply``), valid for inputs of the size they were built
    for."""

    def __init__(
        self,
        a_adjoint: torch.Tensor,
        b: torch.Tensor,
        psi: torch.Tensor,
        bias: torch.Tensor,
        input_hw: tuple[int, int],
    ) -> None:
        super().__init__()
        self.register_buffer("a_adjoint", a_adjoint.detach().clone())
        self.register_buffer("b", b.detach().clone())
        self.register_buffer("psi", psi.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sandwich_apply(x, self.a_adjoint, self.b, self.psi, self.bias)
