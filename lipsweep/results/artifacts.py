"""The models a sweep keeps: every final run's checkpoint, rebuilt ready to certify."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lipsweep.names import CHECKPOINT, AttemptStatus, Cell
from lipsweep.results.store import cell_attempts, read_attempts

if TYPE_CHECKING:
    from lipsweep.model import ConvNet


def load_model(
    folder: Path, dataset: str, size: str, method: str, budget: str | None = None
) -> ConvNet:
    """The trained final-run model of a cell (the largest budget unless ``budget`` is given),
    in eval mode and ready to certify: rebuilt from its config, weights from its checkpoint."""
    import torch

    from lipsweep.model import build_model

    finals = cell_attempts(read_attempts(folder), Cell(dataset, size, method), "final")
    if not finals.empty:
        finals = finals[finals["status"] == AttemptStatus.COMPLETED]
    if budget is not None and not finals.empty:
        finals = finals[finals["budget"] == budget]
    if finals.empty:
        raise FileNotFoundError(
            f"no completed final run of {method}-{size} on {dataset} in {folder}"
        )
    best = finals.sort_values("budget_s").iloc[-1]
    state = torch.load(
        folder / "attempts" / best["attempt_id"] / CHECKPOINT, map_location="cpu", weights_only=True
    )
    model = build_model(**state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval()
