"""SOC: Skew Orthogonal Convolution (Singla & Feizi, ICML 2021).

A zero-padded convolution with a skew filter L = (M - M^T) / 2 is a skew-symmetric operator,
so exp(L) is orthogonal. SOC normalises L by the Fantastic Four bound and applies the
exponential as its truncated Taylor series, sum_{i<=T} L^{*i} x / i!, with T = 5 terms in
training and 12 in eval. For a skew operator every singular value of the truncated series is
|sum_{j<=T} (i theta)^j / j!| at an eigenvalue i theta of L. With ||L|| <= 0.7 k = 2.1 (k = 3,
converged Fantastic Four), T = 5 exceeds 1 by at most 4.7e-3 (theta = 1.59) and T = 12 stays
in [1 - 3e-6, 1].

Eval from any state: the eval normaliser is the exact min_i ||R_i||_2 (``spectral_norm``),
never the stored vectors (sigma_i = ||R_i u_i|| is only a lower estimate: a filter edited or
loaded after the last update, or crafted so that R_i u_i = 0, would make L_n expansive without
limit). Then ||L_n|| <= correction * k (Fantastic Four), and a kernel size is accepted only if
the eval series stays <= 1 on that whole radius (``series_norm_bound``): k = 1, 3 for T = 12
(|T_12(i theta)| <= 1 up to theta = 3.379; 0.7 * 5 = 3.5 is past it).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.norms import spectral_norm
from lipsweep.layers.numerics import (
    fantastic_four,
    fantastic_four_matrices,
    random_unit_vectors,
)


def skew_filter(kernel: torch.Tensor) -> torch.Tensor:
    """L = (M - M^T) / 2, where M^T swaps the channel axes and flips the kernel spatially.

    M^T is the kernel of the adjoint of the zero-padded convolution with M (odd k), so
    <conv(x, L), y> = -<x, conv(y, L)> (SOC paper, Thm. 2).
    """
    return 0.5 * (kernel - kernel.transpose(0, 1).flip(2, 3))


SERIES_GRID = 1024  # intervals of [0, radius^2] in ``series_norm_bound``
SERIES_SLACK = 1e-10  # |series| <= 1 + this counts as 1-Lipschitz (float64 round-off)


@functools.lru_cache(maxsize=256)
def series_norm_bound(terms: int, radius: float) -> float:
    """Guaranteed max over |t| <= radius of |p(i t)|, p(z) = sum_{j <= terms} z^j / j!.

    q(s) = |p(i sqrt(s))|^2 is a polynomial in s = t^2 with exact rational coefficients
    c_m = sum_{j + l = 2m} (-1)^((j - l) / 2) / (j! l!). On each of ``SERIES_GRID`` intervals
    [a, a + h] of [0, radius^2], q(a + d) = sum_n q_n(a) d^n (its exact Taylor expansion at a)
    is <= q(a) + sum_{n >= 1} max(q_n(a), 0) h^n since 0 <= d^n <= h^n. The max over the
    intervals bounds q on all of [0, radius^2]; it overshoots by O(h^2) (float64 evaluation).
    For a skew (normal) operator A with ||A|| <= radius, ||p(A)|| = max |p(i theta)| over its
    eigenvalues i theta, so this bounds the SOC series.
    """
    coefficients = [Fraction(0)] * (terms + 1)
    for j in range(terms + 1):
        for k in range(j % 2, terms + 1, 2):
            sign = -1 if (j - k) % 4 else 1
            coefficients[(j + k) // 2] += Fraction(sign, math.factorial(j) * math.factorial(k))
    c = torch.tensor([float(v) for v in coefficients], dtype=torch.float64)
    step = radius**2 / SERIES_GRID
    points = torch.arange(SERIES_GRID, dtype=torch.float64) * step
    degrees = range(terms + 1)
    # q_n(a) = sum_{m >= n} c_m binom(m, n) a^(m - n): one (points, n, m) table.
    binom = torch.tensor([[math.comb(m, n) for m in degrees] for n in degrees]).double()
    n = torch.arange(terms + 1)
    powers = points[:, None, None] ** (n[None] - n[:, None]).clamp_min(0)
    taylor = (binom * powers * c).sum(dim=-1)  # (points, n)
    upper = taylor[:, 0] + (taylor[:, 1:].clamp_min(0) * step ** n[1:]).sum(dim=1)
    # Float64 evaluation error: <= (2 terms + 1) eps per term magnitude; 64 eps covers it.
    size = (binom * powers * c.abs()).sum(dim=-1)
    upper = upper + 64 * torch.finfo(torch.float64).eps * (size * step**n).sum(dim=1)
    return math.sqrt(max(upper.max().item(), 0.0))


def allowed_kernel_sizes(terms: int, largest: int = 15) -> list[int]:
    """Odd kernel sizes whose normalisation radius keeps a ``terms``-term series <= 1."""
    return [k for k in range(1, largest + 1, 2) if radius_ok(terms, k)]


def radius_ok(terms: int, kernel_size: int) -> bool:
    return series_norm_bound(terms, correction(kernel_size) * kernel_size) <= 1 + SERIES_SLACK


def correction(kernel_size: int) -> float:
    """SOC's normalisation factor: ||L_n|| <= correction * k."""
    return 0.7 if kernel_size > 1 else 1.0


def fantastic_four_norms(kernel: torch.Tensor) -> torch.Tensor:
    """The exact ||R_i||_2 (4,) of the Fantastic Four reshapes, in float64."""
    return torch.stack([spectral_norm(r) for r in fantastic_four_matrices(kernel.detach())])


class SOCConv2d(CachedParametrization):
    """Skew orthogonal convolution with zero padding; odd kernel sizes only.

    The Fantastic Four start vectors are buffers: 50 iterations at init, then in training one
    warm-started iteration per forward and 50 every ``update_every``-th forward (counted by
    the ``step`` buffer). Eval uses the exact norms instead (what the iterations converge to),
    so the eval weight depends on the parameters alone and is 1-Lipschitz from any state.
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
        if kernel_size % 2 == 0 or not radius_ok(eval_terms, kernel_size):
            allowed = ", ".join(map(str, allowed_kernel_sizes(eval_terms))) or "none"
            raise ValueError(
                f"SOCConv2d kernel_size {kernel_size} is not allowed with {eval_terms} eval "
                f"terms (odd sizes whose series stays 1-Lipschitz: {allowed})"
            )
        channels, k = in_channels, int(kernel_size)
        self.kernel_size = k
        self.train_terms, self.eval_terms = train_terms, eval_terms
        self.init_iterations, self.update_every = init_iterations, update_every
        self.correction = correction(k)
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
        """(L_n, bias) with L_n = correction * L / min_i sigma_i; sigma keeps its gradient
        in training (warm estimates), and is the exact min_i ||R_i||_2 in eval."""
        skew = skew_filter(self.random_conv_filter)
        if training:
            iterations = self.next_power_iterations(True)
            sigmas, vectors = fantastic_four(skew, self.vectors(), iterations)
            with torch.no_grad():
                self.set_vectors(vectors)
            sigma = sigmas.min()
        else:
            sigma = fantastic_four_norms(skew).min().to(skew.dtype)
        # L = 0 gives sigma = 0: L_n = 0 (a where on a safe divisor keeps gradients finite).
        positive = sigma > 0
        scale = torch.where(positive, self.correction / torch.where(positive, sigma, 1), 0)
        # skew_filter is linear, so L_n = skew_filter(M * scale); scaling the parameter M
        # (kept anyway) instead of the skew copy spares backward a kernel-sized tensor.
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
