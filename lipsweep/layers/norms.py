"""Guaranteed operator norms (l2) of the linear maps inside lipsweep's layers, in float64.

Every function returns a number proven >= the true norm: exact arithmetic arguments next to the
code, times ``1 + ROUNDING_SLACK`` for the float64 rounding of the computation itself. Nothing
here reads a stored power-iteration vector, so the results depend on the weights alone.

* ``spectral_norm``: a batch of explicit matrices (eigvalsh of the Gram matrix);
* ``circular_conv_norm``: a circular convolution, block-diagonal in the 2-D DFT;
* ``same_conv_bound``: a zero-padded 'same' convolution (CPL, SLL, SOC), the smaller of a
  torus bound (a restriction of the circular conv on a slightly larger torus) and, for maps of
  at most ``DENSE_LIMIT`` inputs, the exact norm of the dense matrix, checked by a Cholesky
  factorisation (of a band matrix on the CPU: the Gram matrix of a k x k conv couples pixels
  at most k - 1 rows apart).
"""

from __future__ import annotations

import numpy
import scipy.linalg
import torch
import torch.nn.functional as F

from lipsweep.layers.numerics import _rfft_independent, largest_eigenpair

# Relative slack on every computed norm, above the float64 rounding of the computations here:
# eigvalsh, the Gram products and the FFT are backward stable with relative errors ~ n u
# (u = 2^-53, n <= 4096 the matrix side), ~ 5e-13 at most. The dense check adds its own term.
ROUNDING_SLACK = 1e-9
DENSE_LIMIT = 4096  # largest C * H * W whose zero-padded conv is bounded by its dense matrix
DENSE_RTOL = 1e-6  # Lanczos residual before the Cholesky check (theta then ~1e-12 accurate)
CHECK_SLACK = 1e-8  # tau = (1 + this) theta is the candidate the Cholesky check proves


def inflate(norm: torch.Tensor) -> torch.Tensor:
    return norm * (1 + ROUNDING_SLACK)


def spectral_norm(matrices: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each matrix of a batch (..., m, n), in float64 (complex128),
    inflated by ``ROUNDING_SLACK``.

    sqrt of the top eigenvalue of the smaller Gram matrix (eigvalsh, a backward-stable
    Hermitian eigensolver): exact up to float64 rounding (relative error ~ n u); unlike power
    iteration it needs no start vector and cannot stall below sigma_max.
    """
    a = matrices.detach().to(torch.promote_types(matrices.dtype, torch.float64))
    gram = a.mH @ a if a.shape[-2] >= a.shape[-1] else a @ a.mH
    return inflate(torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0).sqrt())


def circular_conv_norm(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Guaranteed norm (float64, 0-dim) of the circular cross-correlation with ``kernel``
    (out, in, kh, kw) on a height x width torus, any tap alignment.

    It is block-diagonal in the 2-D DFT (Sedghi et al., 2019): the norm is the largest singular
    value over the frequencies f of the c_out x c_in matrix sum_{a,b} K[:, :, a, b] e^{-2 pi i
    <f, (a, b)>}; a shift of the taps only multiplies it by a unit scalar. Taps beyond the
    torus alias onto it (index_add: as ``circular_same_pad`` wraps several times). A real
    kernel has conjugate matrices at f and -f, so the one-sided rfft grid has every value, and
    a 1 x 1 kernel has the same matrix at every frequency.
    """
    kernel = kernel.detach().double()
    if kernel.shape[-2:] == (1, 1):
        return spectral_norm(kernel[:, :, 0, 0])
    rows = torch.arange(kernel.shape[-2], device=kernel.device) % height
    cols = torch.arange(kernel.shape[-1], device=kernel.device) % width
    wrapped = kernel.new_zeros(*kernel.shape[:2], height, kernel.shape[-1])
    wrapped = wrapped.index_add_(2, rows, kernel)
    torus = kernel.new_zeros(*kernel.shape[:2], height, width).index_add_(3, cols, wrapped)
    grid = torch.fft.rfft2(torus).permute(2, 3, 0, 1).flatten(0, 1)
    kept, _, _ = _rfft_independent(height, width, kernel.device)  # conjugate pairs once
    return spectral_norm(grid[kept]).max()


def zero_padding_torus(size: int, kernel: int, before: int, out: int) -> int:
    """Side m of a torus on which a zero-padded stride-1 convolution along one axis is a
    restriction of the circular one: input ``size``, ``kernel`` taps, ``before`` zeros padded
    before, ``out`` outputs.

    Output i reads input j = i + a - before in [-before, out + kernel - 2 - before]. Embed x in
    the torus at [0, size) with zeros on [size, m): then every j outside [0, size) lands on a
    zero iff j mod m is in [size, m), i.e. m >= size + before (for j < 0) and m >= out + kernel
    - 1 - before (for j >= size); with m >= out the outputs are distinct rows. So the zero-padded
    map is crop . circular_m . embed, whose norm is <= the circular norm (embedding isometric,
    crop a projection). 'same' padding k // 2 gives m = size + k // 2.
    """
    return max(size + before, out + kernel - 1 - before, out)


def same_conv_bound(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Guaranteed bound (float64, 0-dim) of ||x -> conv2d(x, kernel, padding=k // 2)|| on
    height x width inputs (CPL, SLL, SOC): the torus bound, or the dense one if smaller.

    The torus bound exceeds the true norm by the boundary's share of the map: ~1% at 32 x 32,
    2-9% at 8 x 8 and 10-12% at 4 x 4 on trained CPL kernels; the dense bound is exact to
    rounding, so small maps (where the gap is large) get it.
    """
    bound = torus_bound(kernel, height, width)
    if kernel.shape[-2:] == (1, 1):
        return bound  # a 1 x 1 conv is one matrix per pixel: the torus bound is its norm
    if kernel.shape[1] * height * width <= DENSE_LIMIT:
        bound = torch.minimum(bound, dense_bound(kernel, height, width, bound))
    return bound


def torus_bound(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``circular_conv_norm`` on the ``zero_padding_torus`` of each axis (padding k // 2)."""
    sides = []
    for size, k in ((height, kernel.shape[-2]), (width, kernel.shape[-1])):
        sides.append(zero_padding_torus(size, k, k // 2, size + 2 * (k // 2) - k + 1))
    return circular_conv_norm(kernel, *sides)


def same_conv_gram(kernel: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int]:
    """(G, b): the dense Gram matrix G = A^T A (N x N, N = C_in H W, float64, ``conv_matrix``'s
    pixel-major order) of the zero-padded conv A, and its bandwidth b (G_(i, j) = 0 for
    |i - j| > b).

    y_o = sum_a K_a x_(o + a - p) (cross-correlation, K_a the c_out x c_in matrix of tap a,
    p = k // 2), so A has the block K_(i - o + p) at (output o, input i) and
    G_(i, j) = sum_o K_(i - o + p)^T K_(j - o + p) over the outputs o and taps in range. The
    products P_(a, b) = K_a^T K_b are formed once; a count matrix (how many outputs o read
    pixel i through tap a and pixel j through tap b) times them gives every block in one
    matmul. Two pixels read by one output are at most (kh - 1) W + kw - 1 apart in row-major
    order: that, in whole pixels of C_in entries, is the bandwidth.
    """
    k = kernel.detach().double()
    c_in, (kh, kw) = k.shape[1], k.shape[-2:]
    taps = k.flatten(2)  # (out, in, t)
    products = torch.einsum("oia,ojb->abij", taps, taps).flatten(0, 1)  # (t t, in, in)
    out_h, out_w = height + 2 * (kh // 2) - kh + 1, width + 2 * (kw // 2) - kw + 1
    o_h, o_w, a_h, a_w = torch.meshgrid(
        torch.arange(out_h), torch.arange(out_w), torch.arange(kh), torch.arange(kw), indexing="ij"
    )
    # (output, tap): the input pixel read by tap a at output o, and whether it is inside.
    i_h, i_w = (o_h + a_h - kh // 2).flatten(2), (o_w + a_w - kw // 2).flatten(2)
    i_h, i_w = i_h.flatten(0, 1), i_w.flatten(0, 1)
    inside = (i_h >= 0) & (i_h < height) & (i_w >= 0) & (i_w < width)
    pixel = i_h * width + i_w
    # Every pair (tap a, tap b) of one output o: G_(pixel_a, pixel_b) += P_(a, b).
    o, a, b = (inside[:, :, None] & inside[:, None, :]).nonzero(as_tuple=True)
    pixels, t = height * width, taps.shape[-1]
    index = (pixel[o, a] * pixels + pixel[o, b]) * t * t + a * t + b
    counts = torch.bincount(index, minlength=pixels * pixels * t * t).view(pixels * pixels, -1)
    blocks = counts.to(k.device, torch.float64) @ products.flatten(1)
    gram = blocks.view(pixels, pixels, c_in, c_in).transpose(1, 2).reshape(pixels * c_in, -1)
    reach = int((pixel[o, a] - pixel[o, b]).abs().max()) if len(o) else 0
    return gram, (reach + 1) * c_in - 1


def shifted_cholesky_completes(gram: torch.Tensor, tau: torch.Tensor, bandwidth: int) -> bool:
    """Whether the Cholesky factorisation of tau I - ``gram`` (symmetric, float64, zero beyond
    ``bandwidth`` off the diagonal) runs to completion: LAPACK's band Cholesky (pbtrf) on the
    CPU, the dense one (potrf) on an accelerator. pbtrf is the same algorithm with the
    structural zeros (which stay exact zeros in the factor) skipped, so the backward error
    bound quoted in ``dense_bound`` holds for both.
    """
    if gram.device.type != "cpu":
        shifted = -gram
        shifted.diagonal().add_(tau)
        return torch.linalg.cholesky_ex(shifted)[1].item() == 0
    dense = gram.numpy()
    band = numpy.zeros((bandwidth + 1, len(dense)))
    for offset in range(bandwidth + 1):  # LAPACK upper band storage: row b - d holds diagonal d
        band[bandwidth - offset, offset:] = -dense.diagonal(offset)
    band[bandwidth] += tau.item()
    try:
        scipy.linalg.cholesky_banded(band, lower=False, check_finite=False)
    except scipy.linalg.LinAlgError:  # a pivot <= 0: not positive definite (as computed)
        return False
    return True


def dense_bound(kernel: torch.Tensor, height: int, width: int, upper: torch.Tensor) -> torch.Tensor:
    """Guaranteed ||A|| of the zero-padded conv A, checked on its dense Gram matrix G = A^T A
    (``upper`` >= ||A|| is any guaranteed bound, e.g. the torus one).

    theta from Lanczos on x -> A^T A x (two convs per step; a Rayleigh quotient, so
    theta <= lambda_max), tau = (1 + CHECK_SLACK) theta. If the Cholesky factorisation of
    tau I - G runs to completion in float64, then tau I - G + E is positive semidefinite with
    ||E|| <= 2 N^2 u ||tau I - G|| (Demmel; Higham, Accuracy and Stability, Thm. 10.7, with
    || |R^T| |R| || <= N ||R||^2), and ||tau I - G|| <= tau + upper^2 (G is PSD): so
    lambda_max(G) <= tau + 2 N^2 u (tau + upper^2). Forming G adds an error of norm
    ~ (C + t) N u ||A||^2, far below that. If the check fails (theta was not the top
    eigenvalue), eigvalsh of G gives lambda_max (backward stable). The result is inflated by
    ``ROUNDING_SLACK`` like every other norm here.
    """
    k = kernel.detach().double()
    padding = (k.shape[-2] // 2, k.shape[-1] // 2)

    def gram_of(x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(F.conv2d(x, k, padding=padding), k, padding=padding)

    shape = (1, k.shape[1], height, width)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta, _, _, _ = largest_eigenpair(gram_of, start.to(k.device), 200, DENSE_RTOL, 2000)
    gram, bandwidth = same_conv_gram(k, height, width)
    size, unit = len(gram), torch.finfo(torch.float64).eps / 2
    tau = (1 + CHECK_SLACK) * theta.clamp_min(0)
    if shifted_cholesky_completes(gram, tau, bandwidth):
        top = tau + 2 * size**2 * unit * (tau + upper.double() ** 2)
    else:
        top = torch.linalg.eigvalsh(gram)[-1].clamp_min(0)
    return inflate(top.sqrt())


def conv_matrix(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The dense matrix of ``conv2d(x, kernel, padding=k // 2)`` on height x width inputs, in
    float64, pixel-major (index = pixel * C + channel) on both sides (tests and benchmarks
    compare bounds with its exact norm)."""
    k = kernel.detach().double()
    size = k.shape[1] * height * width
    eye = torch.eye(size, dtype=torch.float64, device=k.device).view(size, height, width, -1)
    padding = (k.shape[-2] // 2, k.shape[-1] // 2)
    out = F.conv2d(eye.permute(0, 3, 1, 2), k, padding=padding)
    return out.permute(0, 2, 3, 1).flatten(1).T
