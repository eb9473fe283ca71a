"""The paper's ConvNet: exact parameter counts, structure, shapes, and whole-model Lipschitzness
measured by the exact Jacobian (float64) for every 1-Lipschitz method."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipsweep.data import DATASETS
from lipsweep.layers import LAYERS, LINEAR_HEADS, METHODS, MaxMin, StandardConv2d
from lipsweep.model import (
    SIZES,
    ConvNet,
    blocks_for_input,
    build_model,
    count_parameters,
    lipschitz_layers,
    stages,
)
from tests.layers.lipschitz_check import adversarial_steps, largest_singular_value
from tests.layers.test_lipschitz import TOLERANCE

# (dataset, size, exact standard-conv count, the paper's Table 7 figure in millions)
PAPER_COUNTS = [
    ("cifar10", "XS", 1_572_288, 1.57),
    ("cifar10", "S", 6_283_136, 6.28),
    ("cifar10", "M", 25_120_512, 25.12),
    ("cifar10", "L", 100_457_984, 100.46),
    ("tiny-imagenet", "XS", 1_575_008, 1.58),
    ("tiny-imagenet", "S", 6_293_952, 6.29),
    ("tiny-imagenet", "M", 25_163_648, 25.16),
    ("tiny-imagenet", "L", 100_630_272, 100.63),
]
TINY = {"base_width": 4, "num_blocks": 3, "num_classes": 32, "in_channels": 3, "input_size": 8}
TINY_SHAPE = (3, 8, 8)


def tiny_model(method: str, seed: int = 0) -> ConvNet:
    """A width-4, 3-block model on 8 x 8 inputs in float64."""
    torch.manual_seed(seed)
    return ConvNet(method, **TINY).double()


def orthogonal_standard_model(scale: float = 1.0) -> ConvNet:
    """Standard convs with a random orthogonal centre tap and nothing else: each conv is an
    orthogonal map (times ``scale``), so the model is exactly ``scale``^depth-bounded."""
    model = tiny_model("standard")
    generator = torch.Generator().manual_seed(1)
    for _, layer in lipschitz_layers(model):
        out_channels, _, k, _ = layer.weight.shape
        q, _ = torch.linalg.qr(torch.randn(out_channels, out_channels, generator=generator))
        with torch.no_grad():
            layer.weight.zero_()
            layer.weight[:, :, k // 2, k // 2] = scale * q.double()
    return model


@pytest.mark.parametrize("dataset,size,exact,millions", PAPER_COUNTS)
def test_standard_parameter_counts_equal_the_paper(
    dataset: str, size: str, exact: int, millions: float
) -> None:
    count = count_parameters("standard", size, dataset)
    assert count == exact
    assert round(count / 1e6, 2) == millions


def test_xs_count_matches_the_hand_derivation() -> None:
    """PAPER.md Sec. 1: 272 + 5 (16^2 9 + 16) + ... + (512^2 + 512)."""
    blocks = sum(5 * (c * c * 9 + c) for c in (16, 32, 64, 128)) + 5 * (256**2 + 256)
    assert 272 + blocks + 512**2 + 512 == count_parameters("standard", "XS", "cifar10")


def test_counting_allocates_nothing() -> None:
    with torch.device("meta"):
        model = build_model("standard", "L", "cifar10")
    assert all(p.is_meta for p in model.parameters())


def test_blocks_for_input() -> None:
    assert [blocks_for_input(s) for s in (8, 32, 64)] == [3, 5, 6]
    for bad in (0, 1, 24, 48):
        with pytest.raises(ValueError):
            blocks_for_input(bad)


def test_sizes_and_widths() -> None:
    assert SIZES == {"XS": 16, "S": 32, "M": 64, "L": 128}
    with torch.device("meta"):
        for size, width in SIZES.items():
            cifar = build_model("standard", size, "cifar10")
            tiny = build_model("standard", size, "tiny-imagenet")
            digits = build_model("standard", size, "digits")
            assert (cifar.base_width, cifar.num_blocks) == (width, 5)
            assert (tiny.base_width, tiny.num_blocks) == (width // 2, 6)
            assert (digits.base_width, digits.num_blocks) == (width, 3)


def test_paper_structure() -> None:
    """27 convs (1 first + 25 in blocks + 1 head), 26 MaxMin, k = 1 in the last block."""
    model = build_model("standard", "XS", "cifar10")
    convs = lipschitz_layers(model)
    assert len(convs) == 27
    assert sum(isinstance(stage, MaxMin) for _, stage in stages(model)) == 26
    kernels = [layer.kernel_size[0] for _, layer in convs]
    assert kernels == [1] + [3] * 20 + [1] * 5 + [1]
    widths = [layer.in_channels for _, layer in convs]
    assert widths == [16] + [c for c in (16, 32, 64, 128, 256) for _ in range(5)] + [512]
    assert [name for name, _ in stages(model)][-3:] == ["head.conv", "head.flatten", "logits"]


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_standard_model_shapes_per_dataset(dataset: str) -> None:
    info = DATASETS[dataset]
    model = build_model("standard", "XS", dataset)
    x = torch.randn(2, info.channels, info.image_size, info.image_size)
    assert model(x).shape == (2, info.num_classes)
    assert model.input_shape == (info.channels, info.image_size, info.image_size)


@pytest.mark.parametrize("method", list(LAYERS))
def test_every_method_builds_a_working_tiny_model(method: str) -> None:
    model = tiny_model(method)
    x = torch.randn(2, *TINY_SHAPE, dtype=torch.float64)
    for mode in (True, False):
        model.train(mode)
        logits = model(x)
        assert logits.shape == (2, TINY["num_classes"]) and torch.isfinite(logits).all()
    head = model.head
    if method in LINEAR_HEADS:
        assert isinstance(head.linear, LINEAR_HEADS[method])
    else:
        assert isinstance(head.conv, LAYERS[method])


def test_method_extras_follow_the_paper() -> None:
    """AOL: orthogonal init for the first conv and head, Dirac in blocks; CPL: told the
    resolution each layer sees."""
    aol = tiny_model("aol")
    dirac = torch.zeros_like(aol.block0.conv0.weight)
    nn.init.dirac_(dirac)
    assert torch.equal(aol.block0.conv0.weight, dirac)
    first = aol.first_conv.weight.flatten(1)
    torch.testing.assert_close(
        first @ first.T, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0
    )
    cpl = tiny_model("cpl")
    sizes = [layer.input_size for _, layer in lipschitz_layers(cpl)]
    assert sizes == [8] + [8] * 5 + [4] * 5 + [2] * 5 + [1]


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError):
        ConvNet("standard", 4, 3, 33, input_size=8)  # more classes than the head's width
    with pytest.raises(ValueError):
        ConvNet("standard", 2, 3, 10, in_channels=3, input_size=8)  # width < input channels
    with pytest.raises(ValueError):
        ConvNet("standard", 4, 4, 10, input_size=8)  # 8 x 8 cannot be halved 4 times
    with pytest.raises(ValueError):
        build_model("nope", "XS", "cifar10")


def model_tolerance(method: str, model: nn.Module) -> float:
    """The per-layer eval tolerance of test_lipschitz.py, compounded over the model's layers."""
    return (1 + TOLERANCE[method][1]) ** len(lipschitz_layers(model)) - 1


@pytest.mark.parametrize("method", METHODS)
def test_whole_model_jacobian_is_bounded(method: str) -> None:
    """sigma_max of the exact model Jacobian <= 1 + tol in eval mode, at initialisation and
    after train-mode optimizer steps that try to make the model expansive."""
    model = tiny_model(method)
    tolerance = model_tolerance(method, model)
    for when in ("at init", "after adversarial steps"):
        if when != "at init":
            adversarial_steps(model, TINY_SHAPE, steps=10)
        model.eval()
        sigma, _ = largest_singular_value(model, TINY_SHAPE)
        assert sigma <= 1 + tolerance, f"{method} {when}: sigma_max {sigma}"


def test_jacobian_check_passes_exactly_orthogonal_and_fails_expansive_standard_models() -> None:
    """The measurement can fail: the same check catches standard convs scaled by 2."""
    sigma, _ = largest_singular_value(orthogonal_standard_model().eval(), TINY_SHAPE)
    assert sigma <= 1 + 1e-9
    sigma, _ = largest_singular_value(orthogonal_standard_model(2.0).eval(), TINY_SHAPE)
    assert sigma > 1.5
    assert not math.isclose(sigma, 1.0)


def test_stages_flatten_blocks_in_execution_order() -> None:
    model = tiny_model("standard")
    x = torch.randn(2, *TINY_SHAPE, dtype=torch.float64)
    y = x
    for _, stage in stages(model):
        y = stage(y)
    torch.testing.assert_close(y, model(x))
    assert all(isinstance(layer, StandardConv2d) for _, layer in lipschitz_layers(model))
