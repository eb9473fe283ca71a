"""`lipsweep audit`: every registered layer passes; an expansive or stale-cached user layer is
refused with a one-line error naming the measured norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from lipsweep.audit import audit_layer, layer_class
from lipsweep.cli import app
from lipsweep.errors import InputError
from lipsweep.layers import METHODS

torch.set_num_threads(1)


class DoubleConv(nn.Module):
    """A user's layer that is not 1-Lipschitz: a conv normalised to norm 2 (Frobenius bound)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = 2 * self.weight / self.weight.norm()
        return F.conv2d(x, weight, padding=self.weight.shape[-1] // 2)


class StaleCache(nn.Module):
    """1-Lipschitz when fresh, but its eval weight is cached for good: in-place parameter
    changes (an optimiser step, a loaded state) never reach it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.cached: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight / self.weight.norm()  # Frobenius >= spectral: 1-Lipschitz
        if not self.training:
            if self.cached is None:
                self.cached = weight.detach()
            weight = self.cached
        return F.conv2d(x, weight, padding=self.weight.shape[-1] // 2)


@pytest.mark.parametrize("method", METHODS)
def test_every_registered_layer_passes(method: str) -> None:
    checks = audit_layer(layer_class(method))
    assert all(check.passed for check in checks), [c for c in checks if not c.passed]
    assert any(c.name == "measured - guaranteed bound" for c in checks)


def test_an_expansive_user_layer_is_refused_naming_its_norm() -> None:
    result = CliRunner().invoke(app, ["audit", f"{__name__}:DoubleConv"])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "not 1-Lipschitz" in error[0] and "eval, at init" in error[0]
    checks = {c.name: c for c in audit_layer(DoubleConv)}
    assert 1.5 < checks["eval, at init"].value <= 2 + 1e-9  # measured, not assumed


def test_a_stale_eval_cache_is_caught() -> None:
    checks = {c.name: c for c in audit_layer(StaleCache)}
    assert checks["eval, at init"].passed
    assert not checks["eval cache follows in-place changes"].passed


def test_bad_import_paths_are_one_line_errors() -> None:
    with pytest.raises(InputError, match="cannot import"):
        layer_class("no_such_package.layers:Conv")
    with pytest.raises(InputError, match="import path"):
        layer_class("nonsense")
    result = CliRunner().invoke(app, ["audit", "no_such_package.layers:Conv"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
