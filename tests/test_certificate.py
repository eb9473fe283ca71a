"""``certify_model``: a trained model's guaranteed bound, float64 CRA and the PGD check on every
certified point; the check catches a certificate built on a wrong bound."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import lipsweep.certify
from lipsweep.certify import (
    GAP_SLACK,
    RADII,
    certificate_record,
    certified,
    certify_model,
    logit_gaps,
)
from lipsweep.cli import app
from lipsweep.data import Batches, load_split
from lipsweep.loss import offset_cross_entropy
from lipsweep.model import ConvNet, build_model
from lipsweep.names import CHECKPOINT
from tests.test_model import TINY_SHAPE, orthogonal_standard_model

torch.set_num_threads(1)


def trained_digits_model(method: str, epochs: int = 8) -> ConvNet:
    """A width-16 (XS) model trained a few epochs on digits (8 x 8): margins of every size."""
    torch.manual_seed(0)
    train = load_split("digits", "train")
    model = ConvNet(method, 16, 3, 10, in_channels=1, input_size=8)
    batches = Batches(train, 64, True, torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, epochs * len(batches))
    for _ in range(epochs):
        model.train()
        for x, y in batches:
            loss = offset_cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def digits_test(limit: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    test = load_split("digits", "test")
    return list(Batches(test.subset(range(limit)), 64, False, torch.Generator()))


@pytest.fixture(scope="module")
def trained() -> dict[str, ConvNet]:
    return {method: trained_digits_model(method) for method in ("cpl", "aol")}


@pytest.mark.parametrize("method", ["cpl", "aol"])
def test_a_trained_model_is_certified_and_no_certified_point_flips(
    method: str, trained: dict[str, ConvNet]
) -> None:
    model = trained[method]
    before = {key: value.clone() for key, value in model.state_dict().items()}
    certificate = certify_model(model, digits_test(), attack_steps=20)
    stages = len(certificate.stages)
    assert 0.5 < certificate.lipschitz_bound <= (1 + 1e-9) ** stages
    assert certificate.lipschitz == max(1.0, certificate.lipschitz_bound)
    assert certificate.metrics["accuracy"] > 0.5, certificate.metrics
    first = certificate.radii[0]
    assert first.eps == RADII[0] and first.certified > 10 and first.attacked == first.certified
    assert certificate.flipped == 0, certificate.radii
    for check, eps in zip(certificate.radii, RADII, strict=True):
        key = f"cra_{round(eps * 255)}"
        assert certificate.metrics[key] == pytest.approx(check.certified / 128)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"certify_model changed {key}"
    assert next(model.parameters()).dtype == torch.float32


def test_an_expansive_model_is_certified_with_its_bound() -> None:
    """Standard convs scaled 1.5: L = bound = 1.5^depth, CRA counted with it, float64 logits."""
    model = orthogonal_standard_model(scale=1.5).float().eval()
    x = torch.randn(64, *TINY_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # every point correct: the margins decide
    certificate = certify_model(model, [(x, y)], attack_steps=10)
    depth = 1 + 3 * 5 + 1  # first conv, 5 per block, head
    assert certificate.lipschitz_bound == pytest.approx(1.5**depth, rel=1e-5)
    assert certificate.lipschitz == certificate.lipschitz_bound
    with torch.no_grad():
        logits = model.double()(x.double())
    for check in certificate.radii:
        expected = certified(logits, y, check.eps, certificate.lipschitz, GAP_SLACK)
        assert check.certified == int(expected.sum())
    assert certificate.flipped == 0


def test_the_attack_catches_a_certificate_built_on_a_wrong_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the bound were 1e4 times too low (a broken layer, a bad estimate), PGD flips
    certified points: the check is able to fail."""
    model = orthogonal_standard_model(scale=1.5).float().eval()
    x = torch.randn(64, *TINY_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    real = lipsweep.certify.model_bound

    def too_low(*args: object) -> tuple[float, list[tuple[str, float]]]:
        bound, stages = real(*args)
        return bound / 1e4, stages

    monkeypatch.setattr(lipsweep.certify, "model_bound", too_low)
    certificate = certify_model(model, [(x, y)], attack_steps=20)
    assert certificate.lipschitz == 1.0  # max(1, bound / 1e4)
    assert certificate.flipped > 0, certificate.radii


def test_certificate_gaps_need_the_slack() -> None:
    logits = torch.tensor([[1.0 + math.sqrt(2) * 0.5, 1.0], [1.0 + math.sqrt(2) * 0.5 + 2e-6, 1.0]])
    labels = torch.tensor([0, 0])
    assert logit_gaps(logits.double(), labels).tolist()[0] == pytest.approx(math.sqrt(2) * 0.5)
    assert certified(logits.double(), labels, 0.5, 1.0, GAP_SLACK).tolist() == [False, True]


def test_certify_model_refuses_no_data() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        certify_model(orthogonal_standard_model(), [])


def test_certify_command_on_an_attempt_folder(trained: dict[str, ConvNet], tmp_path: Path) -> None:
    """The checkpoint format of ``lipsweep train``: the command certifies it, attacks every
    certified point, writes JSON and Parquet, and agrees with ``certify_model``."""
    model = trained["aol"]
    folder = tmp_path / "digits-XS-aol-seed0"
    folder.mkdir()
    config = {"method": "aol", "size": "XS", "dataset": "digits"}
    torch.save({"model": model.state_dict(), "model_config": config}, folder / CHECKPOINT)
    expected = certify_model(model, digits_test(), attack=False)
    for out in (tmp_path / "c.json", tmp_path / "c.parquet"):
        args = ["certify", str(folder), "--max-examples", "128", "--attack-steps", "10"]
        result = CliRunner().invoke(app, [*args, "--batch-size", "64", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "36/255" in result.output and "Lipschitz bound" in result.output
    (record,) = json.loads((tmp_path / "c.json").read_text())
    assert record["model"] == folder.name and record["lipschitz_bound"] == expected.lipschitz_bound
    assert record["metrics"] == expected.metrics
    assert record["float32_logit_deviation"] == expected.float32_logit_deviation > 0
    assert "float32_logit_deviation" in result.output
    assert [s["stage"] for s in record["stages"]] == [name for name, _ in expected.stages]
    first = record["radii"][0]
    assert first["certified"] > 10 and first["attacked"] == first["certified"]
    assert first["flipped"] == 0
    rows = pq.read_table(tmp_path / "c.parquet").to_pandas()
    assert rows["radius"].tolist() == ["cra_36", "cra_72", "cra_108", "cra_255"]
    assert rows["cra"].tolist() == [expected.metrics[key] for key in rows["radius"]]
    assert (rows["float32_logit_deviation"] == expected.float32_logit_deviation).all()


@pytest.mark.parametrize(
    "args,message",
    [
        (["certify", "{tmp}/nowhere"], "neither a sweep folder"),
        (["certify", "{tmp}", "--out", "{tmp}/c.csv"], "must end in .json or .parquet"),
        (["certify", "{tmp}", "--attack-steps", "0"], "--attack-steps must be at least 1"),
    ],
)
def test_certify_command_refuses_bad_input_in_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, [arg.replace("{tmp}", str(tmp_path)) for arg in args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_certify_command_on_a_sweep_without_finals(tmp_path: Path) -> None:
    (tmp_path / "sweep.json").write_text("{}")
    result = CliRunner().invoke(app, ["certify", str(tmp_path), "--method", "aol"])
    assert result.exit_code == 2 and "no completed final run of aol" in result.output


def test_float32_logit_deviation_is_measured_and_bounds_the_float32_logits(
    trained: dict[str, ConvNet],
) -> None:
    """The certificate holds for the float64 evaluation; it records by how much the float32
    model's logits differ from it (> 0: float32 rounds; < 1e-3 for a trained digits model),
    and no float32 logit of the data is farther than that from its float64 value."""
    model, data = trained["cpl"], digits_test()
    certificate = certify_model(model, data, attack=False)
    deviation = certificate.float32_logit_deviation
    assert 0 < deviation < 1e-3
    exact = copy.deepcopy(model).double()
    with torch.no_grad():
        z32 = torch.cat([model(x) for x, _ in data]).double()
        z64 = torch.cat([exact(x.double()) for x, _ in data])
    assert (z32 - z64).abs().max().item() <= deviation
    # The margin the docstring states: a point whose float64 gap passes sqrt(2) L eps + 2 d
    # is still correctly classified in float32 at x.
    y = torch.cat([y for _, y in data])
    safe = certified(z64, y, RADII[0], certificate.lipschitz, 2 * deviation)
    assert safe.sum() > 10 and bool(logit_gaps(z32, y)[safe].gt(0).all())
    assert certificate_record(certificate)["float32_logit_deviation"] == deviation


def test_a_non_finite_bound_certifies_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """max(1.0, nan) is 1.0 in Python: a NaN bound must stop the certificate, not make L = 1."""
    model = build_model("aol", "XS", "digits").eval()
    with torch.no_grad():
        model.first_conv.weight[0, 0] = float("nan")
    with pytest.raises(RuntimeError):  # the bound's eigensolver refuses NaN weights itself
        certify_model(model, digits_test(16))
    import lipsweep.certify

    monkeypatch.setattr(lipsweep.certify, "model_bound", lambda *args: (math.nan, []))
    with pytest.raises(ValueError, match="non-finite weights"):
        certify_model(build_model("aol", "XS", "digits").eval(), digits_test(16))
