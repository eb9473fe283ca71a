"""--search halving: rungs of complete runs at growing epochs, on real Optuna storage, real Ray
and real data (digits)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher
from typer.testing import CliRunner

from lipsweep.backends.local import LocalBackend
from lipsweep.cli import app
from lipsweep.config import SweepConfig
from lipsweep.errors import InputError
from lipsweep.halving import Rung, make_rungs, outcomes, progress, survivors
from lipsweep.ledger import Ledger
from lipsweep.loss import DEFAULT_MARGIN, DEFAULT_TEMPERATURE
from lipsweep.plan import CellPlan, planned_trials, save_plan
from lipsweep.results import read_attempts, read_history
from lipsweep.search import CellSearch, Halving, SearchSettings, journal, prepare_cell, search_space
from lipsweep.select import ranked
from lipsweep.status import sweep_status
from lipsweep.trainable import retry_seed
from tests.test_sweep import _kill_tree, status_text

CONFIG = SweepConfig(
    sweep_id="h",
    datasets=("digits",),
    sizes=("XS",),
    methods=("aol",),
    budgets=("1h",),
    trials=5,
    search_budget="30s",
    search="halving",
    eta=2,
    batch_size=64,
    max_examples=128,
    lr_range=(0.03, 0.3),
    checkpoint_every_epochs=1,
)
# Stored, as a resumed sweep has it: no calibration. E = 4 search epochs, 2 final epochs.
PLAN = CellPlan("digits", "XS", "aol", 1.0, {"30s": 4, "1h": 2})


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("epochs", "trials", "eta", "expected"),
    [
        # The paper's 16 trials of AOL-XS on CIFAR-10 (837 epochs in 2h): rungs stop at the last
        # one with >= 2 configurations, not at 1 + floor(log3 837) = 7.
        (837, 16, 3, [(16, 93), (6, 279), (2, 837)]),
        (9, 16, 3, [(16, 1), (6, 3), (2, 9)]),
        (8, 16, 3, [(16, 2), (6, 8)]),  # 8 epochs: rung 0 must keep >= 1 epoch, so 2 rungs
        (4, 5, 2, [(5, 1), (3, 2), (2, 4)]),
        (100, 4, 3, [(4, 33), (2, 100)]),
        (50, 2, 3, [(2, 50)]),  # ceil(2 / 3) = 1 would select nothing: the random search
        (1, 16, 3, [(16, 1)]),
    ],
)
def test_rungs_grow_epochs_by_eta_up_to_the_search_epochs(
    epochs: int, trials: int, eta: int, expected: list[tuple[int, int]]
) -> None:
    rungs = make_rungs(epochs, trials, eta)
    assert [(r.size, r.epochs) for r in rungs] == expected
    assert rungs[-1].epochs == epochs and rungs[0].epochs >= 1
    assert [r.offset for r in rungs] == [sum(s for s, _ in expected[:i]) for i in range(len(rungs))]


def test_selection_ranks_like_the_survivors() -> None:
    """The final's selection and a rung's survivors order trials the same way: CRA, then
    accuracy, then the lower index (missing accuracy counts as lowest)."""
    cra = [0.0, 0.3, 0.0, 0.3, 0.0, 0.0]
    accuracy = [0.5, 0.2, 0.7, 0.4, math.nan, 0.7]
    rows = pd.DataFrame({"trial_index": range(6), "cra_36": cra, "accuracy": accuracy})
    order = ranked(rows.sample(frac=1, random_state=0))["trial_index"].tolist()
    assert order == [3, 1, 2, 5, 0, 4]
    ended = {i: ("completed", value) for i, value in enumerate(cra)}
    known = {i: value for i, value in enumerate(accuracy) if not math.isnan(value)}
    assert survivors(ended, Rung(0, 6, 1, 0), 6, accuracy=known) == order


def test_survivors_are_the_best_completed_ties_to_the_lower_index() -> None:
    rung = Rung(0, 5, 1, 0)
    ended = {
        0: ("completed", 0.5),
        1: ("completed", 0.7),
        2: ("nan", math.nan),
        3: ("completed", 0.7),
        4: ("failed", math.nan),
    }
    assert survivors(ended, rung, 3) == [1, 3, 0]
    assert survivors(ended, rung, 5) == [1, 3, 0]  # only completed runs survive
    # Equal CRA (early rungs: mostly 0): the higher validation accuracy first, then the index.
    assert survivors(ended, rung, 2, accuracy={1: 0.4, 3: 0.6}) == [3, 1]
    zeros = {i: ("completed", 0.0) for i in range(5)}
    assert survivors(zeros, rung, 2, accuracy={0: 0.1, 2: 0.3, 4: 0.3}) == [2, 4]
    rungs = [rung, Rung(1, 3, 2, 5), Rung(2, 2, 4, 8)]
    steps = progress(rungs, ended)
    assert [(s.expected, s.ended, s.completed) for s in steps] == [
        (5, 5, 3),
        (3, 0, 0),
        (None, 0, 0),
    ]
    assert steps[0].complete and not steps[1].complete
    # Rung 1 with one completed run of three: rung 2 runs one configuration, not two.
    ended |= {5: ("completed", 0.8), 6: ("oom", math.nan), 7: ("failed", math.nan)}
    steps = progress(rungs, ended)
    assert steps[1].complete and steps[2].expected == 1 and list(steps[2].never_run) == [9]
    # A completed run without a value cannot survive: the next rung does not wait for it.
    ended[6] = ("completed", math.nan)
    steps = progress(rungs, ended)
    assert steps[1].completed == 1 and steps[2].expected == len(survivors(ended, rungs[1], 2))


def test_plan_shows_the_rungs_and_the_cost_beside_the_random_search() -> None:
    result = CliRunner().invoke(
        app,
        ["plan", "--search", "halving", "--datasets", "cifar10", "--sizes", "XS",
         "--methods", "aol", "--budget", "24h"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "16x93 6x279 2x837" in text and "halving, eta 3" in text
    # 16 x 837 epochs of 8.6 s = 32 GPU-hours; (16 x 93 + 6 x 279 + 2 x 837) epochs = 11.56.
    assert "search GPU-hours: random 32, halving 11.56 (0.36 of random)" in text
    assert "search trials: 24" in text
    random = CliRunner().invoke(app, ["plan", "--datasets", "cifar10", "--sizes", "XS",
                                      "--methods", "aol", "--budget", "24h"], terminal_width=200)  # fmt: skip
    assert "search GPU-hours: random 32" in " ".join(random.output.split())
    assert "halving" not in random.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--search", "grid"], "unknown --search 'grid': choose one of random, halving"),
        (["--search", "halving", "--eta", "1"], "--eta must be at least 2, got 1"),
    ],
)
def test_bad_search_options_are_one_line_errors_before_anything_is_written(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["launch", "--out", str(out), "--datasets", "digits",
                                      *arguments])  # fmt: skip
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not out.exists()
    with pytest.raises(InputError, match="--eta must be a whole number"):
        replace(CONFIG, eta=2.5)


# ----------------------------------------------------------------------------- the studies


def trial_config(index: int, params: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, **params}


def test_opening_a_rung_enqueues_survivors_once_even_after_a_kill(tmp_path: Path) -> None:
    """Rung 1 opens from rung 0's outcomes; a driver killed after enqueueing one survivor
    leaves it WAITING: the next launch asks it and adds only the missing ones. A survivor
    whose parent completed on a retry runs with the retry's seed."""
    storage = journal(tmp_path)
    settings = SearchSettings("random", 0, 5, (0.03, 0.3), (1e-5, 1e-4))
    space = search_space(settings)
    rows: dict[int, dict[str, Any]] = {}

    def read_ended() -> pd.DataFrame:
        columns = ["trial_index", "status", "cra_36", "accuracy", "seed"]
        return pd.DataFrame(list(rows.values()), columns=columns)

    def end(index: int, value: float, seed: int) -> None:
        rows[index] = {"trial_index": index, "status": "completed", "cra_36": value,
                       "accuracy": 0.5, "seed": seed}  # fmt: skip

    halving = Halving(make_rungs(4, 5, 2), "s/c", storage, space, read_ended)
    cell = prepare_cell("c", "s/c", storage, settings, {}, trial_config, halving)
    search = CellSearch([cell])
    first = [search.suggest(f"t{i}")["trial"] for i in range(5)]
    assert search.suggest("t5") is None  # rung 0 running: not finished, not yet rung 1
    values = [0.2, 0.6, 0.4, 0.6, 0.1]
    completed_seeds = [trial["seed"] for trial in first]
    completed_seeds[3] = retry_seed(first[3]["seed"], 1)  # trial 3 went NaN, its retry completed
    for i, value in enumerate(values):
        end(i, value, completed_seeds[i])
        search.on_trial_complete(f"t{i}", {"status": "completed", "cra_36": value})
    opened = [search.suggest(f"u{i}")["trial"] for i in range(3)]
    assert [t["index"] for t in opened] == [5, 6, 7]
    for trial, parent in zip(opened, [1, 3, 2], strict=True):  # ties: the lower index first
        assert {k: trial[k] for k in ("lr", "weight_decay")} == {
            k: first[parent][k] for k in ("lr", "weight_decay")
        }
        assert trial["seed"] == completed_seeds[parent]
    assert completed_seeds[3] != first[3]["seed"]
    rung1 = optuna.load_study(study_name="s/c/rung1", storage=storage)
    assert [t.user_attrs for t in rung1.trials] == [{"rung": 1, "parent": p} for p in (1, 3, 2)]
    assert {t.state for t in rung1.trials} == {TrialState.RUNNING}

    # A second driver after a kill that happened while rung 1 was being opened: remove what
    # the first one did to rung 1, enqueue only the first survivor and leave it WAITING.
    (tmp_path / "again").mkdir()
    storage2 = journal(tmp_path / "again")
    rung0 = optuna.create_study(study_name="s/c", storage=storage2, direction="maximize")
    for trial in optuna.load_study(study_name="s/c", storage=storage).trials:
        rung0.add_trial(trial)
    partial = optuna.create_study(study_name="s/c/rung1", storage=storage2, direction="maximize")
    partial.enqueue_trial(first[1] | {}, user_attrs={"rung": 1, "parent": 1})
    halving2 = replace(halving, storage=storage2)
    cell = prepare_cell("c", "s/c", storage2, settings, outcomes(read_ended()), trial_config,
                        halving2)  # fmt: skip
    assert cell.fresh == 0
    assert [(r.index, r.params["lr"]) for r in cell.replays] == [
        (5, first[1]["lr"]), (6, first[3]["lr"]), (7, first[2]["lr"])
    ]  # fmt: skip
    rung1 = optuna.load_study(study_name="s/c/rung1", storage=storage2)
    assert [t.user_attrs["parent"] for t in rung1.trials] == [1, 3, 2]
    assert {t.state for t in rung1.trials} == {TrialState.RUNNING}
    # Opening again adds nothing: every survivor is in the rung already.
    again = prepare_cell("c", "s/c", storage2, settings, outcomes(read_ended()), trial_config,
                         halving2)  # fmt: skip
    assert len(optuna.load_study(study_name="s/c/rung1", storage=storage2).trials) == 3
    assert [r.index for r in again.replays] == [5, 6, 7]  # still interrupted: replayed
    search = CellSearch([again])
    for i in range(3):
        search.suggest(f"v{i}")
    assert search.suggest("v3") is None
    for i, value in enumerate([0.7, 0.9, 0.8]):
        end(5 + i, value, 0)
        search.on_trial_complete(f"v{i}", {"status": "completed", "cra_36": value})
    last = [search.suggest(f"w{i}")["trial"] for i in range(2)]
    assert [t["index"] for t in last] == [8, 9]
    assert [t["lr"] for t in last] == [first[3]["lr"], first[2]["lr"]]  # rung 1's 6 and 7
    for i in range(2):
        end(8 + i, 0.9, 0)
        search.on_trial_complete(f"w{i}", {"status": "completed", "cra_36": 0.9})
    assert search.suggest("w2") == Searcher.FINISHED


# ----------------------------------------------------------------------------- real sweeps


def launch(config: SweepConfig, out: Path) -> None:
    LocalBackend().launch(config, out, [].append)


def test_a_halving_sweep_runs_each_rung_selects_from_the_last_and_counts_every_hour(
    tmp_path: Path, ray_session
) -> None:
    save_plan(tmp_path, PLAN)
    launch(CONFIG, tmp_path)
    attempts = read_attempts(tmp_path)
    search = attempts[attempts["stage"] == "search"].set_index("trial_index").sort_index()
    assert attempts["attempt_id"].is_unique and set(attempts["status"]) == {"completed"}
    # Rungs 5 x 1 epoch, 3 x 2, 2 x 4 (E = 4, eta = 2), each trial its own id and row.
    assert search.index.tolist() == list(range(10))
    assert search["rung"].tolist() == [0] * 5 + [1] * 3 + [2] * 2
    assert search["epochs_planned"].tolist() == [1] * 5 + [2] * 3 + [4] * 2
    assert (search["epochs_done"] == search["epochs_planned"]).all()
    keys = ["lr", "weight_decay", "seed"]

    def ranked(rung: int) -> list[int]:
        rows = search[search["rung"] == rung].reset_index()
        rows = rows.sort_values(
            ["cra_36", "accuracy", "trial_index"], ascending=[False, False, True]
        )
        return rows["trial_index"].tolist()

    # Rung 1 retrains rung 0's best 3 (CRA, then accuracy) from scratch, in rank order; rung 2
    # rung 1's best 2.
    for rung, count, offset in ((1, 3, 5), (2, 2, 8)):
        parents = ranked(rung - 1)[:count]
        children = list(range(offset, offset + count))
        assert (
            search.loc[children, keys].values.tolist() == search.loc[parents, keys].values.tolist()
        )
        study = optuna.load_study(
            study_name=f"h/digits-XS-aol/rung{rung}", storage=journal(tmp_path)
        )
        assert [t.user_attrs["parent"] for t in study.trials] == parents
        assert [t.value for t in study.trials] == search.loc[children, "cra_36"].tolist()
    rung0 = optuna.load_study(study_name="h/digits-XS-aol", storage=journal(tmp_path))
    assert [t.state.name for t in rung0.trials] == ["COMPLETE"] * 5
    # The final run trains the best configuration of the last rung.
    (final,) = attempts[attempts["stage"] == "final"].itertuples()
    best = ranked(2)[0]
    assert (final.lr, final.weight_decay) == tuple(search.loc[best, ["lr", "weight_decay"]])
    assert math.isnan(final.rung)
    # Without --search-space temperature,offset every attempt trains with the paper's loss.
    assert (attempts["loss_temperature"] == DEFAULT_TEMPERATURE).all()
    assert (attempts["loss_offset"] == DEFAULT_MARGIN).all()
    # The ledger counts every rung's attempts; the plan estimated each at its own epochs.
    spent = Ledger(tmp_path, None).spent_hours()
    assert spent == pytest.approx(attempts["gpu_hours"].sum()) and spent > 0
    assert search.groupby("rung")["gpu_hours"].sum().gt(0).all()
    planned = [t for t in planned_trials(CONFIG, [PLAN]) if t.stage == "search"]
    assert [t.device_hours(0.0) * 3600 for t in planned] == [1.0] * 5 + [2.0] * 3 + [4.0] * 2
    status = sweep_status(tmp_path).cells[0]
    assert (status.rung, status.rungs, status.survivors, status.search_trials) == (2, 3, 2, 10)
    assert "10/10 3/3:2" in status_text(tmp_path) and "nothing left to run" in status_text(tmp_path)

    # Lost: the last rung's results and checkpoints, and the final's. Status shows the rung
    # open again; a relaunch reruns exactly those, under their numbers and params, and
    # nothing else.
    lost = [f"search-digits-XS-aol-30s-t{i}-a0" for i in (8, 9)] + [final.attempt_id]
    for attempt_id in lost:
        next((tmp_path / "results" / "attempts").rglob(f"{attempt_id}.parquet")).unlink()
        shutil.rmtree(tmp_path / "attempts" / attempt_id)
    assert "8/10 3/3:2" in status_text(tmp_path)
    assert sweep_status(tmp_path).cells[0].hours_left == pytest.approx((4 + 4 + 2) / 3600)
    launch(CONFIG, tmp_path)
    again = read_attempts(tmp_path).set_index("attempt_id")
    before = attempts.set_index("attempt_id")
    assert sorted(again.index) == sorted(before.index)
    kept = [a for a in before.index if a not in lost]
    assert (again.loc[kept, "ended_at"] == before.loc[kept, "ended_at"]).all()
    assert (again.loc[lost, "ended_at"] > before.loc[lost, "ended_at"]).all()
    assert (again.loc[lost, keys] == before.loc[lost, keys]).all().all()
    assert (
        len(optuna.load_study(study_name="h/digits-XS-aol/rung2", storage=journal(tmp_path)).trials)
        == 2
    )


def test_a_cap_keeps_the_next_rung_closed_and_a_resume_with_room_opens_it(
    tmp_path: Path, ray_session
) -> None:
    """The ledger decides per attempt: with room for rung 0 only, rung 1 does not open and
    no final runs; the same sweep relaunched without the cap runs rung 1, 2 and the final."""
    save_plan(tmp_path, PLAN)
    capped = replace(CONFIG, max_gpu_hours=2.5 / 3600)  # estimates: 5 x 1 s; spent: more
    launch(capped, tmp_path)
    first = read_attempts(tmp_path)
    assert set(first["rung"].dropna()) <= {0} and len(first) < 10
    assert first["gpu_hours"].sum() <= capped.max_gpu_hours + first["gpu_hours"].max()
    assert "final" not in set(first["stage"])
    config = json.loads((tmp_path / "sweep.json").read_text())
    config["max_gpu_hours"] = None  # the user raises the cap by hand (sweep.json is checked)
    (tmp_path / "sweep.json").write_text(json.dumps(config))
    launch(SweepConfig.load(tmp_path), tmp_path)
    attempts = read_attempts(tmp_path)
    assert sorted(attempts["rung"].dropna().astype(int)) == [0] * 5 + [1] * 3 + [2] * 2
    assert attempts["attempt_id"].is_unique and "final" in set(attempts["stage"])


def _launch_command(out: Path) -> list[str]:
    """Digits through the CLI: 6 configurations, eta 2, E = 12 epochs: rungs 6 x 3, 3 x 6
    and 2 x 12 (epochs fixed, so the rungs do not depend on this machine's speed)."""
    return [
        sys.executable, "-m", "lipsweep", "launch", "--out", str(out),
        "--datasets", "digits", "--sizes", "XS", "--methods", "aol",
        "--search", "halving", "--eta", "2", "--trials", "6",
        "--search-budget", "1h", "--search-epochs", "12", "--budget", "2h", "--final-epochs", "2",
        "--max-examples", "512", "--batch-size", "32", "--lr-range", "0.03,0.3",
        "--checkpoint-every", "1",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_of_the_driver_mid_rung_then_resume_runs_every_attempt_once(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIPSWEEP_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "sweep"
    process = subprocess.Popen(
        _launch_command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    midway: list[str] = []
    while time.monotonic() < deadline and process.poll() is None:
        finished = set(read_attempts(out)["attempt_id"]) if (out / "results").exists() else set()
        midway = [  # rung 1 (trial indices 6-8), caught after its first epoch
            p.parent.name
            for p in (out / "attempts").glob("search-*-t[678]-a0/progress.json")
            if p.parent.name not in finished and json.loads(p.read_text())["epoch"] >= 1
        ]
        if midway:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the sweep finished before it could be killed"
    _kill_tree(process)
    before = read_attempts(out)
    midway = [a for a in midway if a not in set(before["attempt_id"])]
    assert midway, "every rung-1 attempt caught mid-way finished before the kill"
    assert set(before["rung"]) <= {0, 1} and (before["rung"] == 0).sum() == 6
    text = status_text(out)
    assert "2/3:3" in text and "nothing running now" in text, text  # rung 2 of 3: 3 configs

    resumed = subprocess.run(
        [sys.executable, "-m", "lipsweep", "resume", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    attempts = read_attempts(out)
    assert attempts["attempt_id"].is_unique and set(attempts["status"]) == {"completed"}
    search = attempts[attempts["stage"] == "search"].sort_values("trial_index")
    assert search["trial_index"].tolist() == list(range(11))
    assert search["rung"].tolist() == [0] * 6 + [1] * 3 + [2] * 2
    assert search["epochs_done"].tolist() == [3] * 6 + [6] * 3 + [12] * 2
    assert len(attempts[attempts["stage"] == "final"]) == 1
    assert len(list((out / "results" / "attempts").rglob("*.parquet"))) == len(attempts)
    kept = attempts.set_index("attempt_id").loc[before["attempt_id"], "ended_at"]
    assert kept.tolist() == before.set_index("attempt_id")["ended_at"].tolist()
    resumed_rows = attempts.set_index("attempt_id").loc[midway]
    assert (resumed_rows["resumed_from_epoch"] >= 1).all()
    history = read_history(out)
    assert set(history[history["attempt_id"].isin(midway)]["run"]) == {0, 1}
    storage = journal(out)
    for name, count in (("sweep/digits-XS-aol", 6), ("sweep/digits-XS-aol/rung1", 3),
                        ("sweep/digits-XS-aol/rung2", 2)):  # fmt: skip
        study = optuna.load_study(study_name=name, storage=storage)
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * count, name
