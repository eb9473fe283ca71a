"""The search algorithm on real Optuna storage: asking through OptunaSearch, and resuming."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from ray.tune.search import Searcher

from lipsweep.config import LR_RANGE, WEIGHT_DECAY_RANGE
from lipsweep.search import CellSearch, SearchSettings, journal, prepare_cell

SETTINGS = SearchSettings("random", 0, 4, LR_RANGE, WEIGHT_DECAY_RANGE)


def trial_config(number: int, params: dict[str, Any]) -> dict[str, Any]:
    return {"number": number, **params}


def test_fresh_trials_come_from_optuna_within_the_space(tmp_path: Path) -> None:
    cell = prepare_cell("c", "s/c", journal(tmp_path), SETTINGS, {}, trial_config)
    search = CellSearch([cell])
    trials = [search.suggest(f"t{i}")["trial"] for i in range(4)]
    assert search.suggest("t4") == Searcher.FINISHED
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert all(LR_RANGE[0] <= t["lr"] <= LR_RANGE[1] for t in trials)
    assert all(WEIGHT_DECAY_RANGE[0] <= t["weight_decay"] <= WEIGHT_DECAY_RANGE[1] for t in trials)
    assert len({t["lr"] for t in trials}) == 4
    stored = cell.study.trials
    assert [t.params["lr"] for t in stored] == [t["lr"] for t in trials]
    assert {t.state for t in stored} == {TrialState.RUNNING}


def test_a_relaunch_tells_what_ended_replays_what_was_interrupted_then_asks_anew(
    tmp_path: Path,
) -> None:
    first = CellSearch([prepare_cell("c", "s/c", journal(tmp_path), SETTINGS, {}, trial_config)])
    handed = [first.suggest(f"t{i}")["trial"] for i in range(3)]
    first.on_trial_complete("t0", {"status": "completed", "cra_36": 0.5})
    # The driver dies: trial 1's attempts ended (NaN, retries used) but it was never told;
    # trial 2 was interrupted mid-attempt.
    ended = {0: ("completed", 0.5), 1: ("nan", math.nan)}
    cell = prepare_cell("c", "s/c", journal(tmp_path), SETTINGS, ended, trial_config)
    states = [t.state for t in cell.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    assert [t.number for t in cell.replays] == [2] and cell.fresh == 1
    again = CellSearch([cell])
    replay = again.suggest("u0")["trial"]
    assert replay == handed[2]  # same number, same hyperparameters: its checkpoints resume
    fresh = again.suggest("u1")["trial"]
    assert fresh["number"] == 3 and fresh["lr"] not in {t["lr"] for t in handed}
    assert again.suggest("u2") == Searcher.FINISHED
    again.on_trial_complete("u0", {"status": "completed", "cra_36": 0.7})
    again.on_trial_complete("u1", {"status": "skipped_cap", "cra_36": math.nan})
    trials = cell.study.trials
    assert trials[2].state == TrialState.COMPLETE and trials[2].value == 0.7
    assert trials[3].state == TrialState.RUNNING  # kept out by the cap: a relaunch replays it


def test_cells_are_handed_out_in_turn_each_from_its_own_study(tmp_path: Path) -> None:
    settings = SearchSettings("random", 0, 2, LR_RANGE, WEIGHT_DECAY_RANGE)
    storage = journal(tmp_path)
    cells = [prepare_cell(n, f"s/{n}", storage, settings, {}, trial_config) for n in ("a", "b")]
    search = CellSearch(cells)
    for i in range(4):
        search.suggest(f"t{i}")
    assert [len(c.study.trials) for c in cells] == [2, 2]
    search.on_trial_complete("t3", {"status": "failed", "cra_36": math.nan})
    assert [t.state for t in cells[1].study.trials] == [TrialState.RUNNING, TrialState.FAIL]
