"""torch.compile of every layer gives the eager result (slow: inductor compiles C++)."""

from __future__ import annotations

import pytest
import torch

from lipsweep.layers import LAYERS


@pytest.mark.slow
@pytest.mark.parametrize("method", list(LAYERS))
def test_compiled_layer_matches_eager(method: str) -> None:
    # Every layer shares CachedParametrization.forward: without a reset, dynamo's recompile
    # limit would silently fall back to eager for the later methods.
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    torch.manual_seed(0)
    layer = LAYERS[method](4, 4, 3)
    x = torch.randn(2, 4, 8, 8)
    compiled = torch.compile(layer)
    for mode in (True, False):
        layer.train(mode)
        with torch.no_grad():
            expected = layer(x)
            torch.testing.assert_close(compiled(x), expected, atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    layer.train()
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)
