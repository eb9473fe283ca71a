"""The analysis package runs without torch (on a laptop)."""

import subprocess
import sys

SCRIPT = """
import sys
import analysis, analysis.figures, analysis.load, analysis.rank_command, analysis.ratings
from analysis.paper import paper_results
from analysis.ranking import rank_methods
from analysis.tables import table2
assert rank_methods(paper_results("24h")).iloc[0]["method"] == "soc"
table2(paper_results())
assert "torch" not in sys.modules, "analysis imported torch"
print("ok")
"""


def test_analysis_does_not_import_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
