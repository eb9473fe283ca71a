"""Method-specific checks of the FFT-domain layers (Cayley, LOT, BRO) and their numerics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lipsweep.layers.bro import BROConv2d, block_reflector
from lipsweep.layers.cayley import CayleyConv2d, CayleyLinear, fft_conv2d
from lipsweep.layers.lot import LOTConv2d, orthogonalize
from lipsweep.layers.numerics import (
    cayley_transform,
    kernel_spectrum,
    map_rfft_grid,
    spectral_matmul,
)
from tests.layers.lipschitz_check import jacobian_singular_values

SIZES = [(8, 8), (5, 7), (6, 9)]


def sgd_step(layer: torch.nn.Module, size: tuple[int, int] = (6, 6), lr: float = 0.1) -> None:
    """One SGD step (train mode) on a regression loss that moves every parameter."""
    layer.train()
    dtype = layer.weight.dtype
    channels = layer.weight.shape[0]  # square layers (BRO: shape[1] is its rank)
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr)
    x = torch.randn(4, channels, *size, dtype=dtype)
    (layer(x) - torch.randn_like(x)).square().sum().backward()
    optimizer.step()


def circular_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-correlation with circular 'same' padding, valid for kernels larger than the image:
    the image is tiled 3 x 3 first, so the wrap-around padding never exceeds it."""
    height, width = x.shape[-2:]
    s = (weight.shape[-1] - 1) // 2
    tiled = F.pad(x.repeat(1, 1, 3, 3), (s, s, s, s), mode="circular")
    return F.conv2d(tiled, weight)[..., :height, :width]


@pytest.mark.parametrize("kernel", [1, 3, 4, 5])
@pytest.mark.parametrize("size", SIZES)
def test_kernel_spectrum_is_shifted_conjugate_fft(kernel: int, size: tuple[int, int]) -> None:
    weight = torch.randn(3, 2, kernel, kernel, dtype=torch.float64)
    height, width = size
    s = (kernel - 1) // 2
    u = torch.arange(height, dtype=torch.float64)[:, None] / height
    v = torch.arange(width, dtype=torch.float64)[None, :] / width
    shift = torch.exp(-2j * torch.pi * s * (u + v))
    full = (shift * torch.fft.fft2(weight, s=size).conj()).permute(2, 3, 0, 1)
    half = (shift[:, : width // 2 + 1] * torch.fft.rfft2(weight, s=size).conj()).permute(2, 3, 0, 1)
    torch.testing.assert_close(kernel_spectrum(weight, height, width, onesided=False), full)
    torch.testing.assert_close(kernel_spectrum(weight, height, width, onesided=True), half)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("size", [*SIZES, (1, 1), (2, 3), (16, 4)])
def test_fft_conv_equals_circular_conv2d(kernel: int, size: tuple[int, int]) -> None:
    """T5: the FFT path with the un-Cayley'd spectrum is exactly the circular convolution,
    including kernels larger than the image (aliased taps)."""
    weight = torch.randn(3, 2, kernel, kernel, dtype=torch.float64)
    x = torch.randn(2, 2, *size, dtype=torch.float64)
    spectrum = kernel_spectrum(weight, *size, onesided=True)
    torch.testing.assert_close(fft_conv2d(x, spectrum), circular_conv(x, weight))


@pytest.mark.parametrize("training", [True, False])
def test_cayley_1x1_equals_explicit_orthogonal_conv(training: bool) -> None:
    """For k = 1 every frequency holds the same real matrix, the Cayley transform of the
    scaled 1x1 kernel: the layer is that orthogonal 1x1 convolution."""
    torch.manual_seed(0)
    layer = CayleyConv2d(5, 5, 1).double()
    sgd_step(layer)
    layer.train(training)
    q = cayley_transform(layer.alpha * layer.weight[:, :, 0, 0] / layer.weight.norm()).detach()
    torch.testing.assert_close(q.T @ q, torch.eye(5, dtype=torch.float64))
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    expected = F.conv2d(x, q[:, :, None, None], layer.bias.detach())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("size", [(5, 7), (6, 4), (1, 1), (2, 2)])
def test_cayley_is_orthogonal(training: bool, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = CayleyConv2d(3, 3, 3).double()
    sgd_step(layer)
    layer.train(training)
    values = jacobian_singular_values(layer, torch.randn(3, *size, dtype=torch.float64))
    torch.testing.assert_close(values, torch.ones_like(values), atol=1e-10, rtol=0)


def test_cayley_alpha_is_trained() -> None:
    """alpha exists from __init__ (so the optimizer holds it), gets a gradient and moves."""
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 4, 3).double()
    assert any(p is layer.alpha for p in layer.parameters())
    torch.testing.assert_close(layer.alpha, layer.weight.norm().detach())
    before = layer.alpha.detach().clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(4, 4, 8, 8, dtype=torch.float64)
    (layer(x) - torch.randn_like(x)).square().sum().backward()
    assert layer.alpha.grad is not None and layer.alpha.grad.abs() > 0
    optimizer.step()
    assert not torch.equal(layer.alpha.detach(), before)


def test_cayley_linear_is_orthogonal_and_trains_alpha() -> None:
    torch.manual_seed(0)
    layer = CayleyLinear(6, 6).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    (layer(x) - torch.randn_like(x)).square().sum().backward()
    assert layer.alpha.grad is not None and layer.alpha.grad.abs() > 0
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    for training in (True, False):
        layer.train(training)
        q = layer.parametrize(training).detach()
        torch.testing.assert_close(q.T @ q, torch.eye(6, dtype=torch.float64))
        with torch.no_grad():
            torch.testing.assert_close(layer(x), x @ q.T + layer.bias)


@pytest.mark.parametrize("kernel", [1, 3])
def test_lot_identity_init_is_the_identity(kernel: int) -> None:
    """Dirac init: V(f) = I, so W_orth = I up to the 1e-4 regulariser's 5e-5 shrinkage."""
    layer = LOTConv2d(6, 6, kernel).double()
    for training in (True, False):
        layer.train(training)
        for size in [(8, 8), (5, 7)]:
            x = torch.randn(2, 6, *size, dtype=torch.float64)
            with torch.no_grad():
                torch.testing.assert_close(layer(x), x, atol=1e-4, rtol=1e-4)


def conditioned_1x1_kernel(singular_values: list[float]) -> torch.Tensor:
    """A random 1x1 kernel (C, C, 1, 1) with the given singular values."""
    size = len(singular_values)
    left, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))
    matrix = left @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ right
    return matrix[:, :, None, None]


@pytest.mark.parametrize("training", [True, False])
def test_lot_1x1_is_orthogonal(training: bool) -> None:
    """Without padding LOT is orthogonal (all singular values 1) up to the 1e-4 regulariser
    and the truncated Newton-Schulz iteration, for a kernel of condition number ~7."""
    torch.manual_seed(0)
    layer = LOTConv2d(4, 4, 1).double().train(training)
    with torch.no_grad():
        layer.weight.copy_(conditioned_1x1_kernel([2.0, 1.0, 0.5, 0.3]))
    values = jacobian_singular_values(layer, torch.randn(4, 5, 7, dtype=torch.float64))
    assert values.max() <= 1 + 1e-10
    assert values.min() >= 1 - 1e-3


@pytest.mark.parametrize("training", [True, False])
def test_lot_unconverged_directions_shrink(training: bool) -> None:
    """10 Newton-Schulz steps do not converge on a near-singular kernel: that direction's
    singular value stays below 1 (a loss of orthogonality, never of the Lipschitz bound)."""
    torch.manual_seed(0)
    layer = LOTConv2d(4, 4, 1).double().train(training)
    with torch.no_grad():
        layer.weight.copy_(conditioned_1x1_kernel([1.0, 1.0, 1.0, 1e-3]))
    values = jacobian_singular_values(layer, torch.randn(4, 5, 7, dtype=torch.float64))
    assert values.max() <= 1 + 1e-10
    assert values.min() < 0.5


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls", [LOTConv2d, BROConv2d])
def test_padded_fft_3x3_is_bounded_on_odd_sizes(cls: type, training: bool) -> None:
    torch.manual_seed(0)
    layer = cls(4, 4, 3).double()
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))
    sgd_step(layer, size=(5, 7))
    layer.train(training)
    values = jacobian_singular_values(layer, torch.randn(4, 5, 7, dtype=torch.float64))
    assert values.max() <= 1 + 1e-10


def test_block_reflector_is_hermitian_with_eigenvalues_in_the_unit_interval() -> None:
    """W = I - 2 V (V^H V + eps I)^{-1} V^H: Hermitian, eigenvalues 1 - 2 s^2 / (s^2 + eps),
    so r of them just above -1 (one per singular value s of V) and c - r exactly 1."""
    torch.manual_seed(0)
    v = torch.randn(5, 8, 3, dtype=torch.complex128)
    v[0, :, 2] *= 1e-4  # a near-singular V: its direction reflects less than fully
    w = block_reflector(v)
    torch.testing.assert_close(w, w.mH, atol=1e-12, rtol=0)
    eigenvalues = torch.linalg.eigvalsh(w)
    assert eigenvalues.min() >= -1 - 1e-12 and eigenvalues.max() <= 1 + 1e-12
    torch.testing.assert_close(eigenvalues[1:, 3:], torch.ones(4, 5, dtype=torch.float64))
    assert (eigenvalues[1:, :3] < -1 + 1e-4).all()  # full rank: orthogonal up to eps
    assert eigenvalues[0, :3].max() > -0.99  # s^2 ~ eps: a partial reflection


@pytest.mark.parametrize("kernel", [1, 3])
def test_bro_starts_as_a_reflection_and_zero_v_is_the_identity(kernel: int) -> None:
    """V = [I_r; 0] at the centre tap reflects the first r = c // 2 channels; V = 0 (where
    eps would be 0 but for its floor) leaves every channel alone."""
    layer = BROConv2d(6, 6, kernel).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    sign = torch.tensor([-1.0] * 3 + [1.0] * 3, dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), sign * x, atol=1e-4, rtol=0)
        layer.weight.zero_()
        for training in (True, False):
            torch.testing.assert_close(layer.train(training)(x), x, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 5\]"):
        BROConv2d(6, 6, kernel, rank=6)


@pytest.mark.parametrize("cls", [CayleyConv2d, LOTConv2d, BROConv2d])
def test_eval_weight_is_float64_materialisation_cast(cls: type[torch.nn.Module]) -> None:
    """A float32 layer's cached eval weight is the float64 computation cast to complex64."""
    torch.manual_seed(0)
    layer = cls(4, 4, 3)
    sgd_step(layer)
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(1, 4, 5, 7))
    cached = layer.cached_weight(5, 7)
    assert cached.dtype == torch.complex64
    reference = copy.deepcopy(layer).double().parametrize(False, 5, 7)
    assert torch.equal(cached, reference.to(torch.complex64))


def test_cayley_linear_eval_weight_is_float64_materialisation_cast() -> None:
    torch.manual_seed(0)
    layer = CayleyLinear(8, 8).eval()
    reference = copy.deepcopy(layer).double().parametrize(False)
    assert torch.equal(layer.cached_weight(), reference.float())


@pytest.mark.parametrize("cls", [CayleyConv2d, LOTConv2d, BROConv2d])
def test_eval_cache_holds_one_weight_per_size(cls: type[torch.nn.Module]) -> None:
    """Alternating input sizes in eval gives the right answer for each, from the cache."""
    torch.manual_seed(0)
    layer = cls(4, 4, 3).double()
    sgd_step(layer)
    inputs = {size: torch.randn(2, 4, *size, dtype=torch.float64) for size in [(8, 8), (5, 7)]}
    with torch.no_grad():
        expected = {size: layer(x) for size, x in inputs.items()}  # train mode: no cache
        layer.eval()
        for _ in range(2):
            for size, x in inputs.items():
                torch.testing.assert_close(layer(x), expected[size])
    first = layer.cached_weight(8, 8)
    layer(inputs[(5, 7)])
    assert layer.cached_weight(8, 8) is first
    assert first.shape[:2] == (
        (8, 5) if cls is CayleyConv2d else (10, 6)
    )  # rfft grids (LOT, BRO: padded)


@pytest.mark.parametrize("size", [(6, 4), (5, 7), (8, 9), (1, 2)])
def test_map_rfft_grid_equals_the_map_at_every_frequency(size: tuple[int, int]) -> None:
    """Skipping the conjugate frequencies of the rfft grid changes nothing: the skipped
    matrices are the conjugates of computed ones, for odd and even sizes alike."""
    height, width = size
    weight = torch.randn(3, 3, 3, 3, dtype=torch.float64)
    spectrum = kernel_spectrum(weight, height, width, onesided=True)
    for function in (cayley_transform, orthogonalize):
        expected = function(spectrum)
        torch.testing.assert_close(map_rfft_grid(function, spectrum, width), expected)


def test_spectral_matmul_equals_einsum_forward_and_backward() -> None:
    torch.manual_seed(0)
    weight = torch.randn(5, 4, 3, 2, dtype=torch.complex128, requires_grad=True)
    x_hat = torch.randn(6, 2, 5, 4, dtype=torch.complex128, requires_grad=True)
    upstream = torch.randn(6, 3, 5, 4, dtype=torch.complex128)
    ours = spectral_matmul(weight, x_hat)
    reference = torch.einsum("uvoi,biuv->bouv", weight, x_hat)
    torch.testing.assert_close(ours, reference)
    ours_grads = torch.autograd.grad(ours, (weight, x_hat), upstream)
    reference_grads = torch.autograd.grad(reference, (weight, x_hat), upstream)
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_cayley_transform_of_a_batch_of_wide_matrices() -> None:
    """Cayley S/M/L have 256+ channels at 4 x 4 and 2 x 2: batches of 256 x 256 and larger,
    which torch 2.13's CPU ``linalg.inv`` cannot invert in one call."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 256, 256, generator=generator, dtype=torch.complex128)
    q = cayley_transform(weight / weight.abs().square().sum().sqrt())
    eye = torch.eye(256, dtype=torch.complex128).expand(3, 256, 256)
    torch.testing.assert_close(q @ q.mH, eye, atol=1e-10, rtol=0)


def test_bro_reflector_of_wide_layers_solves_on_the_cpu() -> None:
    """Rank 256 (M's widest blocks): torch 2.13's batched CPU LU fails from n = 256 ("Pivots
    given to lu_solve must all be greater or equal to 1"); the solve goes matrix by matrix."""
    torch.manual_seed(0)
    v = torch.randn(3, 512, 256, dtype=torch.complex128)
    w = block_reflector(v)
    assert torch.allclose(w, w.mH)
    assert torch.linalg.eigvalsh(w).abs().max() <= 1 + 1e-9
