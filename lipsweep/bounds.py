"""Guaranteed Lipschitz bounds (l2) of every eval-mode stage lipsweep builds.

A bound here is a number proven >= the stage's operator norm (its Lipschitz constant), computed
in float64 from the eval weights alone (``cached_weight``: what the eval model applies), never
from stored power-iteration vectors. Each bound's argument is written next to its code. The
figures are exact-arithmetic bounds evaluated in float64: the FFTs and Hermitian eigensolvers
are backward stable, so the rounding error is ~n eps relative (n the matrix size), far below
the float32 rounding of inference itself, which a certificate has to budget separately.

The tools (``lipsweep.layers.numerics``):

* a circular convolution on an H x W torus is block-diagonal in the 2-D DFT, so its norm is
  the largest singular value over the grid of the kernel's DFT matrices (``circular_conv_norm``,
  exact per frequency);
* a zero-padded convolution is a restriction of the circular one on a slightly larger torus
  (``zero_padding_torus``), so that bound is guaranteed, and tight to the torus's slack;
* FFT-domain layers (Cayley, LOT) store those per-frequency matrices: their max norm is used.

``layer_bound(module, input_hw)`` bounds one module (a ``nn.Sequential`` by the product of its
stages); ``model_bound(model, input_shape)`` also lists the stages' bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lipsweep.layers.aoc import AOCConv2d
from lipsweep.layers.aol import AOLConv2d
from lipsweep.layers.bcop import BCOPConv2d, BjorckLinear
from lipsweep.layers.bro import BROConv2d
from lipsweep.layers.cayley import CayleyConv2d, CayleyLinear
from lipsweep.layers.channels import FirstChannels, MaxMin, ZeroChannelPad
from lipsweep.layers.cpl import CPLConv2d
from lipsweep.layers.fixed import ResidualStep, SandwichStep, SkewSeries, SpectralConv
from lipsweep.layers.lot import LOTConv2d
from lipsweep.layers.norms import (
    ROUNDING_SLACK,
    circular_conv_norm,
    same_conv_bound,
    spectral_norm,
    torus_bound,
    zero_padding_torus,
)
from lipsweep.layers.sandwich import SandwichConv2d
from lipsweep.layers.sll import SLLConv2d
from lipsweep.layers.soc import SOCConv2d, series_norm_bound

Size = tuple[int, int] | None  # the (H, W) a stage sees; None after Flatten
StageBounds = list[tuple[str, float]]

# 1-Lipschitz without parameters: MaxMin sorts pairs (a permutation of each pair's values, so
# |max(a,b) - max(c,d)|^2 + |min(a,b) - min(c,d)|^2 <= |a - c|^2 + |b - d|^2), FirstChannels is
# an orthogonal projection, ZeroChannelPad an isometric embedding, (Un)Shuffle and Flatten
# permutations, ReLU a coordinate-wise 1-Lipschitz map, Identity the identity.
NONEXPANSIVE: tuple[type[nn.Module], ...] = (
    MaxMin,
    FirstChannels,
    ZeroChannelPad,
    nn.PixelUnshuffle,
    nn.PixelShuffle,
    nn.Flatten,
    nn.Identity,
    nn.ReLU,
)


def layer_bound(module: nn.Module, input_hw: Size = None) -> float:
    """Guaranteed Lipschitz bound of ``module`` in eval mode for inputs of spatial size
    ``input_hw`` (H, W) (None for dense layers); the product over a ``nn.Sequential``."""
    bounds, _ = stage_bounds(module, input_hw)
    return math.prod(bound for _, bound in bounds)


def model_bound(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, StageBounds]:
    """(bound, [(stage name, bound), ...]) for inputs of ``input_shape`` (C, H, W) or (F,).

    The model bound is the product of the stage bounds (Lipschitz constants multiply under
    composition). A stage of unknown type raises ``TypeError``: nothing is bounded silently.
    """
    size = (int(input_shape[-2]), int(input_shape[-1])) if len(input_shape) == 3 else None
    bounds, _ = stage_bounds(model, size)
    return math.prod(bound for _, bound in bounds), bounds


def stage_bounds(module: nn.Module, size: Size, prefix: str = "") -> tuple[StageBounds, Size]:
    """The bound of every stage of ``module`` (nested ``nn.Sequential`` flattened, in execution
    order, named like ``named_modules``) and the spatial size after it."""
    if not isinstance(module, nn.Sequential):
        bound = single_bound(module, size)
        return [(prefix or type(module).__name__, bound)], output_size(module, size)
    bounds: StageBounds = []
    for name, child in module.named_children():
        child_bounds, size = stage_bounds(child, size, f"{prefix}.{name}" if prefix else name)
        bounds += child_bounds
    return bounds, size


def output_size(module: nn.Module, size: Size) -> Size:
    """Spatial size after ``module``: every stage keeps it except these four."""
    if isinstance(module, nn.Flatten):
        return None
    if is_global_max_pool(module):
        return (1, 1)
    if size is not None and isinstance(module, nn.PixelUnshuffle):
        factor = module.downscale_factor
        return (size[0] // factor, size[1] // factor)
    if size is not None and isinstance(module, nn.PixelShuffle):
        return (size[0] * module.upscale_factor, size[1] * module.upscale_factor)
    return size


def is_global_max_pool(module: nn.Module) -> bool:
    """AdaptiveMaxPool2d(1): each output is the max of one channel, |max a - max b| <=
    max |a - b| <= ||a - b||, so it is 1-Lipschitz."""
    return isinstance(module, nn.AdaptiveMaxPool2d) and module.output_size in (1, (1, 1))


def single_bound(module: nn.Module, size: Size) -> float:
    """The bound of one (non-Sequential) stage; ``TypeError`` for an unknown type."""
    if isinstance(module, NONEXPANSIVE) or is_global_max_pool(module):
        return 1.0
    for cls, bound in BOUNDS:
        if isinstance(module, cls):
            return float(bound(module, size))
    # A user's layer (lipsweep.layers.registry: plug-ins) may give its own guaranteed bound,
    # ``lipschitz_bound(input_hw)``: its author's proof; lipsweep's audit checks it against
    # exact Jacobians before any sweep uses the layer.
    own = getattr(module, "lipschitz_bound", None)
    if callable(own):
        return float(own(size))
    raise TypeError(f"no guaranteed Lipschitz bound known for {type(module).__name__}")


def spatial(size: Size, module: nn.Module) -> tuple[int, int]:
    if size is None:
        raise TypeError(f"{type(module).__name__} needs a spatial input size (H, W)")
    return size


# ----------------------------------------------------------------------------- affine stages
# Every affine stage x -> A x + b has Lipschitz constant ||A||; the bias is irrelevant.


def circular_bound(layer: AOLConv2d | BCOPConv2d | AOCConv2d, size: Size) -> float:
    """AOL, BCOP, AOC: F.conv2d after ``circular_same_pad`` is exactly the circular convolution on
    the H x W torus (the pad wraps as often as needed), so ``circular_conv_norm`` is its norm."""
    weight = layer.cached_weight()
    kernel = weight[0] if isinstance(weight, tuple) else weight
    return circular_conv_norm(kernel, *spatial(size, layer)).item()


def conv2d_bound(layer: nn.Conv2d, size: Size) -> float:
    """nn.Conv2d (the standard conv), stride 1, no dilation or groups. Circular padding with
    H x W outputs: exactly the circular conv on the H x W torus (with fewer outputs: a
    restriction of it). Zero padding: a restriction of the circular conv on the torus of
    ``zero_padding_torus`` on each axis."""
    if layer.stride != (1, 1) or layer.dilation != (1, 1) or layer.groups != 1:
        raise TypeError("conv2d_bound needs stride 1, dilation 1 and groups 1")
    if layer.padding_mode not in ("zeros", "circular"):
        raise TypeError(f"conv2d_bound does not know padding_mode {layer.padding_mode!r}")
    kernel, sides = layer.weight, []
    for axis, n in enumerate(spatial(size, layer)):
        k = kernel.shape[2 + axis]
        if layer.padding == "same":
            before, out = (k - 1) // 2, n
        else:
            padding = 0 if layer.padding == "valid" else layer.padding[axis]
            before, out = padding, n + 2 * padding - k + 1
        if layer.padding_mode == "circular":
            if out > n:
                raise TypeError("a circular conv with more outputs than inputs repeats rows")
            sides.append(n)
        else:
            sides.append(zero_padding_torus(n, k, before, out))
    return circular_conv_norm(kernel, *sides).item()


def linear_bound(layer: nn.Linear, size: Size) -> float:
    return spectral_norm(layer.weight).item()


def dense_head_bound(layer: BjorckLinear | CayleyLinear, size: Size) -> float:
    """BjorckLinear, CayleyLinear: the exact spectral norm of the cached eval weight."""
    weight = layer.cached_weight()
    return spectral_norm(weight[0] if isinstance(weight, tuple) else weight).item()


def cayley_bound(layer: CayleyConv2d, size: Size) -> float:
    """y = irfft2(Q(f) rfft2(x)) on the rfft grid. For real x, rfft2 keeps X(f) = conj X(-f)
    only once, and irfft2 reads the edge columns (v = 0, W / 2) through their real part; the
    map is therefore the real circular convolution whose symbol is Q(f) inside the grid,
    conj Q(-f) at the mirrored frequencies and (Q(f) + conj Q(-f)) / 2 on the edge columns.
    By Parseval its norm is the max over f of that symbol's norm, <= max_f ||Q(f)|| (triangle
    inequality on the edges)."""
    return fft_weight_bound(layer.cached_weight(*spatial(size, layer)))


def lot_bound(layer: LOTConv2d | BROConv2d, size: Size) -> float:
    """LOT, BRO: crop(irfft2(W(f) rfft2(pad(x)))): zero padding is an isometric embedding and the
    crop a projection, so the norm is <= that of the padded-grid map, bounded as Cayley's. For
    k = 1 the weight is one real matrix applied at every pixel (a 1 x 1 conv): its norm."""
    return spectral_weight_bound(layer.cached_weight(*spatial(size, layer)))


def spectral_weight_bound(weight: torch.Tensor) -> float:
    """A grid of per-frequency matrices (``fft_weight_bound``), or one real matrix applied at
    every pixel (a 1 x 1 conv: its norm)."""
    return fft_weight_bound(weight) if weight.is_complex() else spectral_norm(weight).item()


def fixed_spectral_bound(layer: SpectralConv, size: Size) -> float:
    """An exported Cayley, LOT or BRO layer (``SpectralConv``): the same map as the layer it
    was frozen from, bounded the same way (Cayley's p = 0 is LOT's argument without the pad).
    Its grid only fits inputs of the size it was built for."""
    expected = layer.input_hw
    if expected is not None and tuple(spatial(size, layer)) != expected:
        raise TypeError(f"SpectralConv was built for {expected} inputs, not {size}")
    return spectral_weight_bound(layer.weight)


def fft_weight_bound(grid: torch.Tensor) -> float:
    """max_f ||W(f)||_2 over a grid of per-frequency matrices (..., out, in)."""
    return spectral_norm(grid.flatten(0, -3)).max().item()


def soc_bound(layer: SOCConv2d, size: Size) -> float:
    """SOC: y = p(A) x + b with p(z) = sum_{j <= T} z^j / j! (T = eval terms) and A the
    zero-padded conv with the cached filter L_n (padding k // 2).

    rho = ``torus_bound`` >= ||A||. If L_n is exactly skew (L = -L^T flipped,
    which skew_filter gives bit for bit: fl(a - b) = -fl(b - a)) and k is odd, A is a
    skew-symmetric matrix, hence normal with eigenvalues i t, |t| <= rho, and
    ||p(A)|| = max |p(i t)| <= ``series_norm_bound(T, rho)``. Otherwise (never for SOC's own
    weights) the triangle inequality gives sum_j rho^j / j!."""
    kernel, _ = layer.cached_weight()
    return series_bound(kernel, layer.eval_terms, size, layer)


def fixed_series_bound(layer: SkewSeries, size: Size) -> float:
    """An exported SOC layer (``SkewSeries``): ``soc_bound``'s argument on its fixed filter."""
    return series_bound(layer.kernel, layer.terms, size, layer)


def series_bound(kernel: torch.Tensor, terms: int, size: Size, layer: nn.Module) -> float:
    rho = torus_bound(kernel, *spatial(size, layer)).item()
    skew = kernel.shape[-1] % 2 == 1 and torch.equal(kernel, -kernel.transpose(0, 1).flip(2, 3))
    if skew:
        return series_norm_bound(terms, rho)
    return sum(rho**j / math.factorial(j) for j in range(terms + 1))


def residual_bound(layer: CPLConv2d | SLLConv2d, size: Size) -> float:
    """CPL, SLL: y = x - K^T (S * ReLU(K x + b)), K the zero-padded conv (padding k // 2), S a
    per-channel scale (CPL: one scalar r; SLL: T).

    The map is piecewise affine and continuous, so its Lipschitz constant is the sup of its
    Jacobians' norms, J = I - K^T S D K with D diagonal in [0, 1] (ReLU'; Clarke's convex hull at
    kinks). Diagonal S >= 0 and D commute: J = I - B^T D B with B = S^(1/2) K, the conv with
    kernel rows scaled by sqrt(S_o). 0 <= B^T D B <= ||B||^2 I, so J is symmetric with
    eigenvalues in [1 - lam, 1], lam = ||B||^2: ||J|| <= max(1, lam - 1). lam is bounded by
    ``torus_bound``, and where that leaves lam > 2 by ``same_conv_bound`` (exact on small maps). A negative S (no layer makes one) falls back to
    ||J|| <= 1 + max|S| ||K||^2."""
    height, width = spatial(size, layer)
    args = (height, width) if layer.size_dependent else ()
    kernel, scale = layer.cached_weight(*args)
    # CPL's eval scale was computed from ``kernel_bound`` of this very kernel: reuse it.
    norm = layer.kernel_bound if isinstance(layer, CPLConv2d) else same_conv_bound
    return residual_map_bound(kernel, scale, height, width, norm)


def fixed_residual_bound(layer: ResidualStep, size: Size) -> float:
    """An exported CPL or SLL layer (``ResidualStep``): ``residual_bound``'s argument on its
    fixed kernel and scale."""
    return residual_map_bound(layer.kernel, layer.scale, *spatial(size, layer), same_conv_bound)


def residual_map_bound(
    kernel: torch.Tensor,
    scale: torch.Tensor,
    height: int,
    width: int,
    norm: Callable[[torch.Tensor, int, int], torch.Tensor],
) -> float:
    """``residual_bound`` for a kernel and scale; ``norm`` a guaranteed norm of the zero-padded
    conv with a kernel (``same_conv_bound``, or CPL's cached value of it)."""
    scale = scale.double().reshape(-1)
    if scale.numel() == 1 and scale.item() >= 0:
        # One step r for every channel (CPL): lam = r ||K||^2 <= r sigma_g^2, sigma_g a
        # guaranteed norm of this very kernel.
        lam = scale.item() * norm(kernel, height, width).item() ** 2
        return max(1.0, lam - 1.0)
    if (scale >= 0).all():
        root = scale.sqrt().reshape(-1, 1, 1, 1)
        scaled = kernel.double() * root
        lam = torus_bound(scaled, height, width).item() ** 2
        if lam > 2:
            lam = same_conv_bound(scaled, height, width).item() ** 2
        return max(1.0, lam - 1.0)
    norm = same_conv_bound(kernel, height, width).item()
    return 1.0 + scale.abs().max().item() * norm**2


def sandwich_bound(layer: SandwichConv2d, size: Size) -> float:
    """Sandwich: y = sqrt(2) A^* Psi ReLU(sqrt(2) Psi^{-1} B x + b), Jacobians J = 2 A^* D B
    with D diagonal in [0, 1] (the argument is in ``lipsweep.layers.sandwich``): ||J|| <=
    min(||[A B]||^2, 2 ||A|| ||B||). A and B are real circular convolutions given on the rfft
    grid, bounded per frequency as Cayley's (``cayley_bound``); so is [A B], whose symbol at f is
    [A(f) B(f)], with A(f) = (A^*(f))^H."""
    return sandwich_grid_bound(*layer.cached_weight(*spatial(size, layer)))


def fixed_sandwich_bound(layer: SandwichStep, size: Size) -> float:
    """An exported Sandwich layer: ``sandwich_bound`` on its fixed grids."""
    if tuple(spatial(size, layer)) != layer.input_hw:
        raise TypeError(f"SandwichStep was built for {layer.input_hw} inputs, not {size}")
    return sandwich_grid_bound(layer.a_adjoint, layer.b)


def sandwich_grid_bound(a_adjoint: torch.Tensor, b: torch.Tensor) -> float:
    """min(||W||^2, 2 ||A|| ||B||), W = [A B]. ``fft_weight_bound`` is sqrt(lam) (1 + slack) for
    the top Gram eigenvalue lam; ||W||^2 needs lam (1 + slack) only (the slack covers lam's
    rounding), not the square of the inflated norm."""
    joint = fft_weight_bound(torch.cat([a_adjoint.mH, b], dim=-1)) / (1 + ROUNDING_SLACK)
    squared = joint**2 * (1 + ROUNDING_SLACK)
    return min(squared, 2 * fft_weight_bound(a_adjoint) * fft_weight_bound(b))


BOUNDS: tuple[tuple[type[nn.Module], Callable[..., float]], ...] = (
    (AOLConv2d, circular_bound),
    (BCOPConv2d, circular_bound),
    (AOCConv2d, circular_bound),
    (CayleyConv2d, cayley_bound),
    (LOTConv2d, lot_bound),
    (BROConv2d, lot_bound),
    (SOCConv2d, soc_bound),
    (CPLConv2d, residual_bound),
    (SLLConv2d, residual_bound),
    (SandwichConv2d, sandwich_bound),
    (SpectralConv, fixed_spectral_bound),
    (SandwichStep, fixed_sandwich_bound),
    (SkewSeries, fixed_series_bound),
    (ResidualStep, fixed_residual_bound),
    (BjorckLinear, dense_head_bound),
    (CayleyLinear, dense_head_bound),
    (nn.Conv2d, conv2d_bound),  # after the layers above: StandardConv2d and any plain conv
    (nn.Linear, linear_bound),
)
