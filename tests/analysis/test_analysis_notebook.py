"""analysis/notebooks/ranking.ipynb runs top to bottom on a real (tiny) sweep."""

import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "analysis" / "notebooks" / "ranking.ipynb"


def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """ "python3" if it runs this interpreter, else a kernelspec for it in a temporary prefix."""
    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec("python3")
        if Path(spec.argv[0]).name.startswith("python") and sys.prefix in spec.resource_dir:
            return "python3"
    except Exception:
        pass
    from ipykernel.kernelspec import install

    install(prefix=str(tmp_path / "kernels"), kernel_name="lipsweep-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels" / "share" / "jupyter"))
    return "lipsweep-test"


def test_notebook_runs(real_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSWEEP_SWEEP_DIR", str(real_sweep))
    monkeypatch.setenv("LIPSWEEP_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parents[2]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    name = kernel_name(tmp_path, monkeypatch)
    client = NotebookClient(
        notebook, timeout=120, kernel_name=name, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert (tmp_path / "figures" / "radar.png").is_file()
    assert (tmp_path / "figures" / "pareto.png").is_file()
    shown = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "cra_36_ci95" in shown and "p_place1" in shown  # the seed intervals and stability
    assert "p_beats" in shown  # each method against its neighbour
    assert re.search(r"budget\s+method\s+k\s+count\s+p\b", shown)  # top-k count probabilities
    assert "bootstrap draws over seeds" in (tmp_path / "figures" / "radar.svg").read_text()
