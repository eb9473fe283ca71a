"""Datasets in their official on-disk formats, held in memory as uint8 tensors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the trainer need to know about a dataset."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]  # per-channel mean in [0, 1]; inputs are centred only (std 1)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.49139968, 0.48215841, 0.44653091)),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409)),
    "tiny-imagenet": DatasetInfo("tiny-imagenet", 200, 3, 64, (0.485, 0.456, 0.406)),
    # scikit-learn's bundled handwritten digits (8x8 grey, 16 levels): needs no download.
    "digits": DatasetInfo("digits", 10, 1, 8, (0.30,)),
}
