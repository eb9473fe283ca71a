"""Numerical helpers shared by several layers: power iteration, Bjorck orthonormalisation,
Lanczos.

All functions are batched over leading dimensions and contain no Python loop over channels or
frequencies; the Lanczos functions treat the operator as one map (their loop is over Krylov
steps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def matrix_power_iteration(
    matrices: torch.Tensor, u: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Largest singular value of each matrix in a batch (..., m, n), by power iteration.

    ``u`` (..., n) is the start vector (warm start); returns (sigma, u, v) with sigma (...,)
    the estimate u^T A v. The estimate never exceeds the true sigma_max.
    """
    for _ in range(iterations):
        v = matrices @ u.unsqueeze(-1)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(1e-12)
        u = (matrices.mT @ v).squeeze(-1)
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    v = matrices @ u.unsqueeze(-1)
    sigma = v.norm(dim=-2).squeeze(-1)
    return sigma, u, (v / sigma[..., None, None].clamp_min(1e-12)).squeeze(-1)


def bjorck_orthonormalize(
    matrices: torch.Tensor,
    iterations: int,
    u: torch.Tensor | None = None,
    power_iterations: int = 10,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Orthonormalise each matrix of a batch (..., m, n) with the Bjorck-Bowie iteration.

    W <- W (3I - W^T W) / 2 (beta = 0.5, order 1). Each step maps a singular value s to
    1.5 s - 0.5 s^3, which maps [0, sqrt(3)] into [0, 1], so once the pre-scaled sigma_max is
    at most sqrt(3) no singular value ever exceeds 1, converged or not. The pre-scaling divides
    by ``scale`` (...,) if given (eval: the exact ``spectral_norm``, a guaranteed bound), else
    by the power-iteration estimate from ``u`` (training: warm and cheap, but only an estimate
    from below, wrong by more than sqrt(3) if ``u`` misses the top singular vector), else by
    the Frobenius norm (an upper bound). Works on the wide side if rows < cols.
    """
    transpose = matrices.shape[-2] < matrices.shape[-1]
    w = matrices.mT if transpose else matrices
    if scale is None and u is None:
        scale = torch.linalg.matrix_norm(w, ord="fro")
    elif scale is None:
        # u (..., n) lives on the column side of the (possibly transposed) matrix.
        scale, _, _ = matrix_power_iteration(w.detach(), u, power_iterations)
    w = w / scale[..., None, None].clamp_min(1e-12)
    batch = w.reshape(-1, *w.shape[-2:])
    if torch.is_grad_enabled() and batch.requires_grad:
        batch = _BjorckSteps.apply(batch, iterations)
    else:
        batch = _bjorck_steps(batch, iterations)
    w = batch.reshape(w.shape)
    return w.mT if transpose else w


def _bjorck_steps(
    batch: torch.Tensor, iterations: int, iterates: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """Bjorck steps on a 3-D batch, each one fused 1.5 W - 0.5 W (W^T W) (baddbmm): no
    identity, no (n, n) temporaries beyond W^T W. Appends every step's input to ``iterates``."""
    for _ in range(iterations):
        if iterates is not None:
            iterates.append(batch)
        batch = torch.baddbmm(batch, batch, batch.mT @ batch, beta=1.5, alpha=-0.5)
    return batch


class _BjorckSteps(torch.autograd.Function):
    """Bjorck steps whose backward keeps one matrix per step (the step's input W) and
    recomputes G = W^T W, where autograd would keep W and G.

    For W' = 1.5 W - 0.5 W G with G = W^T W (symmetric) and upstream gradient g:
    grad_W = 1.5 g - 0.5 g G - 0.5 W (W^T g + g^T W). That is 4 products per step, as many
    as autograd's backward (G's symmetry pays for recomputing it), at half the memory.
    """

    @staticmethod
    def forward(ctx: Any, batch: torch.Tensor, iterations: int) -> torch.Tensor:
        iterates: list[torch.Tensor] = []
        out = _bjorck_steps(batch, iterations, iterates)
        ctx.save_for_backward(*iterates)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        for w in reversed(ctx.saved_tensors):
            gram, inner = w.mT @ w, w.mT @ grad
            grad = torch.baddbmm(grad, grad, gram, beta=1.5, alpha=-0.5)
            grad = grad.baddbmm_(w, inner + inner.mT, alpha=-0.5)
        return grad, None


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real one: float32 -> complex64, float64 -> complex128."""
    return torch.promote_types(dtype, torch.complex64)


def _dft_phases(
    size: int, frequencies: int, kernel: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """exp(2 pi i u (a - s) / size) for u < frequencies, a < kernel, s = (kernel - 1) // 2.

    The integer product is reduced modulo ``size`` before the float64 angle is formed, so the
    phases are exact to float64 round-off for any size.
    """
    u = torch.arange(frequencies, device=device)[:, None]
    offsets = torch.arange(kernel, device=device)[None, :] - (kernel - 1) // 2
    angle = torch.remainder(u * offsets, size).double() * (2 * torch.pi / size)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def kernel_spectrum(weight: torch.Tensor, height: int, width: int, onesided: bool) -> torch.Tensor:
    """Per-frequency matrices (H, W', out, in) of a centred circular convolution on H x W.

    W_hat(u, v) = sum_{a,b} W[:, :, a, b] exp(2 pi i ((a - s) u / H + (b - s) v / W)), with
    s = (k - 1) // 2. For k <= H, W this is shift(f) * conj(fft2(W, (H, W)))(f) of the
    Cayley and LOT papers; the explicit DFT also aliases a kernel larger than the image
    correctly (``fft2(W, s)`` would crop it). ``onesided`` keeps the W // 2 + 1 columns of
    ``rfft2``. With it, ``irfft2(W_hat @ rfft2(x))`` equals the cross-correlation
    ``conv2d(x, W)`` under circular 'same' padding.
    """
    kernel_h, kernel_w = weight.shape[-2:]
    dtype = complex_dtype(weight.dtype)
    columns = width // 2 + 1 if onesided else width
    rows = _dft_phases(height, height, kernel_h, dtype, weight.device)
    cols = _dft_phases(width, columns, kernel_w, dtype, weight.device)
    return torch.einsum("oiab,ua,vb->uvoi", weight.to(dtype), rows, cols)


def map_rfft_grid(
    function: Callable[[torch.Tensor], torch.Tensor], grid: torch.Tensor, width: int
) -> torch.Tensor:
    """``function`` of every frequency's matrix of an rfft grid (H, W // 2 + 1, ...) of a real
    kernel on H x ``width``, evaluated only at the frequencies that are not conjugates of others.

    The spectrum of a real kernel has X(-u, -v) = conj X(u, v); inside the rfft grid this pairs
    the rows u and H - u of the columns v = 0 and v = W / 2 (W even). ``function`` (batched over
    the leading dimension) must commute with conjugation, as products, sums, real scalings,
    inverses and real norms do; the paired rows are then the conjugates of their partners, so
    this is the same map at 5-17% less work (more on small grids, e.g. a 6 x 4 grid has 20
    independent frequencies of 24).
    """
    height, columns = grid.shape[:2]
    # Under torch.compile the index tables are traced (constants); eager calls hit the cache.
    tables = _rfft_independent.__wrapped__ if torch.compiler.is_compiling() else _rfft_independent
    kept, source, conjugated = tables(height, width, grid.device)
    out = function(grid.flatten(0, 1)[kept])[source]
    conjugated = conjugated.view(-1, *[1] * (out.dim() - 1))
    return torch.where(conjugated, out.conj(), out).view(height, columns, *out.shape[1:])


@functools.lru_cache(maxsize=64)
def _rfft_independent(
    height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept, source, conjugated) for ``map_rfft_grid``: the flat indices of the independent
    frequencies, for every frequency the position of its value among them, and whether it
    is the conjugate of that value. Built once per grid and device (no device sync later)."""
    columns = width // 2 + 1
    u = torch.arange(height)[:, None].expand(height, columns)
    v = torch.arange(columns)[None, :].expand(height, columns)
    mirror = (-u) % height
    edge = (v == 0) | (2 * v == width)
    conjugated = edge & (u > mirror)
    partner = torch.where(conjugated, mirror * columns + v, u * columns + v).flatten()
    kept = torch.arange(height * columns)[~conjugated.flatten()]
    position = torch.empty(height * columns, dtype=torch.long)
    position[kept] = torch.arange(len(kept))
    return kept.to(device), position[partner].to(device), conjugated.flatten().to(device)


def spectral_matmul(weight: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """y_hat(f) = W(f) x_hat(f) at every frequency: weight (U, V, O, I), x_hat (B, I, U, V),
    returns (B, O, U, V), contiguous.

    ``einsum("uvoi,biuv->bouv")`` hands bmm matrices without a unit stride (x_hat's (I, B),
    and in backward the gradient's (O, B)), which bmm then clones one frequency at a time.
    Here each is copied once into (U V, ., B): x_hat forward, the gradient in backward
    (``_ContiguousGradient``); a contiguous y_hat is also cheaper to irfft.
    """
    u, v, o, i = weight.shape
    b = x_hat.shape[0]
    x = x_hat.permute(2, 3, 1, 0).reshape(u * v, i, b).contiguous()  # reshape alone: a view
    y = _ContiguousGradient.apply(weight.reshape(u * v, o, i) @ x)
    return y.view(u, v, o, b).permute(3, 2, 0, 1).contiguous()


def padded_spectral_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int
) -> torch.Tensor:
    """crop(irfft2(W(f) rfft2(pad(x)))) + b: the FFT-domain layers (LOT, BRO) on a zero-padded
    image, or, for a real ``weight`` (their k = 1 form), the same matrix at every pixel."""
    if not weight.is_complex():
        return F.conv2d(x, weight[:, :, None, None], bias)
    p = padding
    height, width = x.shape[-2:]
    padded = F.pad(x, (p, p, p, p))
    y = torch.fft.irfft2(spectral_matmul(weight, torch.fft.rfft2(padded)), s=padded.shape[-2:])
    return y[..., p : p + height, p : p + width] + bias[:, None, None]


class _ContiguousGradient(torch.autograd.Function):
    """The identity; its backward hands on the gradient contiguous (one copy)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def cayley_transform(matrices: torch.Tensor) -> torch.Tensor:
    """Cayley transform of the skew part of each square matrix of a batch (..., n, n).

    A = W - W^H, Q = (I + A)^{-1} (I - A) = 2 (I + A)^{-1} - I (Trockman & Kolter, ICLR 2021).
    Q is unitary (orthogonal for real W); I + A is never singular (its singular values are
    >= 1, A being skew). The inverse form costs what the solve costs forward (PyTorch inverts
    by solving against I), but its backward is two batched matmuls instead of an LU solve and
    a matmul, and keeps only (I + A)^{-1} where a solve keeps I + A, its LU factors and Q.
    """
    skew = matrices - matrices.mH
    eye = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    return 2 * inverse(eye + skew) - eye


CPU_BATCHED_INVERSE_LIMIT = 255  # larger CPU matrices are inverted one at a time


def inverse(matrices: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.inv`` of a batch (..., n, n). On the CPU, batched inversion of n >= 256
    fails in torch 2.13's MKL build ("Pivots given to lu_solve must all be greater or equal to
    1", for real and complex dtypes alike), so those batches are inverted matrix by matrix
    (Cayley's wide layers sit at small maps: a few dozen matrices at most)."""
    n = matrices.shape[-1]
    if matrices.device.type != "cpu" or n <= CPU_BATCHED_INVERSE_LIMIT or matrices.dim() == 2:
        return torch.linalg.inv(matrices)
    flat = matrices.reshape(-1, n, n)
    return torch.stack([torch.linalg.inv(m) for m in flat]).reshape(matrices.shape)


def solve(matrices: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve`` of a batch (..., n, n) against (..., n, k), matrix by matrix on
    the CPU for n >= 256, where the batched LU of torch 2.13's MKL build fails (``inverse``)."""
    n = matrices.shape[-1]
    if matrices.device.type != "cpu" or n <= CPU_BATCHED_INVERSE_LIMIT or matrices.dim() == 2:
        return torch.linalg.solve(matrices, rhs)
    flat, right = matrices.reshape(-1, n, n), rhs.reshape(-1, *rhs.shape[-2:])
    solved = [torch.linalg.solve(m, r) for m, r in zip(flat, right, strict=True)]
    return torch.stack(solved).reshape(rhs.shape)


def fantastic_four_matrices(kernel: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four reshapes R_1..R_4 of a conv kernel (out, in, h, w) of the Fantastic Four bound.

    R_1 (out*h, in*w), R_2 (out*w, in*h), R_3 (out, in*h*w), R_4 (out*h*w, in). For the stride-1
    convolution with this kernel, zero or circular padding (Singla & Feizi, ICLR 2021, Thm. 1):
    ||conv||_2 <= sqrt(h*w) * min_i ||R_i||_2.
    """
    out_channels, in_channels, height, width = kernel.shape
    return (
        kernel.permute(0, 2, 1, 3).reshape(out_channels * height, in_channels * width),
        kernel.permute(0, 3, 1, 2).reshape(out_channels * width, in_channels * height),
        kernel.reshape(out_channels, in_channels * height * width),
        kernel.permute(0, 2, 3, 1).reshape(out_channels * height * width, in_channels),
    )


def fantastic_four(
    kernel: torch.Tensor, vectors: tuple[torch.Tensor, ...], iterations: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Warm-started power-iteration estimates of ||R_i||_2 (``fantastic_four_matrices``).

    ``vectors[i]`` is the start vector on the column side of R_i (length in*w, in*h, in*h*w,
    in). The iterations run without gradient; the returned sigmas (4,) = ||R_i u_i|| keep
    the gradient w.r.t. ``kernel``. Each sigma_i <= ||R_i||_2, so at convergence
    ||conv||_2 <= sqrt(h*w) * min_i sigma_i. Returns new (cloned) vectors.
    """
    matrices = fantastic_four_matrices(kernel)
    with torch.no_grad():
        vectors = tuple(
            matrix_power_iteration(m.detach(), u, iterations)[1].clone()
            for m, u in zip(matrices, vectors, strict=True)
        )
    sigmas = torch.stack([(m @ u).norm() for m, u in zip(matrices, vectors, strict=True)])
    return sigmas, vectors


def random_unit_vectors(*shape: int) -> torch.Tensor:
    """Gaussian vectors normalised along the last dimension (power-iteration start vectors)."""
    u = torch.randn(*shape)
    return u / u.norm(dim=-1, keepdim=True)


BREAKDOWN_RTOL = 1e-12  # Lanczos: beta_j <= this * ||A|| means an invariant subspace
RESIDUAL_CHECK_EVERY = 10  # Lanczos steps between two checks of the Ritz residual
LANCZOS_CYCLE = 200  # default Krylov steps per restart (basis: this many copies of the vector)


def lanczos_largest_eigenvalue(
    operator: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    rtol: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest eigenvalue of a symmetric PSD operator A and its Ritz vector, by Lanczos.

    Builds an orthonormal basis Q = [q_1 .. q_m] of the Krylov space span{s, A s, .., A^(m-1) s}
    (s = ``start``, any shape that ``operator`` accepts) and the tridiagonal T = Q^T A Q
    (alpha_j = q_j^T A q_j, beta_j = ||A q_j - alpha_j q_j - beta_(j-1) q_(j-1)||); returns
    (theta, y) with theta the largest eigenvalue of T (0-dim tensor) and y = Q z its unit Ritz
    vector, in ``start``'s shape and dtype (pass float64 for a float64 result).

    Full reorthogonalisation: the basis is one (m, n) tensor and after the three-term recurrence
    each new vector is orthogonalised against all of it at once, r <- r - Q^T (Q r) (one matmul
    pair per step); this keeps Q orthonormal to round-off, so no spurious copies of converged
    eigenvalues ("ghosts") appear. Breakdown (beta_j at round-off level: the basis spans an
    invariant subspace, e.g. after n steps in dimension n, or at once for A = c I) ends the
    iteration early; T's eigenvalues are then exact eigenvalues of A. With ``rtol`` > 0 it also
    ends, checked every ``RESIDUAL_CHECK_EVERY`` steps, once the Ritz residual
    ||A y - theta y|| = beta_m |z_m| (z the eigenvector of T, a by-product) is <= rtol theta.

    theta = y^T A y is a Rayleigh quotient, so theta <= lambda_max: like power iteration it is
    a lower bound. But after m steps its error decays like T_(m-1)(1 + 2 gamma)^(-2) ~
    exp(-4 m sqrt(gamma)) (Chebyshev polynomial T, gamma = (l_1 - l_2) / (l_2 - l_n)) instead of
    power iteration's (l_2 / l_1)^(2m) ~ exp(-2 m gamma) (for l_n ~ 0): far faster on clustered spectra such as
    the top of a convolution's.
    """
    theta, ritz, _ = _lanczos(operator, start, steps, rtol)
    return theta, ritz


def _lanczos(
    operator: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    rtol: float,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``lanczos_largest_eigenvalue`` that also returns the number of steps (matvecs) taken."""
    shape = start.shape
    q = start.reshape(-1)
    steps = max(1, min(steps, q.numel()))
    basis = q.new_zeros(steps, q.numel())
    basis[0] = q / q.norm().clamp_min(torch.finfo(q.dtype).tiny)
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    scale = 0.0  # running lower estimate of ||A||, the yardstick of breakdown
    for j in range(steps):
        w = operator(basis[j].view(shape)).reshape(-1)
        w, alpha = _lanczos_residual(w, basis[: j + 1], betas[-1] if betas else None)
        alphas.append(alpha)
        if j + 1 == steps:
            break
        beta = w.norm()
        size, norm = torch.stack([alpha.abs(), beta]).tolist()  # one device sync per step
        scale = max(scale, size, norm)
        if norm <= BREAKDOWN_RTOL * scale or _converged(alphas, betas, beta, rtol):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    theta, z = _top_eigenpair_of_tridiagonal(torch.stack(alphas), betas)
    ritz = z @ basis[: len(alphas)]
    return theta, (ritz / ritz.norm()).view(shape), len(alphas)


def _converged(
    alphas: list[torch.Tensor], betas: list[torch.Tensor], beta: torch.Tensor, rtol: float
) -> bool:
    """Every ``RESIDUAL_CHECK_EVERY`` steps: is beta_m |z_m| <= rtol theta for T's top pair?"""
    if rtol <= 0 or len(alphas) % RESIDUAL_CHECK_EVERY:
        return False
    theta, z = _top_eigenpair_of_tridiagonal(torch.stack(alphas), betas)
    return (beta * z[-1].abs()).item() <= rtol * theta.item()


def _lanczos_residual(
    w: torch.Tensor, basis: torch.Tensor, beta: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The three-term Lanczos step on w = A q_j, then one full reorthogonalisation pass.

    r = w - beta_(j-1) q_(j-1) - alpha_j q_j with alpha_j = q_j^T (w - beta_(j-1) q_(j-1)),
    then r <- r - Q^T (Q r) against every basis row q_1 .. q_j (one matmul pair).
    Returns (r, alpha_j).
    """
    if beta is not None:
        w = w - beta * basis[-2]
    alpha = basis[-1] @ w
    w = w - alpha * basis[-1]
    return w - (basis @ w) @ basis, alpha


def _top_eigenpair_of_tridiagonal(
    alphas: torch.Tensor, betas: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest eigenvalue and unit eigenvector of the symmetric tridiagonal (alphas, betas)."""
    tridiagonal = torch.diag(alphas)
    if betas:
        off = torch.stack(betas)
        tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    return values[-1], vectors[:, -1]


def largest_eigenpair(
    operator: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    rtol: float,
    max_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Restarted Lanczos: cycles of ``steps`` steps, each started from the last Ritz vector.

    Stops once the Ritz residual rho = ||A y - theta y|| <= rtol theta, as estimated inside a
    cycle and then measured (one extra matvec per cycle), or after ``max_steps`` matvecs in
    all. rho bounds the distance of theta to the eigenvalue it approximates by rho^2 / gap
    (Kato-Temple), so theta is then accurate far beyond rtol. It is still a Rayleigh quotient,
    theta <= lambda_max; from a generic start the top eigenvalue is the one Lanczos finds
    first. Returns (theta, y, matvecs, converged).
    """
    theta, y, used = start.new_zeros(()), start, 0
    while used < max_steps:
        theta, y, taken = _lanczos(operator, y, min(steps, max_steps - used), rtol)
        residual = (operator(y) - theta * y).norm()
        used += taken + 1
        if residual.item() <= rtol * theta.item():
            return theta, y, used, True
    return theta, y, used, False
