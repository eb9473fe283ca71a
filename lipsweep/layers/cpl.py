"""CPL: Convex Potential Layer (Meunier et al., ICML 2022), with 1LC's settings.

    y = x - r K^T ReLU(K x + b),   r = 2 / (sigma^2 + 1e-6),

K a zero-padded k x k convolution and sigma its operator norm. The Jacobian I - r K^T D K
(D in [0, 1]) has eigenvalues in [1 - r sigma^2, 1], so norm <= 1 while r sigma^2 <= 2.

sigma is estimated by power iteration on K^T K over a grid of ``input_size`` x ``input_size``
pixels, warm-started from the persistent buffer ``u`` (1, C, input_size, input_size):

* training: one power-iteration step per forward (no gradient) that updates ``u`` in place;
  the gradient reaches K through sigma = <K u, v> with u, v held constant. The very first
  training forward (flag buffer ``u_is_warm``) runs the eval iteration instead: one step from a
  random u underestimates sigma by ~30% (train-mode Lipschitz constant ~1.6, as in the
  reference at the start of training), and the warm-up runs where the layer trains (on the
  GPU), not at construction, and after any re-initialisation of the kernel;
* eval: the power iteration runs to convergence from ``u`` (relative change of sigma below
  ``eval_rtol``, at most ``EVAL_MAX_ITERATIONS`` steps) without writing to ``u``, so the cached
  weight is a pure function of the state_dict. Like every power iteration it approaches sigma
  from below; the tests compare it with the exact norm of the dense conv matrix.

Other input sizes: the norm of a zero-padded convolution on a grid never exceeds its norm on a
larger grid (the smaller map is a compression of the larger one), so inputs no larger than the
buffer use the buffer's sigma. For an input larger than the buffer in either dimension, sigma is
measured on the enclosing grid (max(H, input_size), max(W, input_size)) by a converged power
iteration started from ``u`` zero-padded into it; ``u`` is then not updated (its shape is
fixed), and training at that size pays the converged iteration on every step, so set
``input_size`` to the training resolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.sll import init_kernel_and_bias, residual_step

EPS = 1e-6
EVAL_MAX_ITERATIONS = 2000


def eval_rtol(dtype: torch.dtype) -> float:
    """Stopping threshold on the relative change of sigma: 1e-9 in float64, 1.2e-7 in float32.

    The top of a zero-padded convolution's spectrum is nearly continuous, so the estimate's
    error decays slowly (~1e-4 after 300 steps from a random start, 1e-8 after 1000 on a
    32 x 32 grid): a loose threshold would stop far too early.
    """
    return max(1e-9, torch.finfo(dtype).eps)


def normalized(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm().clamp_min(1e-12)


class CPLConv2d(CachedParametrization):
    """CPL residual convolution with zero padding k // 2 and a power-iteration step size."""

    size_dependent = True

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, input_size: int = 32
    ) -> None:
        super().__init__()
        require_square("CPLConv2d", in_channels, out_channels)
        self.kernel_size = kernel_size
        self.input_size = input_size
        self.kernel = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        init_kernel_and_bias(self.kernel, self.bias)
        self.register_buffer("u", normalized(torch.randn(1, in_channels, input_size, input_size)))
        self.register_buffer("u_is_warm", torch.tensor(False))
        self._warm = False  # mirror of u_is_warm, so training does not sync with the device

    def is_warm(self) -> bool:
        """Whether ``u`` has had its converged warm-up (read from the device only once)."""
        if not self._warm:
            self._warm = bool(self.u_is_warm)
        return self._warm

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._warm = False
        super()._load_from_state_dict(*args, **kwargs)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel, padding=self.kernel_size // 2)

    def conv_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.kernel, padding=self.kernel_size // 2)

    def power_step(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the power iteration on K^T K: (u, v) <- (K^T v / ||.||, K u / ||.||)."""
        v = normalized(self.conv(u))
        return normalized(self.conv_adjoint(v)), v

    def start_vector(self, height: int, width: int) -> torch.Tensor:
        """``u``, zero-padded to cover an input of height x width if it is larger."""
        size = self.input_size
        extra_h, extra_w = max(height - size, 0), max(width - size, 0)
        if extra_h == extra_w == 0:
            return self.u
        return F.pad(self.u, (0, extra_w, 0, extra_h))

    @torch.no_grad()
    def converged_vectors(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Power iteration from u (not modified) until sigma = ||K u|| settles (``eval_rtol``)."""
        rtol = eval_rtol(u.dtype)
        previous = 0.0
        for _ in range(EVAL_MAX_ITERATIONS):
            u, v = self.power_step(u)
            sigma = self.conv(u).norm().item()
            if abs(sigma - previous) <= rtol * sigma:
                break
            previous = sigma
        return u, v

    def spectral_norm(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Eval-mode sigma of the conv for inputs of height x width (default: ``input_size``)."""
        u = self.start_vector(height or self.input_size, width or self.input_size)
        u, v = self.converged_vectors(u)
        with torch.no_grad():
            return (self.conv(u) * v).sum()

    def parametrize(self, training: bool, height: int, width: int) -> tuple[torch.Tensor, ...]:
        u = self.start_vector(height, width)
        if training and u is self.u:
            with torch.no_grad():
                if self.is_warm():
                    u, v = self.power_step(u)
                else:
                    u, v = self.converged_vectors(u)
                    self.u_is_warm.fill_(True)
                    self._warm = True
                self.u.copy_(u)
        else:
            u, v = self.converged_vectors(u)
        sigma = (self.conv(u) * v).sum()  # gradient through K only; u, v are constants
        return self.kernel, 2 / (sigma**2 + EPS)

    def apply_weight(self, x: torch.Tensor, weight: tuple[torch.Tensor, ...]) -> torch.Tensor:
        kernel, scale = weight
        return residual_step(x, kernel, self.bias, scale)

    def extra_repr(self) -> str:
        channels = self.kernel.shape[0]
        return (
            f"{channels}, {channels}, kernel_size={self.kernel_size}, input_size={self.input_size}"
        )
