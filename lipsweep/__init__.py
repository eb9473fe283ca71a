"""lipsweep: 1-Lipschitz layers compared under GPU-hour budgets, as a sweep scheduler."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lipsweep.model import ConvNet

try:
    __version__ = metadata.version("lipsweep")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def load_model(
    folder: str | Path, dataset: str, size: str, method: str, budget: str | None = None
) -> ConvNet:
    """The trained final-run model of a sweep cell, in eval mode, ready to certify.

    Imported lazily so that ``import lipsweep`` (and the analysis package) needs no torch."""
    from lipsweep.results.artifacts import load_model as load

    return load(Path(folder), dataset, size, method, budget)
