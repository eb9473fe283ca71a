"""--search-space lr,wd,temperature,offset: the loss's temperature and offset as searched
dimensions, drawn within their ranges, stored per attempt, and used by training."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from typer.testing import CliRunner

from lipsweep.attempt import TrialSpec, run_attempt
from lipsweep.backends.local import LocalBackend
from lipsweep.cli import app
from lipsweep.config import OFFSET_RANGE, TEMPERATURE_RANGE, SweepConfig
from lipsweep.errors import InputError
from lipsweep.loss import DEFAULT_MARGIN, DEFAULT_TEMPERATURE
from lipsweep.plan import CellPlan, save_plan
from lipsweep.results import read_attempts
from lipsweep.search import CellSearch, SearchSettings, journal, prepare_cell

CONFIG = SweepConfig(
    sweep_id="l",
    datasets=("digits",),
    sizes=("XS",),
    methods=("aol",),
    budgets=("1h",),
    trials=3,
    search_budget="30s",
    batch_size=64,
    max_examples=128,
    lr_range=(0.03, 0.3),
    search_space=("lr", "wd", "temperature", "offset"),
    temperature_range=(0.1, 0.5),
    offset_range=(0.2, 0.8),
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path / "cache"))


def test_default_ranges_are_a_factor_4_around_the_papers_loss() -> None:
    assert math.sqrt(TEMPERATURE_RANGE[0] * TEMPERATURE_RANGE[1]) == pytest.approx(
        DEFAULT_TEMPERATURE
    )
    assert math.sqrt(OFFSET_RANGE[0] * OFFSET_RANGE[1]) == pytest.approx(DEFAULT_MARGIN)
    assert TEMPERATURE_RANGE[1] / TEMPERATURE_RANGE[0] == pytest.approx(16)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--search-space", "lr,wd,momentum"],
            "unknown search dimension 'momentum' in --search-space",
        ),
        (["--search-space", "temperature,offset"], "--search-space must name lr and wd"),
        (["--search-space", "lr,wd,offset,offset"], "each dimension once"),
        (["--temperature-range", "1,0.1"], "--temperature-range needs 0 < LOW < HIGH"),
        (["--offset-range", "0,1"], "--offset-range needs 0 < LOW < HIGH"),
        (["--offset-range", "big"], "--offset-range must be LOW,HIGH"),
    ],
)
def test_a_bad_search_space_is_one_line_before_anything_is_written(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["launch", "--out", str(out), "--datasets", "digits",
                                      *arguments])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_a_hand_edited_sweep_json_is_checked_too(tmp_path: Path) -> None:
    CONFIG.save(tmp_path)
    assert SweepConfig.load(tmp_path) == CONFIG  # lists in the JSON come back as tuples
    text = (tmp_path / "sweep.json").read_text().replace('"temperature"', '"tau"')
    (tmp_path / "sweep.json").write_text(text)
    with pytest.raises(InputError, match="unknown search dimension 'tau'"):
        SweepConfig.load(tmp_path)


def trial_config(index: int, params: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, **params}


def test_temperature_and_offset_are_drawn_log_uniformly_within_their_ranges(
    tmp_path: Path,
) -> None:
    settings = SearchSettings.of(replace(CONFIG, trials=40))
    cell = prepare_cell("c", "s/c", journal(tmp_path), settings, {}, trial_config)
    search = CellSearch([cell])
    trials = [search.suggest(f"t{i}")["trial"] for i in range(40)]
    temperatures = [t["temperature"] for t in trials]
    offsets = [t["offset"] for t in trials]
    assert all(0.1 <= t <= 0.5 for t in temperatures) and all(0.2 <= o <= 0.8 for o in offsets)
    assert len(set(temperatures)) == 40 and len(set(offsets)) == 40
    # Log-uniform: about half of the draws below the geometric middle of the range.
    assert 10 <= sum(t < math.sqrt(0.1 * 0.5) for t in temperatures) <= 30
    study = optuna.load_study(study_name="s/c", storage=journal(tmp_path))
    distribution = study.trials[0].distributions["temperature"]
    assert distribution.log and (distribution.low, distribution.high) == (0.1, 0.5)
    # The paper's space draws no loss dimension, and the same lr, wd and seed as before.
    paper = SearchSettings.of(replace(CONFIG, search_space=("lr", "wd")))
    (tmp_path / "p").mkdir()
    plain = CellSearch([prepare_cell("c", "s/c", journal(tmp_path / "p"), paper, {},
                                     trial_config)]).suggest("p0")["trial"]  # fmt: skip
    assert set(plain) == {"index", "lr", "weight_decay", "seed"}


def test_the_temperature_and_offset_change_the_loss_an_attempt_trains_with(
    tmp_path: Path,
) -> None:
    """Same seed, same data: the paper's loss twice gives the same run; another temperature
    or another offset gives another one."""
    spec = TrialSpec("digits", "XS", "aol", 2, 0.1, 1e-4, 3, stage="search", batch_size=64,
                     max_examples=128)  # fmt: skip

    def losses(**loss: float) -> list[float]:
        name = "-".join(f"{k}{v}" for k, v in loss.items()) or "paper"
        outcome = run_attempt(replace(spec, **loss), tmp_path / name)
        assert outcome.status == "completed", outcome.error
        return [row["train_loss"] for row in outcome.history]

    paper = losses()
    assert losses(loss_temperature=DEFAULT_TEMPERATURE, loss_offset=DEFAULT_MARGIN) == paper
    hotter = losses(loss_temperature=1.0)
    wider = losses(loss_offset=1.2)
    assert hotter[0] != pytest.approx(paper[0], rel=1e-3)
    assert wider[0] != pytest.approx(paper[0], rel=1e-3)
    # tau CE((z - m e_y) / tau) grows with the margin m: a wider margin costs more loss.
    assert wider[0] > paper[0]


def test_the_chosen_loss_is_stored_per_attempt_and_the_final_run_trains_with_it(
    tmp_path: Path, ray_session
) -> None:
    save_plan(tmp_path, CellPlan("digits", "XS", "aol", 1.0, {"30s": 2, "1h": 1}))
    LocalBackend().launch(CONFIG, tmp_path, [].append)
    attempts = read_attempts(tmp_path)
    search = attempts[attempts["stage"] == "search"].sort_values("trial_index")
    assert len(search) == 3 and set(attempts["status"]) == {"completed"}
    assert search["loss_temperature"].between(0.1, 0.5).all()
    assert search["loss_offset"].between(0.2, 0.8).all()
    assert search["loss_temperature"].nunique() == 3
    study = optuna.load_study(study_name="l/digits-XS-aol", storage=journal(tmp_path))
    assert [t.params["temperature"] for t in study.trials] == search["loss_temperature"].tolist()
    assert [t.params["offset"] for t in study.trials] == search["loss_offset"].tolist()
    # Best validation CRA; ties: the higher accuracy, then the lower index.
    order = ["cra_36", "accuracy", "trial_index"]
    best = search.sort_values(order, ascending=[False, False, True]).iloc[0]
    (final,) = attempts[attempts["stage"] == "final"].itertuples()
    assert (final.loss_temperature, final.loss_offset) == (
        best["loss_temperature"],
        best["loss_offset"],
    )
    assert final.lr == best["lr"]
