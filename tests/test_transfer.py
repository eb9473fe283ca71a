"""`lipsweep transfer` on a finished tiny digits sweep: real Ray, real training."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from lipsweep.backends.local import LocalBackend
from lipsweep.cli import app
from lipsweep.config import SweepConfig
from lipsweep.plan import CellPlan, save_plan
from lipsweep.results import read_attempts

CONFIG = SweepConfig(
    sweep_id="x",
    datasets=("digits",),
    sizes=("XS",),
    methods=("aol",),
    budgets=("1h",),
    trials=5,
    search_budget="30s",
    batch_size=64,
    lr_range=(0.03, 0.3),
)
# Search 3 epochs, final 6, on the whole digits set: CRA@36 differs between configurations.
PLAN = CellPlan("digits", "XS", "aol", 1.0, {"30s": 3, "1h": 6})


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path / "cache"))


def transfer(out: Path, *options: str) -> str:
    result = CliRunner().invoke(app, ["transfer", str(out), *options], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.slow  # about 2 minutes on 2 busy cores: 6 search and final runs, 5 transfers
def test_transfer_trains_top_and_random_configurations_at_the_final_budget_and_ranks_them(
    tmp_path: Path, ray_session
) -> None:
    save_plan(tmp_path, PLAN)
    # Before the search has ended, transfer refuses in one line and writes nothing.
    CONFIG.save(tmp_path)
    refused = CliRunner().invoke(app, ["transfer", str(tmp_path)])
    assert refused.exit_code == 2 and "the search of digits-XS-aol has not ended" in refused.output
    LocalBackend().launch(CONFIG, tmp_path, [].append)
    sweep_rows = read_attempts(tmp_path)
    search = sweep_rows[sweep_rows["stage"] == "search"]

    text = transfer(tmp_path, "--top-k", "2", "--random", "2")
    runs = read_attempts(tmp_path / "transfer")
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}
    assert (runs["epochs_planned"] == 6).all() and (runs["eval_split"] == "val").all()
    assert set(runs["budget"]) == {"1h"}
    by_index = search.set_index("trial_index")
    order = ["cra_36", "accuracy", "trial_index"]  # ties: the higher accuracy, the lower index
    ranked = search.sort_values(order, ascending=[False, False, True])
    chosen = sorted(runs["trial_index"])
    assert set(ranked["trial_index"].head(2)) <= set(chosen)  # the top 2, plus 2 others
    for row in runs.itertuples():  # each trains its search configuration, only longer
        source = by_index.loc[row.trial_index]
        assert (row.lr, row.weight_decay, row.seed) == (
            source["lr"], source["weight_decay"], source["seed"]
        )  # fmt: skip
    expected = spearmanr(
        by_index.loc[runs["trial_index"], "cra_36"].to_numpy(), runs["cra_36"].to_numpy()
    ).statistic
    assert not math.isnan(expected)
    assert f"Spearman rho over 4 completed pairs: {expected:.3f}" in text
    assert "transfer of digits-XS-aol at 1h (6 epochs)" in text
    # The sweep's own results are untouched: transfer runs live in <sweep>/transfer/.
    assert sorted(read_attempts(tmp_path)["attempt_id"]) == sorted(sweep_rows["attempt_id"])

    # Again: the same configurations (the draw is seeded), nothing trained twice.
    again = transfer(tmp_path, "--top-k", "2", "--random", "2")
    rerun = read_attempts(tmp_path / "transfer")
    assert sorted(rerun["attempt_id"]) == sorted(runs["attempt_id"])
    assert (
        rerun.set_index("attempt_id")["ended_at"] == runs.set_index("attempt_id")["ended_at"]
    ).all()
    assert again.split("Spearman")[1] == text.split("Spearman")[1]
    # More than there are: every completed trial runs, and the user is told.
    every = transfer(tmp_path, "--top-k", "4", "--random", "3")
    assert "has 5 completed search trials at the search budget's epochs, not 7" in every
    assert len(read_attempts(tmp_path / "transfer")) == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--budget", "2h"], "--budget 2h is not a final budget of this sweep: choose from 1h"),
        (["--top-k", "1", "--random", "0"], "give two or more configurations in all"),
        (["--cell", "digits-S-aol"], "digits-S-aol is not a cell of sweep x"),
    ],
)
def test_bad_transfer_input_is_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    replace(CONFIG).save(tmp_path)
    save_plan(tmp_path, PLAN)
    result = CliRunner().invoke(app, ["transfer", str(tmp_path), *options], terminal_width=200)
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not (tmp_path / "transfer").exists()
