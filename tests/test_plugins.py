"""A user's own layer: found by import path or entry point, audited before any sweep or bench
uses it, refused with one line naming the measured norm, compared in a real sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipsweep.audit import GATE_KERNELS, gate_plugins
from lipsweep.errors import InputError
from lipsweep.layers.registry import display_name, method_key, plugin_path, spec
from lipsweep.results.store import read_attempts
from tests.test_cli import run

# The README's example layer, and two that must not pass.
PLUGIN = '''
import torch
import torch.nn.functional as F
from torch import nn


class TapNormConv(nn.Module):
    """A zero-padded conv divided by the sum of its taps' spectral norms: 1-Lipschitz, as the
    conv is a sum over taps t of (a shift, of norm <= 1) x (a channel matrix W_t), so
    ||conv|| <= sum_t ||W_t||_2. It starts as the identity (dirac), where that is tight."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        weight = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(nn.init.dirac_(weight))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = torch.linalg.matrix_norm(self.weight.permute(2, 3, 0, 1), ord=2).sum()
        return F.conv2d(x, self.weight / taps, self.bias, padding=self.weight.shape[-1] // 2)

    def lipschitz_bound(self, input_hw) -> float:
        return 1.0 + 1e-12  # the argument above; 1e-12 covers float64 rounding of the sum


class Scaled(TapNormConv):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * super().forward(x)


class NoBound(TapNormConv):
    lipschitz_bound = None
'''


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "mylayers.py").write_text(PLUGIN)
    # An installed package's entry point, as pip writes it: lipsweep.layers: tapnorm.
    info = folder / "mylayers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylayers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lipsweep.layers]\ntapnorm = mylayers:TapNormConv\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))  # for the CLI's subprocesses and Ray workers
    return folder


def test_plugins_are_import_paths_or_entry_points(plugin_dir: Path) -> None:
    assert method_key("mylayers:TapNormConv") == "mylayers.TapNormConv"
    assert plugin_path("mylayers.TapNormConv") == "mylayers:TapNormConv"
    assert plugin_path("tapnorm") == "mylayers:TapNormConv"  # the entry point
    assert plugin_path("aol") is None and plugin_path("nothing") is None
    assert spec("tapnorm").layer == "mylayers:TapNormConv" and spec("tapnorm").head is None
    assert display_name("mylayers.TapNormConv") == "TapNormConv"
    with pytest.raises(ValueError, match=r"import path such as mypkg\.layers:MyConv"):
        spec("nothing")


def test_the_gate_audits_at_the_models_kernel_sizes(plugin_dir: Path) -> None:
    records = gate_plugins(["aol", "mylayers.TapNormConv"])
    assert list(records) == ["mylayers.TapNormConv"]  # built-ins are audited by the test grid
    record = records["mylayers.TapNormConv"]
    assert record["passed"] and record["class"] == "mylayers:TapNormConv"
    assert sorted(record["checks"]) == sorted(map(str, GATE_KERNELS))
    eval_norms = [c["value"] for c in record["checks"]["3"] if c["name"].startswith("eval")]
    # A real norm, near 1 (the identity at init, then lower as the taps spread).
    assert 0.5 < max(eval_norms) <= 1 + 1e-6
    refusal = r"Scaled is refused by the Lipschitz audit at kernel size 1: train, at init 10 > 1.01"
    with pytest.raises(InputError, match=refusal):
        gate_plugins(["mylayers.Scaled"])
    with pytest.raises(InputError, match="no lipschitz_bound"):
        gate_plugins(["mylayers.NoBound"])


def test_a_failing_layer_is_refused_before_anything_is_written(
    plugin_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    result = run("launch", "--preset", "quickstart", "--methods", "aol,mylayers:Scaled",
                 "--out", str(out))  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused by the Lipschitz audit" in lines[0], result.stderr
    assert not out.exists()
    bench = run("bench", "--methods", "mylayers:Scaled", "--out", str(tmp_path / "bench"))
    assert bench.returncode != 0 and "refused by the Lipschitz audit" in bench.stderr
    assert not (tmp_path / "bench").exists()
    unknown = run(
        "launch", "--preset", "quickstart", "--methods", "mylayers:Missing", "--out", str(out)
    )
    assert unknown.returncode != 0 and "cannot import" in unknown.stderr and not out.exists()


def test_a_plugin_layer_runs_in_a_sweep_beside_a_builtin(plugin_dir: Path, tmp_path: Path) -> None:
    """The whole flow with a user's layer: audit stored, search and final on real Ray, a
    certificate from the layer's own bound, and the ranking lists it."""
    out = tmp_path / "sweep"
    result = run(
        "launch", "--preset", "quickstart", "--methods", "aol,mylayers:TapNormConv",
        "--trials", "1", "--search-epochs", "1", "--final-epochs", "2", "--max-examples", "256",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    audit = json.loads((out / "audit.json").read_text())
    assert list(audit) == ["mylayers.TapNormConv"] and audit["mylayers.TapNormConv"]["passed"]
    attempts = read_attempts(out)
    mine = attempts[attempts["method"] == "mylayers.TapNormConv"]
    assert sorted(mine["stage"]) == ["final", "search"] and set(mine["status"]) == {"completed"}
    final = mine[mine["stage"] == "final"].iloc[0]
    # The model's bound: the layer's own bounds (1 + 1e-12 each) times 1-Lipschitz stages.
    assert 0.99 < final["lipschitz_bound"] <= (1 + 1e-12) ** 20
    assert final["certified_lipschitz"] == pytest.approx(max(1.0, final["lipschitz_bound"]))
    assert 0 <= final["cra_36"] <= final["accuracy"] <= 1
    assert "TapNormConv" in result.stdout  # the ranking names it
