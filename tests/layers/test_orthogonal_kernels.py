"""Method-specific checks of BCOP, BjorckLinear, SOC and the Fantastic Four bound (float64).

Fantastic Four relation tested here, for a kernel K (out, in, k, k) and its reshapes R_1..R_4:
    max(||R_3||, ||R_4||) <= ||circular conv_K||_2 <= k * min_i ||R_i||_2,
    ||zero-padded conv_K||_2 <= k * min_i ||R_i||_2,
and each power-iteration estimate sigma_i <= ||R_i||_2 (equal at convergence). So SOC's
L_n = 0.7 L / min_i sigma_i has ||L_n||_2 <= 0.7 k once the estimates have converged.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipsweep.layers.bcop import BCOPConv2d, BjorckLinear, bcop_kernel
from lipsweep.layers.numerics import (
    fantastic_four,
    fantastic_four_matrices,
    kernel_spectrum,
    random_unit_vectors,
)
from lipsweep.layers.soc import SOCConv2d, skew_filter

DTYPE = torch.float64


def perturbed_bcop(channels: int, kernel: int) -> BCOPConv2d:
    """A BCOP layer whose parameter matrices are far from orthogonal (condition numbers up to
    ~30, which 20 Bjorck steps still converge on; near-singular ones would stay contractive
    but not orthogonal)."""
    torch.manual_seed(0)
    layer = BCOPConv2d(channels, channels, kernel).to(DTYPE)
    with torch.no_grad():
        layer.param_matrices.add_(0.5 * torch.randn_like(layer.param_matrices) / channels)
    return layer


def spectrum(kernel: torch.Tensor, size: int = 8) -> torch.Tensor:
    """All singular values of the circular convolution with ``kernel`` on size x size."""
    return torch.linalg.svdvals(kernel_spectrum(kernel, size, size, onesided=False))


def zero_padded_conv_matrix(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The matrix of x -> conv2d(x, kernel, padding=k // 2) on (in, height, width) inputs."""
    channels = kernel.shape[1]
    basis = torch.eye(channels * height * width, dtype=kernel.dtype)
    images = basis.reshape(-1, channels, height, width)
    return F.conv2d(images, kernel, padding=kernel.shape[-1] // 2).flatten(1).T


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels,kernel", [(4, 1), (4, 2), (4, 3), (5, 3), (3, 5)])
def test_bcop_kernel_spectrum_is_orthogonal(channels: int, kernel: int, training: bool) -> None:
    layer = perturbed_bcop(channels, kernel)
    weight, _ = layer.parametrize(training)
    assert weight.shape == (channels, channels, kernel, kernel)
    torch.testing.assert_close(
        spectrum(weight), torch.ones(8, 8, channels, dtype=DTYPE), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("kernel", [3, 5])
def test_bcop_uses_every_projector_once(kernel: int) -> None:
    """The kernel's symbol is H prod_j (P_a + (I - P_a) z1)(P_b + (I - P_b) z2) over the pairs
    (P_1, P_2), (P_3, P_4), ... (BCOP Eq. 6), and every parameter matrix moves the kernel."""
    layer = perturbed_bcop(4, kernel)
    ortho = layer.orthogonal_matrices(False)
    weight = bcop_kernel(ortho, kernel)
    z1, z2 = torch.polar(torch.ones(2, dtype=DTYPE), torch.tensor([0.7, -2.1], dtype=DTYPE))
    powers = torch.arange(kernel)
    symbol = torch.einsum("oiab,a,b->oi", weight.to(z1.dtype), z1**powers, z2**powers)
    eye = torch.eye(4, dtype=z1.dtype)
    expected = ortho[0].to(z1.dtype)
    halves = ortho[1:, :, :2]
    projectors = (halves @ halves.mT).to(z1.dtype)
    for p, q in zip(projectors[0::2], projectors[1::2], strict=True):
        expected = expected @ (p + (eye - p) * z1) @ (q + (eye - q) * z2)
    torch.testing.assert_close(symbol, expected, atol=1e-10, rtol=0)

    probe = torch.randn_like(weight)
    (grad,) = torch.autograd.grad(
        (bcop_kernel(layer.orthogonal_matrices(True), kernel) * probe).sum(), layer.param_matrices
    )
    assert (grad.flatten(1).norm(dim=1) > 1e-6).all(), (
        "a parameter matrix does not reach the kernel"
    )


@pytest.mark.parametrize(
    "kernel,height,width", [(3, 8, 8), (3, 5, 7), (3, 1, 1), (5, 3, 2), (5, 1, 4)]
)
def test_bcop_layer_is_the_orthogonal_circular_convolution(
    kernel: int, height: int, width: int
) -> None:
    """Layer output (minus bias) equals the FFT circular convolution, also when the kernel is
    larger than the image (wrap-around padding), and it preserves norms."""
    layer = perturbed_bcop(4, kernel).eval()
    x = torch.randn(3, 4, height, width, dtype=DTYPE)
    with torch.no_grad():
        y = layer(x) - layer.bias[:, None, None]
    weight, _ = layer.cached_weight()
    fft = kernel_spectrum(weight, height, width, onesided=False)
    x_hat = torch.fft.fft2(x).permute(2, 3, 1, 0)  # (H, W, C, B)
    expected = torch.fft.ifft2((fft @ x_hat).permute(3, 2, 0, 1)).real
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-10, rtol=0
    )


@pytest.mark.parametrize("in_features,out_features", [(6, 6), (8, 3), (3, 8)])
def test_bjorck_linear_is_orthogonal_in_eval_and_contractive_in_training(
    in_features: int, out_features: int
) -> None:
    torch.manual_seed(0)
    layer = BjorckLinear(in_features, out_features).to(DTYPE)
    with torch.no_grad():
        layer.weight.add_(0.2 * torch.randn_like(layer.weight))
    train_weight, _ = layer.parametrize(True)
    assert torch.linalg.matrix_norm(train_weight, ord=2) <= 1 + 1e-10
    layer.eval()
    eval_weight, _ = layer.cached_weight()
    small = min(in_features, out_features)
    gram = (
        eval_weight @ eval_weight.T if out_features <= in_features else eval_weight.T @ eval_weight
    )
    torch.testing.assert_close(gram, torch.eye(small, dtype=DTYPE), atol=1e-10, rtol=0)
    assert layer(torch.randn(5, in_features, dtype=DTYPE)).shape == (5, out_features)


BUFFERED = {
    "bcop": lambda: BCOPConv2d(4, 4, 3),
    "bjorck_linear": lambda: BjorckLinear(4, 4),
    "soc": lambda: SOCConv2d(4, 4, 3),
}


@pytest.mark.parametrize("name", BUFFERED)
def test_eval_leaves_buffers_alone_and_training_warm_starts_them(name: str) -> None:
    """Eval weights are a pure function of the state_dict; training updates the start vectors."""
    torch.manual_seed(0)
    layer = BUFFERED[name]()
    x = torch.randn(2, 4) if name == "bjorck_linear" else torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    before = {k: v.clone() for k, v in layer.named_buffers()}
    layer.eval()
    with torch.no_grad():
        layer(x)
    for key, buffer in layer.named_buffers():
        assert torch.equal(buffer, before[key]), f"eval changed buffer {key}"
    layer.train()
    with torch.no_grad():
        layer(x)
    assert any(not torch.equal(b, before[n]) for n, b in layer.named_buffers())


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_soc_skew_filter_gives_a_skew_symmetric_operator(kernel: int) -> None:
    """<L * x, y> = -<x, L * y> for the zero-padded convolution, on a non-square image."""
    torch.manual_seed(0)
    weight = skew_filter(torch.randn(3, 3, kernel, kernel, dtype=DTYPE))
    x, y = torch.randn(2, 1, 3, 5, 7, dtype=DTYPE)
    lx = F.conv2d(x, weight, padding=kernel // 2)
    ly = F.conv2d(y, weight, padding=kernel // 2)
    torch.testing.assert_close((lx * y).sum(), -(x * ly).sum(), atol=1e-12, rtol=0)


def soc_after_perturbation(kernel: int) -> SOCConv2d:
    torch.manual_seed(0)
    layer = SOCConv2d(4, 4, kernel).to(DTYPE)
    with torch.no_grad():
        layer.random_conv_filter.add_(torch.randn_like(layer.random_conv_filter))
        skew = skew_filter(layer.random_conv_filter)
        layer.set_vectors(fantastic_four(skew, layer.vectors(), layer.init_iterations)[1])
    for _ in range(3):  # training forwards: one warm-started iteration each
        layer.parametrize(True)
    return layer


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("training", [True, False])
def test_soc_singular_values_are_those_of_the_truncated_exponential(
    kernel: int, training: bool
) -> None:
    """L_n is skew (normal, eigenvalues i theta), so the T-term series has singular values
    |sum_{j<=T} (i theta)^j / j!| exactly. For theta <= 0.7 k = 2.1: T = 12 (eval) never
    exceeds 1 and falls short by < 3e-6; T = 5 (training) exceeds 1 by at most
    max_theta |T_5(i theta)| - 1 = 4.7e-3 (at theta = 1.59)."""
    layer = soc_after_perturbation(kernel).train(training)
    weight = layer.parametrize(training)
    height, width = 5, 4
    conv = zero_padded_conv_matrix(weight[0], height, width)
    norm = torch.linalg.matrix_norm(conv, ord=2)
    assert norm <= layer.correction * kernel + 1e-9, "Fantastic Four bound violated"
    eigenvalues = torch.linalg.eigvals(conv)
    assert eigenvalues.real.abs().max() < 1e-10
    terms = layer.train_terms if training else layer.eval_terms
    series = sum(eigenvalues**j / math.factorial(j) for j in range(terms + 1))
    expected = series.abs().sort().values

    def flat(z: torch.Tensor) -> torch.Tensor:
        return layer.apply_weight(z.view(1, 4, height, width), weight).reshape(-1)

    jacobian = torch.autograd.functional.jacobian(
        flat, torch.zeros(4 * height * width, dtype=DTYPE)
    )
    singular = torch.linalg.svdvals(jacobian).sort().values
    torch.testing.assert_close(singular, expected, atol=1e-10, rtol=0)
    if not training:
        assert (singular - 1).abs().max() < 3e-6
    else:
        assert singular.max() < 1 + 4.75e-3


def test_soc_normaliser_keeps_its_gradient() -> None:
    """L_n is invariant to scaling the filter (sigma is 1-homogeneous), so with the gradient
    through sigma every loss gradient is orthogonal to the filter (Euler's identity)."""
    layer = soc_after_perturbation(3)
    weight, _ = layer.parametrize(True)
    loss = (weight * torch.randn_like(weight)).sum()
    (grad,) = torch.autograd.grad(loss, layer.random_conv_filter)
    ratio = (grad * layer.random_conv_filter).sum() / (
        grad.norm() * layer.random_conv_filter.norm()
    )
    assert grad.norm() > 0 and ratio.abs() < 1e-10


def test_soc_step_counter_runs_fifty_iterations_every_200th_forward() -> None:
    layer = soc_after_perturbation(3)
    assert int(layer.step) == 3
    state = layer.state_dict()
    for step, iterations in [(198, 1), (199, 50)]:
        state["step"] = torch.tensor(step)
        layer.load_state_dict(state)
        start = layer.vectors()
        _, expected = fantastic_four(
            skew_filter(layer.random_conv_filter.detach()), start, iterations
        )
        layer.parametrize(True)
        assert int(layer.step) == step + 1
        for vector, target in zip(layer.vectors(), expected, strict=True):
            torch.testing.assert_close(vector, target, atol=1e-12, rtol=0)


def test_fantastic_four_brackets_the_spectral_norm() -> None:
    torch.manual_seed(0)
    kernel = torch.randn(3, 5, 3, 3, dtype=DTYPE)
    start = tuple(random_unit_vectors(n).to(DTYPE) for n in (15, 15, 45, 5))
    sigmas, _ = fantastic_four(kernel, start, 300)
    exact = torch.stack(
        [torch.linalg.matrix_norm(r, ord=2) for r in fantastic_four_matrices(kernel)]
    )
    assert (sigmas <= exact + 1e-12).all()
    torch.testing.assert_close(sigmas, exact, atol=1e-8, rtol=0)
    circular = spectrum(kernel).max()
    zero_padded = torch.linalg.matrix_norm(zero_padded_conv_matrix(kernel, 6, 7), ord=2)
    assert max(exact[2], exact[3]) <= circular + 1e-12
    assert circular <= 3 * sigmas.min() and zero_padded <= 3 * sigmas.min()
