"""CPL: Convex Potential Layer (Meunier et al., ICML 2022), with 1LC's settings.

    y = x - r K^T ReLU(K x + b),   r = 2 / (sigma^2 + 1e-6),

K a zero-padded k x k convolution and sigma its operator norm. The Jacobian I - r K^T D K
(D in [0, 1]) has eigenvalues in [1 - r sigma^2, 1], so norm <= 1 while r sigma^2 <= 2.

sigma is estimated on K^T K over a grid of ``input_size`` x ``input_size`` pixels, warm-started
from the persistent buffer ``u`` (1, C, input_size, input_size):

* training: one power-iteration step per forward (no gradient) that updates ``u`` in place;
  the gradient reaches K through sigma = <K u, v> with u, v held constant. The very first
  training forward (flag buffer ``u_is_warm``) runs the eval estimate instead and stores its
  vector in ``u``: one step from a random u underestimates sigma by ~30% (train-mode Lipschitz
  constant ~1.6, as in the reference at the start of training), and the warm-up runs where the
  layer trains (on the GPU), not at construction, and after any re-initialisation of the kernel;
* eval: a guaranteed bound instead of an estimate, so the eval layer is 1-Lipschitz from any
  state: sigma_g = ``norms.same_conv_bound`` at the input's H x W (the torus bound: the
  zero-padded conv is a restriction of the circular one on a (H + k // 2) x (W + k // 2)
  torus, whose norm is exact per DFT frequency; for maps of at most ``norms.DENSE_LIMIT``
  inputs, where the torus bound is 2-12% high, the exact norm checked by a Cholesky
  factorisation of the banded Gram matrix),
  r = 2 / ((1 + 1e-5) sigma_g^2 + 1e-6) in float64, rounded down when cast to the layer's
  dtype. Then r sigma^2 <= r sigma_g^2 < 2. No buffer is read, so the cached weight is a pure
  function of the parameters. Every iterative estimate approaches sigma from below (power
  iteration, Lanczos: Rayleigh quotients), and one started from a ``u`` without a component in
  the top eigenspace never gets there.

``spectral_norm`` still gives the converged estimate of sigma (restarted Lanczos on K^T K in
float64, ``numerics.largest_eigenpair``, started from ``u``); training uses it once, to warm
``u`` up. For an input larger than the buffer in either dimension, training measures sigma on
the enclosing grid (max(H, input_size), max(W, input_size)) by that estimate started from
``u`` zero-padded into it; ``u`` is then not updated (its shape is fixed), and training at that
size pays the estimate on every step, so set ``input_size`` to the training resolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.layers.base import CachedParametrization, require_square
from lipsweep.layers.norms import same_conv_bound
from lipsweep.layers.numerics import LANCZOS_CYCLE, largest_eigenpair
from lipsweep.layers.sll import init_kernel_and_bias, residual_step

EPS = 1e-6
EVAL_SLACK = 1e-5  # relative room between the eval step and the bound's limit 2 / sigma_g^2
EVAL_MAX_STEPS = 1000  # matvecs of K^T K at most, over all cycles
EVAL_RTOL = 1e-10  # Ritz residual ||K^T K y - theta y|| / theta that ends the iteration


def normalized(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm().clamp_min(1e-12)


def round_down(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value`` cast to ``dtype``, moved one ulp towards zero if the cast rounded it up."""
    cast = value.to(dtype)
    lower = torch.nextafter(cast, torch.zeros_like(cast))
    return torch.where(cast.to(value.dtype) > value, lower, cast)


class CPLConv2d(CachedParametrization):
    """CPL residual convolution with zero padding k // 2 and step size r = 2 / (sigma^2 + 1e-6)."""

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
        # (H, W) -> (eval kernel copy, its guaranteed norm): see ``kernel_bound``.
        self._eval_norms: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

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
        """One step of the power iteration on K^T K: (u, v) <- (K^T v / ||.||, K u / ||.||).

        If K u = 0 (a zero kernel, or u in its null space) u is kept: a zero u would stay
        zero for good (no device sync: a ``where`` on the norm)."""
        v = normalized(self.conv(u))
        w = self.conv_adjoint(v)
        norm = w.norm()
        return torch.where(norm > 0, w / norm.clamp_min(1e-30), u), v

    def start_vector(self, height: int, width: int) -> torch.Tensor:
        """``u``, zero-padded to cover an input of height x width if it is larger."""
        size = self.input_size
        extra_h, extra_w = max(height - size, 0), max(width - size, 0)
        if extra_h == extra_w == 0:
            return self.u
        return F.pad(self.u, (0, extra_w, 0, extra_h))

    @torch.no_grad()
    def top_eigenpair(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(theta, y): the top Ritz pair of K^T K from start u (not modified), in float64.

        theta = ||K y||^2 <= sigma^2 (a Rayleigh quotient), accurate to far below EVAL_RTOL
        once the Ritz residual is below it (see ``numerics.largest_eigenpair``).
        """
        kernel, padding = self.kernel.detach().double(), self.kernel_size // 2

        def gram(x: torch.Tensor) -> torch.Tensor:
            return F.conv_transpose2d(F.conv2d(x, kernel, padding=padding), kernel, padding=padding)

        start = u.double()
        if not start.norm() > 0:  # Lanczos needs a nonzero start (a loaded zero buffer)
            generator = torch.Generator().manual_seed(0)
            start = torch.randn(u.shape, generator=generator, dtype=torch.float64).to(u.device)
        theta, y, _, _ = largest_eigenpair(gram, start, LANCZOS_CYCLE, EVAL_RTOL, EVAL_MAX_STEPS)
        return theta, y

    @torch.no_grad()
    def converged_vectors(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, v) = (y, K y / ||K y||) for the top Ritz vector y from u, in u's dtype."""
        _, y = self.top_eigenpair(u)
        u = y.to(u.dtype)
        return u, normalized(self.conv(u))

    def spectral_norm(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Converged estimate sqrt(theta) <= sigma for inputs of height x width (default:
        ``input_size``), from ``u``; the eval scale uses ``guaranteed_norm`` instead."""
        u = self.start_vector(height or self.input_size, width or self.input_size)
        theta, _ = self.top_eigenpair(u)
        return theta.sqrt().to(self.kernel.dtype)

    def guaranteed_norm(self, height: int, width: int) -> torch.Tensor:
        """sigma_g >= sigma (float64) of the zero-padded conv on height x width inputs."""
        return self.kernel_bound(self.kernel, height, width)

    def kernel_bound(self, kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``same_conv_bound`` of ``kernel``; for the eval kernel copy the value its eval
        scale was computed from (kept with it: the dense check is not paid twice)."""
        entry = self._eval_norms.get((height, width))
        if entry is not None and entry[0] is kernel:
            return entry[1]
        return same_conv_bound(kernel, height, width)

    def eval_scale(self, kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """r = 2 / ((1 + EVAL_SLACK) sigma_g^2 + 1e-6) for ``kernel`` in float64, cast to the
        kernel's dtype rounding down: r sigma^2 < 2 / (1 + EVAL_SLACK) < 2."""
        bound = same_conv_bound(kernel, height, width)
        self._eval_norms = {(height, width): (kernel, bound)}
        return round_down(2 / ((1 + EVAL_SLACK) * bound**2 + EPS), kernel.dtype)

    def training_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One power step from ``u`` (the eval estimate the first time), written to ``u``."""
        with torch.no_grad():
            if self.is_warm():
                u, v = self.power_step(self.u)
            else:
                u, v = self.converged_vectors(self.u)
                self.u_is_warm.fill_(True)
                self._warm = True
            self.u.copy_(u)
        return u, v

    def parametrize(self, training: bool, height: int, width: int) -> tuple[torch.Tensor, ...]:
        if not training:
            # A copy of the kernel: the cached scale is only valid for the kernel it was
            # computed from, even if the live one is edited behind the cache's back.
            kernel = self.kernel.detach().clone()
            return kernel, self.eval_scale(kernel, height, width)
        u = self.start_vector(height, width)
        u, v = self.training_vectors() if u is self.u else self.converged_vectors(u)
        # sigma = <K u, v> is linear in K for constant u, v: sigma = <K, G> with G its
        # gradient (the weight gradient of the conv), so backward keeps G (c^2 k^2), not u, v.
        with torch.no_grad():
            padding = self.kernel_size // 2
            gradient = torch.nn.grad.conv2d_weight(u, self.kernel.shape, v, padding=padding)
        sigma = (self.kernel * gradient).sum()
        return self.kernel, 2 / (sigma**2 + EPS)

    def apply_weight(self, x: torch.Tensor, weight: tuple[torch.Tensor, ...]) -> torch.Tensor:
        kernel, scale = weight
        return residual_step(x, kernel, self.bias, scale)

    def extra_repr(self) -> str:
        channels = self.kernel.shape[0]
        return (
            f"{channels}, {channels}, kernel_size={self.kernel_size}, input_size={self.input_size}"
        )
