"""lipsweep: 1-Lipschitz layers compared under GPU-hour budgets, as a sweep scheduler."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lipsweep.certify import Certificate
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


def certify_model(model: Any, data: Any, **options: Any) -> Certificate:
    """The certificate of a trained model (``lipsweep.certify.certify_model``): guaranteed
    Lipschitz bounds per stage and for the model, CRA from float64 logits, and a PGD-L2 attack
    on every certified point. ``data`` is a split from ``lipsweep.data.load_split`` or any
    iterable of (x, y) batches; ``options``: attack, attack_steps, attack_limit, progress."""
    import torch

    from lipsweep.certify import certify_model as certify
    from lipsweep.data import Batches, ImageSet

    if isinstance(data, ImageSet):
        device = next(model.parameters()).device
        data = Batches(data, 256, False, torch.Generator(), device)
    return certify(model, data, **options)


def load_exported(path: str | Path) -> Any:
    """A model written by ``lipsweep export`` (``lipsweep.export.Exported``): ``.module``, the
    plain torch module, and ``.record`` with its guaranteed ``lipschitz_bound``."""
    from lipsweep.export import load_exported as load

    return load(Path(path))
