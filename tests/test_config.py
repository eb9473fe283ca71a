"""The vocabulary (cells, ids, budgets) and the sweep config's validation, wherever it comes from."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lipsweep.budget import Budget, budget_seconds
from lipsweep.config import SweepConfig, preset_config
from lipsweep.errors import InputError
from lipsweep.names import Cell, TrialId, parse_attempt_id

CONFIG = SweepConfig("t", ("digits",), ("XS",), ("aol",), ("1h",), trials=2)


def test_ids_are_built_and_parsed_in_one_place() -> None:
    cell = Cell("tiny-imagenet", "XS", "aol")
    trial = TrialId("search", cell, "1h30m", 3)
    assert str(trial) == "search-tiny-imagenet-XS-aol-1h30m-t3"
    assert TrialId.parse(str(trial)) == trial
    assert parse_attempt_id(trial.attempt(2)) == (trial, 2)
    assert Cell.parse("cifar100-L-soc") == Cell("cifar100", "L", "soc")
    for bad in ("cifar10-XL-aol", "mnist-XS-aol", "cifar10-XS"):
        with pytest.raises(ValueError):
            Cell.parse(bad)
    with pytest.raises(ValueError):
        parse_attempt_id("search-cifar10-XS-aol-2h-t0")


def test_budgets_order_by_duration_not_by_text() -> None:
    labels = ["2h", "40s", "10h", "1h30m", "24h", "15m"]
    assert sorted(labels, key=budget_seconds) == ["40s", "15m", "1h30m", "2h", "10h", "24h"]
    assert Budget.parse("1d") == Budget.parse("24h") and str(Budget.parse("1d")) == "24h"
    assert Budget.parse("40s") < Budget.parse("1h30m") < Budget.parse("2h")


def test_config_round_trips_through_sweep_json_with_its_backend(tmp_path: Path) -> None:
    config = replace(CONFIG, backend="ray", address="127.0.0.1:6379")
    config.save(tmp_path)
    stored = json.loads((tmp_path / "sweep.json").read_text())
    assert stored["format"] == 1 and stored["backend"] == "ray"
    assert SweepConfig.load(tmp_path) == config


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"methods": ["aol", "nope"]}, "unknown method 'nope'"),
        ({"methods": 5}, "--methods is empty"),
        ({"trials": -3}, "--trials must be at least 1, got -3"),
        ({"budgets": ["2x"]}, "cannot read budget '2x'"),
        ({"lr_range": [0.1, 0.01]}, "--lr-range needs 0 < LOW < HIGH"),
        ({"backend": "ray"}, "--backend ray needs --address"),
        ({"colour": "red"}, "unknown settings ['colour']"),
        ({"format": 7}, "format 7 is not 1"),
        ({"trials": "many"}, "--trials must be at least 1, got 'many'"),
    ],
)
def test_a_hand_edited_sweep_json_is_checked(tmp_path: Path, edit: dict, message: str) -> None:
    CONFIG.save(tmp_path)
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(InputError) as raised:
        SweepConfig.load(tmp_path)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)


def test_a_damaged_sweep_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "sweep.json").write_text('{"sweep_id": "t", ')
    with pytest.raises(InputError, match=r"sweep\.json is not valid JSON"):
        SweepConfig.load(tmp_path)


def test_presets_are_valid_configs_and_options_override_them(tmp_path: Path) -> None:
    quick = preset_config("quickstart", tmp_path / "q", trials=5)
    assert quick.datasets == ("digits",) and quick.trials == 5 and quick.sweep_id == "q"
    paper = preset_config(None, tmp_path / "p")
    assert len(paper.cells()) == 84 and paper.budgets == ("24h",)
    with pytest.raises(InputError, match="unknown preset"):
        preset_config("fast", tmp_path)
