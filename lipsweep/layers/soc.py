"""SOC: Skew Orthogonal Convolution (Singla & Feizi, ICML 2021).

A zero-padded convolution with a skew filter L = (M - M^T) / 2 is a skew-symmetric operator,
so exp(L) is orthogonal. SOC normalises L by the Fantastic Four bound and applies the
exponential as its truncated Taylor series, sum_{i<=T} L^{*i} x / i!, with T = 5 terms in
training and 12 in eval. For a skew operator every singular value of the truncated series is
|sum_{j<=T} (i theta)^j / j!| at an eigenvalue i theta of L. With ||L|| <= 0.7 k = 2.1 (k = 3,
converged Fantastic Four), T = 5 exceeds 1 by at most 4.7e-3 (theta = 1.59) and T = 12 stays
in [1 - 3e-6, 1].
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.numerics import fantastic_four, random_unit_vectors


def skew_filter(kernel: torch.Tensor) -> torch.Tensor:
    """L = (M - M^T) / 2, where M^T swaps the channel axes and flips the kernel spatially.

    M^T is the kernel of the adjoint of the zero-padded convolution with M (odd k), so
    <conv(x, L), y> = -<x, conv(y, L)> (SOC paper, Thm. 2).
    """
    return 0.5 * (kernel - kernel.transpose(0, 1).flip(2, 3))


class SOCConv2d(CachedParametrization):
    """Skew orthogonal convolution with zero padding; odd kernel sizes only.

    The Fantastic Four start vectors are buffers: 50 iterations at init, then in training one
    warm-started iteration per forward and 50 every ``update_every``-th forward (counted by
    the ``step`` buffer); eval runs none, so the eval weight depends on the state_dict alone.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        train_terms: int = 5,
        eval_terms: int = 12,
        init_iterations: int = 50,
        update_every: int = 200,
    ) -> None:
        super().__init__()
        require_square("SOCConv2d", in_channels, out_channels)
        if kernel_size % 2 == 0:
            raise ValueError(f"SOCConv2d needs an odd kernel size (got {kernel_size})")
        channels, k = in_channels, int(kernel_size)
        self.kernel_size = k
        self.train_terms, self.eval_terms = train_terms, eval_terms
        self.init_iterations, self.update_every = init_iterations, update_every
        self.correction = 0.7 if k > 1 else 1.0
        filter_ = torch.randn(channels, channels, k, k) / math.sqrt(channels)
        self.random_conv_filter = nn.Parameter(filter_)
        bound = 1 / math.sqrt(out_channels)
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        sizes = (channels * k, channels * k, channels * k * k, channels)
        for index, size in enumerate(sizes, start=1):
            self.register_buffer(f"u{index}", random_unit_vectors(size))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._step = 0  # host copy of ``step``: choosing the iteration count needs no sync
        with torch.no_grad():
            _, vectors = fantastic_four(skew_filter(filter_), self.vectors(), init_iterations)
            self.set_vectors(vectors)

    def vectors(self) -> tuple[torch.Tensor, ...]:
        return (self.u1, self.u2, self.u3, self.u4)

    def set_vectors(self, vectors: tuple[torch.Tensor, ...]) -> None:
        for buffer, vector in zip(self.vectors(), vectors, strict=True):
            buffer.copy_(vector)

    def next_power_iterations(self, training: bool) -> int:
        """Fantastic Four iterations for this forward; advances the step counter in training."""
        if not training:
            return 0
        self._step += 1
        self.step.fill_(self._step)
        return self.init_iterations if self._step % self.update_every == 0 else 1

    def parametrize(self, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_n, bias) with L_n = correction * L / min_i sigma_i; sigma keeps its gradient."""
        skew = skew_filter(self.random_conv_filter)
        sigmas, vectors = fantastic_four(skew, self.vectors(), self.next_power_iterations(training))
        if training:
            with torch.no_grad():
                self.set_vectors(vectors)
        # skew_filter is linear, so L_n = skew_filter(M * scale); scaling the parameter M
        # (kept anyway) instead of the skew copy spares backward a kernel-sized tensor.
        scale = self.correction / sigmas.min()
        return skew_filter(self.random_conv_filter * scale), self.bias

    def apply_weight(
        self, x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """z = sum_{i=0}^{T} L_n^{*i} x / i!, computed as term_i = conv(term_{i-1}, L_n) / i."""
        kernel, bias = weight
        terms = self.train_terms if self.training else self.eval_terms
        out = term = x
        for i in range(1, terms + 1):
            term = F.conv2d(term, kernel, padding=self.kernel_size // 2) / i
            out = out + term
        return out + bias[:, None, None]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._step = int(self.step)

    def extra_repr(self) -> str:
        channels = self.random_conv_filter.shape[0]
        return f"{channels}, {channels}, kernel_size={self.kernel_size}"
