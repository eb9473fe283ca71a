"""`lipsweep rank` as a function: the paper's numbers, a real sweep, an empty folder."""

from pathlib import Path

import pandas as pd
from rich.console import Console

from analysis.load import load_trials, method_name
from analysis.rank_command import count_text, print_ranking, run_rank
from analysis.stability import count_probabilities


def console() -> Console:
    return Console(record=True, width=160, color_system=None)


def test_rank_paper_prints_ranking_and_table2() -> None:
    out = console()
    code = run_rank([], [1, 3, 10], 36, "24h", True, None, out)  # no figures: they are slow
    text = out.export_text()
    assert code == 0
    assert "paper: ranking by cra_36, budget 24h" in text
    assert "paper, 24h: Tiny ImageNet" in text
    assert "10h" not in text


def test_rank_real_sweep_writes_figures(real_sweep: Path, tmp_path: Path) -> None:
    out = console()
    code = run_rank([real_sweep], [1, 3], 36, None, False, tmp_path, out)
    text = out.export_text()
    assert code == 0
    assert "SOC" in text and "CPL" in text
    assert "LOT" in text  # listed with zero counts, its OOM trial left out
    names = {p.name for p in tmp_path.iterdir()}
    assert {"training_time.png", "training_time.svg", "cra_gpu_hours.png", "pareto.png"} <= names
    assert f"{tmp_path / 'pareto.png'} (and .svg)" in " ".join(text.split())
    # AOL has two seeds: the stability and neighbour tables, and the radar's seed bands.
    assert "ranking stability, budget" in text
    assert "neighbours in each cell" in text
    assert "bootstrap draws over seeds" in (tmp_path / "radar.svg").read_text()
    # ... and each method's top-k counts with their probabilities over the seeds.
    words = " ".join(text.replace("│", " ").split())
    assert "top-k counts, budget 24h: count (its probability over seeds)" in words
    counts = count_probabilities(load_trials([real_sweep]), "cra_36", [1, 3])
    for method, rows in counts.groupby("method"):
        cells = [count_text(rows[rows["k"] == k]) for k in (1, 3)]
        assert " ".join([method_name(method), *cells]) in words


def test_rank_empty_folder_fails(tmp_path: Path) -> None:
    out = console()
    assert run_rank([tmp_path], [1, 3, 10], 36, None, False, None, out) == 1
    assert out.export_text().startswith("error: no completed")


def test_rank_paper_orders_budgets_by_duration() -> None:
    """2h before 10h before 24h (not the string order 10h, 24h, 2h), in every kind of table."""
    out = console()
    assert run_rank([], [1, 3, 10], 36, None, True, None, out) == 0
    text = " ".join(out.export_text().split())
    titles = ["paper: ranking by cra_36, budget {}", "paper, {}: CIFAR-10"]
    titles += [f"paper: best models, {d}, {{}}" for d in ("cifar10", "cifar100", "tiny-imagenet")]
    for title in titles:
        places = [text.index(title.format(budget)) for budget in ("2h", "10h", "24h")]
        assert places == sorted(places), title


def test_ranking_table_explains_its_columns() -> None:
    out = console()
    run_rank([], [1, 3, 10], 36, "24h", True, None, out)
    words = " ".join(out.export_text().split())
    assert "score = 3 top1 + 2 top3 + top10" in words and "in the k best of their dataset" in words
    out = console()
    run_rank([], [2, 5], 36, "24h", True, None, out)
    assert "score = 2 top2 + top5" in " ".join(out.export_text().split())


def tied_models() -> pd.DataFrame:
    """digits: three methods, all at CRA 0; cifar10: two at 0.42; cifar100: distinct values."""
    rows = [("digits", m, 0.0) for m in ("aol", "cpl", "sll")]
    rows += [("cifar10", m, 0.42) for m in ("aol", "soc")]
    rows += [("cifar100", "aol", 0.3), ("cifar100", "soc", 0.31)]
    frame = pd.DataFrame(rows, columns=["dataset", "method", "cra_36"])
    return frame.assign(budget="24h", size="XS", status="completed", accuracy=0.5)


def test_tied_groups_are_said_not_to_be_separated() -> None:
    out = console()
    print_ranking(tied_models(), [1, 3], "cra_36", "hand", out)
    lines = [line for line in out.export_text().splitlines() if "does not separate" in line]
    assert sorted(line.split(":")[0] for line in lines) == ["cifar10, 24h", "digits, 24h"]
    assert any(line.startswith("digits, 24h: every method has cra_36 = 0:") for line in lines)
    assert any(line.startswith("cifar10, 24h: every method has cra_36 = 0.4200:") for line in lines)


def test_rank_paper_has_no_cra_72() -> None:
    assert run_rank([], [1], 72, None, True, None, console()) == 2
