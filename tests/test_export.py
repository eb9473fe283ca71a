"""Export (lipsweep.export, `lipsweep export`): plain models equal to the trained ones, with the
same guaranteed bound, that run with torch alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lipsweep import load_exported
from lipsweep.attempt import TrialSpec, run_attempt
from lipsweep.bounds import model_bound
from lipsweep.config import SweepConfig
from lipsweep.export import export_checkpoint, freeze
from lipsweep.layers.fixed import ResidualStep, SandwichStep, SkewSeries, SpectralConv
from lipsweep.layers.registry import SPECS
from lipsweep.loss import offset_cross_entropy
from lipsweep.model import ConvNet, build_model
from lipsweep.names import CHECKPOINT, Cell, TrialId
from lipsweep.results import write_attempt
from tests.analysis.conftest import history_rows, row_of
from tests.test_cli import run as run_cli

METHODS = list(SPECS)  # the standard conv and every 1-Lipschitz method
FIXED_FORM = {"cayley": SpectralConv, "lot": SpectralConv, "bro": SpectralConv, "sandwich": SandwichStep,
              "cpl": ResidualStep, "sll": ResidualStep, "soc": SkewSeries}  # fmt: skip
COMPLEX = {"cayley", "lot", "bro", "sandwich"}  # per-frequency matrices: no ONNX


def trained(method: str, steps: int = 3) -> ConvNet:
    """A digits XS model after a few SGD steps (parameters and buffers moved off their
    initial values, as training leaves them), in eval mode."""
    torch.manual_seed(0)
    model = build_model(method, "XS", "digits").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        offset_cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def save_checkpoint(model: ConvNet, path: Path) -> Path:
    """The two keys of an attempt's checkpoint that ``load_checkpoint`` reads."""
    config = {"method": model.method, "size": "XS", "dataset": "digits"}
    torch.save({"model": model.state_dict(), "model_config": config}, path)
    return path


def float32_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding of a forward pass (relative to the logits' scale)."""
    return bool((a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("method", METHODS)
def test_frozen_model_computes_the_same_logits_with_the_same_bound(method: str) -> None:
    model = trained(method)
    frozen = freeze(model)
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(frozen(x), model(x))  # the same functions on the same weights
    assert not any(p.requires_grad for p in frozen.parameters())  # fixed: nothing to train
    kinds = {type(m) for m in frozen.modules()}
    if method in FIXED_FORM:
        assert FIXED_FORM[method] in kinds
    else:  # one plain conv per layer (AOL, BCOP, standard)
        assert torch.nn.Conv2d in kinds
    # Same guaranteed bound (up to float64 rounding: the grids are copies of the cached ones).
    original, _ = model_bound(model, model.input_shape)
    exported, stages = model_bound(frozen, model.input_shape)
    assert exported == pytest.approx(original, rel=1e-12)
    assert len(stages) == len(model_bound(model, model.input_shape)[1])


# Every method in the slow suite (~50 s); the default suite exports one of each fixed form.
FAST_EXPORTS = ["aol", "cpl", "soc", "lot", "sandwich"]


@pytest.mark.parametrize(
    "methods", [FAST_EXPORTS, pytest.param(METHODS, marks=pytest.mark.slow)], ids=["some", "all"]
)
def test_exported_programs_run_with_torch_alone_and_equal_the_trained_models(
    tmp_path: Path, methods: list[str]
) -> None:
    x = torch.rand(5, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    expected, bounds = {}, {}
    for method in methods:
        model = trained(method)
        record = export_checkpoint(save_checkpoint(model, tmp_path / f"{method}.pt"),
                                   tmp_path / f"{method}.pt2")  # fmt: skip
        with torch.no_grad():
            expected[method] = model(x)
        bounds[method] = model_bound(model, model.input_shape)[0]
        assert record["lipschitz_bound"] == pytest.approx(bounds[method], rel=1e-12)
        assert (
            load_exported(tmp_path / f"{method}.pt2").lipschitz_bound == record["lipschitz_bound"]
        )
    # A fresh interpreter that never imports lipsweep: torch.export.load and the module.
    script = f"""
import json, sys, torch
x = torch.load("x.pt")
out = {{}}
for method in {methods!r}:
    extra = {{"lipsweep.json": ""}}
    module = torch.export.load(method + ".pt2", extra_files=extra).module()
    with torch.no_grad():
        assert module(x[:1]).shape == (1, 10)  # any batch size, not only the traced one
        torch.save(module(x), method + ".out")
    out[method] = json.loads(extra["lipsweep.json"])["lipschitz_bound"]
assert not [m for m in sys.modules if m.startswith("lipsweep")], "lipsweep was imported"
print(json.dumps(out))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = json.loads(done.stdout.strip().splitlines()[-1])
    for method in methods:
        assert float32_close(torch.load(tmp_path / f"{method}.out"), expected[method]), method
        assert recorded[method] == pytest.approx(bounds[method], rel=1e-12)


@pytest.mark.parametrize("method", ["aol", "cpl", "soc", "lot"])
def test_onnx_export_where_the_graph_allows(method: str, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from lipsweep.export import NotExportable

    model = trained(method)
    checkpoint = save_checkpoint(model, tmp_path / "model.pt")
    if method in COMPLEX:
        with pytest.raises(NotExportable, match="--format pt2"):
            export_checkpoint(checkpoint, tmp_path / "model.onnx", "onnx")
        assert not list(tmp_path.glob("model.onnx*"))
        return
    record = export_checkpoint(checkpoint, tmp_path / "model.onnx", "onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    x = torch.rand(3, 1, 8, 8)
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert float32_close(torch.from_numpy(logits), model(x))
    beside = json.loads((tmp_path / "model.onnx.json").read_text())
    assert beside["lipschitz_bound"] == record["lipschitz_bound"]


def test_a_plug_in_layer_without_a_fixed_form_is_refused() -> None:
    from lipsweep.export import NotExportable, freeze_stage

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(()))

    with pytest.raises(NotExportable, match="Scaled"):
        freeze_stage(Scaled(), (8, 8))


@pytest.fixture(scope="module")
def sweep_with_finals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder (sweep.json, rows, checkpoints where the rows say) with 1-epoch final
    runs of AOL and SOC on 256 digits."""
    root = tmp_path_factory.mktemp("export-sweep")
    SweepConfig(sweep_id="testsweep", datasets=("digits",), sizes=("XS",),
                methods=("aol", "soc"), budgets=("24h",)).save(root)  # fmt: skip
    for method in ("aol", "soc"):
        spec = TrialSpec("digits", "XS", method, epochs=1, lr=0.05, weight_decay=1e-5, seed=0,
                         max_examples=256)  # fmt: skip
        attempt_id = TrialId("final", Cell("digits", "XS", method), "24h", 0).attempt(0)
        outcome = run_attempt(spec, root / "attempts" / attempt_id)
        assert outcome.status == "completed", outcome.error
        row = row_of(spec, outcome)
        assert row["attempt_id"] == attempt_id
        write_attempt(root, row, history_rows(outcome))
    return root


def test_export_command_writes_the_cells_model(sweep_with_finals: Path, tmp_path: Path) -> None:
    out = tmp_path / "soc.pt2"
    done = run_cli("export", str(sweep_with_finals), "--cell", "digits-XS-soc", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "guaranteed Lipschitz bound" in done.stdout and str(out) in " ".join(done.stdout.split())
    exported = load_exported(out)
    assert exported.record["model_config"]["method"] == "soc"
    from lipsweep import load_model

    model = load_model(sweep_with_finals, "digits", "XS", "soc")
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert float32_close(exported.module(x), model(x))
    assert exported.lipschitz_bound == pytest.approx(model_bound(model, (1, 8, 8))[0], rel=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "--format must be one of pt2, onnx"),
        ([], "has 2 final models"),  # two cells: which one?
        (["--cell", "digits-XS"], "is not a cell name"),
        (["--cell", "digits-XS-lot"], "has no completed final run of digits XS lot"),
        (["--cell", "digits-XS-aol", "--budget", "2h"], "has no completed final run"),
    ],
)
def test_export_command_refuses_bad_input_in_one_line_and_writes_nothing(
    sweep_with_finals: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "model.pt2"
    done = run_cli("export", str(sweep_with_finals), *args, "--out", str(out))
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split()) and len(done.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_export_of_an_untrained_model_is_impossible(tmp_path: Path) -> None:
    """Weights come from a checkpoint only: a folder without one (a fresh model) is refused."""
    (tmp_path / "attempt").mkdir()
    done = run_cli("export", str(tmp_path / "attempt"), "--out", str(tmp_path / "m.pt2"))
    assert done.returncode == 2 and "neither a sweep folder" in done.stderr
    assert not (tmp_path / "m.pt2").exists()
    assert not (tmp_path / "attempt" / CHECKPOINT).exists()


def readme_block(after: str) -> str:
    """The first ```python block of the README after the line containing ``after``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start : text.index("```", start)]


def test_readme_certifies_one_image_with_the_exported_model(
    sweep_with_finals: Path, tmp_path: Path
) -> None:
    done = run_cli("export", str(sweep_with_finals), "--cell", "digits-XS-soc",
                   "--out", str(tmp_path / "soc.pt2"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    script = readme_block("Certifying one image with the exported model")
    ran = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    correct, certified = ran.stdout.split()
    from lipsweep import load_model
    from lipsweep.data import Batches, load_split

    model = load_model(sweep_with_finals, "digits", "XS", "soc")
    x, y = next(iter(Batches(load_split("digits", "test"), 1, False, torch.Generator())))
    with torch.no_grad():
        assert correct == str(bool(model(x).argmax() == y[0]))
    assert certified in ("True", "False") and (certified == "False" or correct == "True")
