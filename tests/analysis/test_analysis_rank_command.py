"""`lipsweep rank` as a function: the paper's numbers, a real sweep, an empty folder."""

from pathlib import Path

from rich.console import Console

from analysis.rank_command import run_rank


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


def test_rank_empty_folder_fails(tmp_path: Path) -> None:
    out = console()
    assert run_rank([tmp_path], [1, 3, 10], 36, None, False, None, out) == 1
    assert "no completed" in out.export_text()


def test_rank_paper_has_no_cra_72() -> None:
    assert run_rank([], [1], 72, None, True, None, console()) == 2
