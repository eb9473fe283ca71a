"""The models a sweep keeps: every final run's checkpoint, rebuilt ready to certify."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lipsweep.names import CHECKPOINT, AttemptStatus
from lipsweep.results.store import read_attempts

if TYPE_CHECKING:
    from lipsweep.model import ConvNet


@dataclass(frozen=True)
class FinalModel:
    """Where one final run's model lives, and what it is."""

    attempt_id: str
    dataset: str
    size: str
    method: str
    budget: str
    checkpoint: Path


def final_models(
    folder: Path,
    dataset: str | None = None,
    size: str | None = None,
    method: str | None = None,
    budget: str | None = None,
) -> list[FinalModel]:
    """The completed final run of every cell of a sweep folder (the largest budget unless
    ``budget`` is given), optionally only those of ``dataset``, ``size``, ``method``."""
    attempts = read_attempts(folder)
    if attempts.empty:
        return []
    finals = attempts[
        (attempts["stage"] == "final") & (attempts["status"] == AttemptStatus.COMPLETED)
    ]
    for column, value in (("dataset", dataset), ("size", size), ("method", method)):
        if value is not None:
            finals = finals[finals[column] == value]
    if budget is not None:
        finals = finals[finals["budget"] == budget]
    best = finals.sort_values("budget_s").drop_duplicates(
        ["dataset", "size", "method"], keep="last"
    )
    return [
        FinalModel(
            row.attempt_id,
            row.dataset,
            row.size,
            row.method,
            row.budget,
            folder / "attempts" / row.attempt_id / CHECKPOINT,
        )
        for row in best.sort_values(["dataset", "size", "method"]).itertuples()
    ]


def load_checkpoint(path: Path) -> ConvNet:
    """The model of an attempt's checkpoint file, rebuilt from its config, in eval mode."""
    import torch

    from lipsweep.model import build_model

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(**state["model_config"])
    model.load_state_dict(state["model"])
    return model.eval()


def checkpoint_config(path: Path) -> dict[str, str]:
    """The model config (method, size, dataset) stored in an attempt's checkpoint."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {key: str(value) for key, value in state["model_config"].items()}


def load_model(
    folder: Path, dataset: str, size: str, method: str, budget: str | None = None
) -> ConvNet:
    """The trained final-run model of a cell (the largest budget unless ``budget`` is given),
    in eval mode and ready to certify: rebuilt from its config, weights from its checkpoint."""
    found = final_models(folder, dataset, size, method, budget)
    if not found:
        raise FileNotFoundError(
            f"no completed final run of {method}-{size} on {dataset} in {folder}"
        )
    return load_checkpoint(found[0].checkpoint)
