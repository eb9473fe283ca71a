"""Guaranteed Lipschitz bounds (lipsweep.bounds): never below the exact norm, and close to it.

Exact norms are the largest singular values of full autograd Jacobians (float64) on small
inputs; for CPL and SLL (nonlinear) the max over several points, a lower bound of the true
constant, so "bound >= exact" holds there too. Each layer is also checked with its eval weight
made expansive (scaled behind the cache), where "bound = 1" would be wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipsweep.bounds import layer_bound, model_bound
from lipsweep.layers import LAYERS, METHODS, BjorckLinear, CayleyLinear, norms
from lipsweep.layers.norms import (
    circular_conv_norm,
    conv_matrix,
    same_conv_bound,
    same_conv_gram,
    spectral_norm,
    torus_bound,
)
from lipsweep.layers.padding import circular_same_pad
from lipsweep.layers.soc import series_norm_bound
from lipsweep.model import ConvNet

torch.set_num_threads(1)
# A 1-Lipschitz stage is bounded by 1 times the rounding slack of ``lipsweep.layers.norms``.
ONE = (1 + norms.ROUNDING_SLACK) * (1 + 1e-12)
DTYPE = torch.float64
# (channels, kernel, height, width): H != W, odd and even sizes, a kernel larger than a side.
SHAPES = [(4, 3, 5, 7), (3, 3, 6, 4), (2, 1, 3, 5), (3, 3, 2, 3)]
# Factor applied to the eval weight; CPL/SLL: 3 x their step size; SOC: 6 x its filter, past
# the radius where the 12-term series exceeds 1.
EXPANSIVE = {"cpl": 3.0, "sll": 3.0, "soc": 6.0}


def jacobian_norm(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """sigma_max of d f(x) / dx for one input x (any shape), float64."""
    jacobian = torch.autograd.functional.jacobian(
        lambda z: f(z.view(1, *x.shape)).reshape(-1), x.reshape(-1)
    )
    return torch.linalg.matrix_norm(jacobian, ord=2).item()


def exact_norm(layer: nn.Module, shape: tuple[int, ...], points: int = 3) -> float:
    """Max over random points of the Jacobian norm (the norm itself for an affine layer)."""
    generator = torch.Generator().manual_seed(0)
    return max(
        jacobian_norm(layer, torch.randn(shape, generator=generator, dtype=DTYPE))
        for _ in range(points)
    )


def perturbed(method: str, channels: int, kernel: int) -> nn.Module:
    """An eval-mode layer whose parameters were moved off their (often orthogonal) init."""
    torch.manual_seed(0)
    layer = LAYERS[method](channels, channels, kernel).to(DTYPE)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return layer.eval()


def make_expansive(layer: nn.Module, method: str) -> None:
    """Scale the eval weight behind the cache: the layer then applies the scaled weight."""
    cached, factor = layer.cached_weight, EXPANSIVE.get(method, 2.0)

    def scaled(*size: int):
        weight = cached(*size)
        if method in ("cpl", "sll"):
            return weight[0], factor * weight[1]
        if isinstance(weight, tuple):
            return factor * weight[0], weight[1]
        return factor * weight

    layer.cached_weight = scaled


# Stated factors: bound <= factor * exact. Circular convs (AOL, BCOP, AOC, Cayley, standard) are
# bounded exactly; zero padding (CPL, SLL, SOC) and LOT's crop pay the torus's slack, largest
# on these tiny grids (2 x 3 with k = 3: the torus is twice the image).
FACTOR = {"standard": ONE, "aol": ONE, "bcop": ONE, "aoc": ONE, "cayley": ONE}
# Sandwich (nonlinear): its exact norm here is the max over 3 sampled points' Jacobians, below
# the sup over activation patterns that min(||[A B]||^2, 2 ||A|| ||B||) bounds.
FACTOR["sandwich"] = 1.05


def factor(method: str, kernel: int, height: int, width: int) -> float:
    # k = 1 is bounded exactly; a residual layer's lam - 1 scales lam's slack by lam / (lam - 1).
    exact = 1 + 10 * norms.ROUNDING_SLACK
    return FACTOR.get(method, exact if kernel == 1 else 1 + 1.5 * kernel / min(height, width))


@pytest.mark.parametrize("channels,kernel,height,width", SHAPES)
@pytest.mark.parametrize("method", ["standard", *METHODS])
def test_layer_bound_is_at_least_the_exact_norm_and_close_to_it(
    method: str, channels: int, kernel: int, height: int, width: int
) -> None:
    layer = perturbed(method, channels, kernel)
    shape = (channels, height, width)
    exact, bound = exact_norm(layer, shape), layer_bound(layer, (height, width))
    assert exact <= bound * (1 + 1e-12), f"{method}: bound {bound} < exact {exact}"
    if method != "standard":
        assert bound <= ONE, f"{method}: a 1-Lipschitz layer bounded by {bound}"
    assert bound <= exact * factor(method, kernel, height, width)


@pytest.mark.parametrize("channels,kernel,height,width", SHAPES[:3])
@pytest.mark.parametrize("method", METHODS)
def test_layer_bound_of_an_expansive_eval_weight(
    method: str, channels: int, kernel: int, height: int, width: int
) -> None:
    """The bound follows the weight the layer applies (``EXPANSIVE``; CPL and SLL get biases
    so large that every ReLU is active at the test points: J = I - 3 r K^T K there). SOC's
    series amplifies the torus's slack on rho to the 12th power, and Sandwich's bound
    min(||[2A B]||^2, 4 ||A|| ||B||) is a worst case over ReLU patterns that sampled Jacobians
    (2 here) need not reach, so only >= is checked for them."""
    layer = perturbed(method, channels, kernel)
    if method in ("cpl", "sll"):
        with torch.no_grad():
            layer.bias.fill_(100.0)
    before = layer_bound(layer, (height, width))
    make_expansive(layer, method)
    shape = (channels, height, width)
    exact, bound = exact_norm(layer, shape), layer_bound(layer, (height, width))
    assert exact <= bound * (1 + 1e-12), f"{method}: bound {bound} < exact {exact}"
    assert exact > 1.2 and bound > before * 1.2, f"{method}: {exact}, {bound}, {before}"
    if method not in ("soc", "sandwich"):  # Sandwich: a worst case over ReLU patterns
        assert bound <= exact * factor(method, kernel, height, width) ** 2


@pytest.mark.parametrize("in_features,out_features", [(6, 6), (8, 3), (3, 8)])
def test_dense_bounds_are_exact(in_features: int, out_features: int) -> None:
    torch.manual_seed(0)
    heads = [BjorckLinear(in_features, out_features), nn.Linear(in_features, out_features)]
    if in_features == out_features:
        heads.append(CayleyLinear(in_features, out_features))
    for head in heads:
        head = head.to(DTYPE).eval()
        with torch.no_grad():
            head.weight.add_(torch.randn_like(head.weight))
        exact = exact_norm(head, (in_features,), points=1)
        assert exact <= layer_bound(head) <= exact * ONE
    linear = heads[1]
    with torch.no_grad():
        linear.weight.mul_(3)
    exact = exact_norm(linear, (in_features,), 1)
    assert exact <= layer_bound(linear) <= exact * ONE


# ----------------------------------------------------------------------------- the tools


@pytest.mark.parametrize("kernel", [1, 2, 3, 5])
@pytest.mark.parametrize("height,width", [(5, 7), (6, 4), (2, 3), (1, 1)])
def test_circular_conv_norm_is_exact(kernel: int, height: int, width: int) -> None:
    """Also when the kernel is larger than the image (taps alias onto the torus)."""
    generator = torch.Generator().manual_seed(kernel)
    weight = torch.randn(3, 4, kernel, kernel, generator=generator, dtype=DTYPE)
    exact = jacobian_norm(
        lambda x: F.conv2d(circular_same_pad(x, kernel), weight),
        torch.zeros(4, height, width, dtype=DTYPE),
    )
    assert exact <= circular_conv_norm(weight, height, width).item() <= exact * ONE


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("height,width", [(5, 7), (6, 4), (8, 8), (1, 3)])
def test_zero_padded_conv_bound_is_guaranteed(kernel: int, height: int, width: int) -> None:
    """>= the exact norm of conv2d(x, K, padding=k // 2) (also the extra row of even k): the
    torus bound within 1 + 1.5 k / min(H, W) of it on 5 x 5 and larger images (4.3 on a 1 x 3
    one), the dense one (small maps) exact to its rounding slack."""
    generator = torch.Generator().manual_seed(kernel)
    for out_channels, in_channels in ((3, 3), (2, 4), (4, 2)):
        weight = torch.randn(
            out_channels, in_channels, kernel, kernel, generator=generator
        ).double()
        x = torch.zeros(in_channels, height, width, dtype=DTYPE)
        exact = jacobian_norm(lambda z, w=weight: F.conv2d(z, w, padding=kernel // 2), x)
        torus = torus_bound(weight, height, width).item()
        assert exact <= torus
        slack = 1.5 * kernel / min(height, width) if min(height, width) >= 4 else 4.5
        assert torus <= exact * (1 + slack)
        bound = same_conv_bound(weight, height, width).item()
        assert exact <= bound <= exact * (1 + 1e-7)


def test_dense_gram_matrix_is_the_conv_matrix_gram_within_its_bandwidth() -> None:
    generator = torch.Generator().manual_seed(0)
    for channels, kernel, height, width in ((3, 3, 5, 4), (2, 5, 6, 5), (4, 1, 3, 3)):
        weight = torch.randn(channels, channels, kernel, kernel, generator=generator).double()
        a = conv_matrix(weight, height, width)
        gram, bandwidth = same_conv_gram(weight, height, width)
        torch.testing.assert_close(gram, a.T @ a)
        offsets = torch.arange(len(gram))
        beyond = (offsets[:, None] - offsets[None, :]).abs() > bandwidth
        assert (gram[beyond] == 0).all()
        assert bandwidth < len(gram) - 1 or kernel >= min(height, width)


@pytest.mark.parametrize("shift", [1e-6, -1e-6])
def test_band_cholesky_decides_like_the_dense_one(shift: float) -> None:
    """tau I - G for tau just above / below lambda_max(G): the band factorisation (CPU) and the
    dense one agree, so the band storage holds the whole matrix."""
    weight = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(2)).double()
    gram, bandwidth = same_conv_gram(weight, 6, 7)
    tau = (1 + shift) * torch.linalg.eigvalsh(gram)[-1]
    dense = torch.linalg.cholesky_ex(tau * torch.eye(len(gram), dtype=torch.float64) - gram)
    completes = norms.shifted_cholesky_completes(gram, tau, bandwidth)
    assert completes == (dense[1].item() == 0) == (shift > 0)


def test_dense_bound_survives_a_low_lanczos_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """If Lanczos returns a value below the top eigenvalue, the Cholesky check fails and the
    bound comes from eigvalsh: still >= the exact norm."""
    weight = torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(1)).double()
    exact = torch.linalg.matrix_norm(conv_matrix(weight, 4, 5), 2).item()
    real = norms.largest_eigenpair

    def low(*args: object, **kwargs: object) -> tuple[torch.Tensor, ...]:
        theta, *rest = real(*args, **kwargs)
        return (0.5 * theta, *rest)

    monkeypatch.setattr(norms, "largest_eigenpair", low)
    upper = torus_bound(weight, 4, 5)
    assert exact <= norms.dense_bound(weight, 4, 5, upper).item() <= exact * (1 + 1e-8)


def test_spectral_norm_is_the_largest_singular_value_with_its_slack() -> None:
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.randn(*shape, generator=generator, dtype=DTYPE) for shape in SQUARES]
    matrices.append(torch.randn(3, 4, 4, generator=generator, dtype=torch.complex128))
    for batch in matrices:
        expected = torch.linalg.svdvals(batch)[..., 0]
        ratio = spectral_norm(batch) / expected
        assert (ratio >= 1 + norms.ROUNDING_SLACK - 1e-12).all()
        assert (ratio <= 1 + norms.ROUNDING_SLACK + 1e-12).all()


SQUARES = ((5, 5), (3, 7), (7, 3), (4, 2, 6))


@pytest.mark.parametrize("terms", [5, 12])
@pytest.mark.parametrize("radius", [0.5, 2.1, 3.5, 4.5])
def test_series_norm_bound_brackets_the_series_maximum(terms: int, radius: float) -> None:
    t = torch.linspace(0, radius, 200_001, dtype=DTYPE)
    series = sum((1j * t) ** j / math.factorial(j) for j in range(terms + 1))
    sampled = series.abs().max().item()
    bound = series_norm_bound(terms, radius)
    assert sampled <= bound <= sampled + 1e-5


def test_series_norm_bound_gives_the_soc_radius() -> None:
    """12 terms: <= 1 up to 3.379 (so 0.7 k = 2.1 for k = 3), above 1 at 3.5 (k = 5)."""
    assert series_norm_bound(12, 2.1) <= 1 + 1e-12
    assert series_norm_bound(12, 3.37) <= 1 + 1e-12
    assert series_norm_bound(12, 3.5) > 1 + 1e-4
    assert series_norm_bound(5, 2.1) > 1 + 4e-3  # the training series does exceed 1


# ----------------------------------------------------------------------------- whole models


def tiny_convnet(method: str) -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(method, 4, 3, 10, input_size=8).to(DTYPE).eval()


@pytest.mark.parametrize("method", ["standard", *METHODS])
def test_model_bound_exceeds_the_model_jacobian(method: str) -> None:
    model = tiny_convnet(method)
    if method == "standard":
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(2)
    bound, stages = model_bound(model, (3, 8, 8))
    assert bound == pytest.approx(math.prod(b for _, b in stages), rel=1e-12)
    names = [name for name, _ in stages]
    assert names[:3] == ["pad", "first_conv", "first_act"] and names[-1] == "logits"
    assert "block1.conv4" in names and "block2.unshuffle" in names
    exact = exact_norm(model, (3, 8, 8), points=2)
    assert exact <= bound * (1 + 1e-12)
    if method == "standard":
        assert bound > 10
    else:
        assert bound <= ONE ** len(stages), f"{method}: a 1-Lipschitz model bounded by {bound}"


def test_model_bound_leaves_the_model_alone_and_works_in_training_mode() -> None:
    model = tiny_convnet("cpl").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bound, stages = model_bound(model, (3, 8, 8))
    assert model.training and bound <= ONE ** len(stages)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"


def test_unknown_stages_are_errors() -> None:
    with pytest.raises(TypeError, match="no guaranteed Lipschitz bound"):
        model_bound(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), (4,))
    with pytest.raises(TypeError, match="stride"):
        layer_bound(nn.Conv2d(2, 2, 3, stride=2), (6, 6))
    with pytest.raises(TypeError, match="spatial"):
        layer_bound(LAYERS["aol"](2, 2, 3))


def test_zero_padded_standard_conv_bound() -> None:
    """nn.Conv2d with zero padding (same, explicit, valid): a restriction of a circular conv."""
    torch.manual_seed(0)
    for padding in ("same", 1, 2, "valid"):
        conv = nn.Conv2d(3, 2, 3, padding=padding).double()
        exact = exact_norm(conv, (3, 6, 5), points=1)
        bound = layer_bound(conv, (6, 5))
        assert exact <= bound * (1 + 1e-12) <= exact * 1.5
