"""Contract of every registered layer: shapes, dtypes, eager state, eval cache, gradients."""

from __future__ import annotations

import pytest
import torch

from lipsweep.layers import LAYERS

ALL = list(LAYERS)


def build(method: str, channels: int = 4, kernel: int = 3, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return LAYERS[method](channels, channels, kernel).to(dtype)


def step(layer: torch.nn.Module, dtype=torch.float64) -> None:
    """One SGD step on a loss that moves every parameter."""
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.train()
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    loss = (layer(x) - torch.randn_like(x)).square().sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ALL)
def test_shape_preserved_for_any_input_size(method: str, dtype: torch.dtype) -> None:
    layer = build(method, dtype=dtype)
    for height, width in [(8, 8), (5, 7), (1, 1), (16, 4)]:
        x = torch.randn(3, 4, height, width, dtype=dtype)
        for mode in (True, False):
            layer.train(mode)
            y = layer(x)
            assert y.shape == x.shape and y.dtype == dtype, (method, height, width, mode)
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("method", ALL)
def test_all_state_is_created_in_init(method: str) -> None:
    layer = build(method)
    names_before = {k: v.shape for k, v in layer.state_dict().items()}
    params_before = [id(p) for p in layer.parameters()]
    for mode in (True, False):
        layer.train(mode)
        layer(torch.randn(2, 4, 8, 8, dtype=torch.float64))
        layer(torch.randn(2, 4, 6, 5, dtype=torch.float64))
    assert {k: v.shape for k, v in layer.state_dict().items()} == names_before
    assert [id(p) for p in layer.parameters()] == params_before


@pytest.mark.parametrize("method", ALL)
def test_eval_output_equals_fresh_layer_loaded_from_state_dict(method: str) -> None:
    layer = build(method)
    step(layer)
    layer.eval()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        first = layer(x)
        fresh = build(method)
        fresh.load_state_dict(layer.state_dict())
        fresh.eval()
        torch.testing.assert_close(first, fresh(x))


@pytest.mark.parametrize("method", ALL)
def test_optimizer_step_in_eval_mode_refreshes_the_cache(method: str) -> None:
    """A step taken while the layer stays in eval() (no train() call) must not leave a stale
    cached weight: the reference BCOP bug."""
    layer = build(method)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    layer.train()
    loss = (layer(x) - torch.randn_like(x)).square().sum()
    loss.backward()
    layer.eval()
    with torch.no_grad():
        before = layer(x)
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    with torch.no_grad():
        after = layer(x)
        fresh = build(method)
        fresh.load_state_dict(layer.state_dict())
        fresh.eval()
        expected = fresh(x)
    assert not torch.allclose(before, after), "eval output did not change after a step"
    torch.testing.assert_close(after, expected)


@pytest.mark.parametrize("method", ALL)
def test_load_state_dict_and_dtype_move_refresh_the_cache(method: str) -> None:
    layer = build(method)
    other = build(method)
    step(other)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    layer.eval()
    with torch.no_grad():
        layer(x)  # fill the cache
        layer.load_state_dict(other.state_dict())
        other.eval()
        torch.testing.assert_close(layer(x), other(x))
        layer.float()
        y32 = layer(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), other(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ALL)
def test_gradient_reaches_every_trainable_parameter(method: str) -> None:
    layer = build(method)
    layer.train()
    x = torch.randn(4, 4, 8, 8, dtype=torch.float64)
    (layer(x) - torch.randn_like(x)).square().sum().backward()
    for name, parameter in layer.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{method}.{name} got no gradient"
            assert parameter.grad.abs().sum() > 0, f"{method}.{name} has a zero gradient"


@pytest.mark.gpu
@pytest.mark.parametrize("method", ALL)
def test_runs_on_cuda(method: str) -> None:
    layer = build(method, dtype=torch.float32).cuda()
    x = torch.randn(2, 4, 8, 8, device="cuda")
    for mode in (True, False):
        layer.train(mode)
        assert layer(x).shape == x.shape


@pytest.mark.parametrize("method", [m for m in ALL if m != "standard"])
def test_cached_weight_stays_1_lipschitz_when_edited_behind_the_cache(method: str) -> None:
    """``.data`` writes bypass the version counter: the cache may then be out of date, but it
    must be a self-consistent snapshot (CPL/SLL: the scale and the kernel it belongs to)."""
    from tests.layers.lipschitz_check import largest_singular_value
    from tests.layers.test_lipschitz import TOLERANCE

    layer = build(method)
    layer.eval()
    layer(torch.randn(1, 4, 8, 8, dtype=torch.float64))  # fill the cache
    for parameter in layer.parameters():
        parameter.data.mul_(3)
    sigma, _ = largest_singular_value(layer, (4, 8, 8))
    assert sigma <= 1 + TOLERANCE[method][1], f"{method}: stale cache gives sigma {sigma}"
    layer.clear_cache()
    sigma, _ = largest_singular_value(layer, (4, 8, 8))
    assert sigma <= 1 + TOLERANCE[method][1]
