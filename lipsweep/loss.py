"""The paper's training loss: offset cross-entropy (1LC Sec. 3; loss of the AOL paper).

    z' = z - m onehot(y),   loss = tau CE(z' / tau, y),

with margin m = 2 sqrt(2) 36/255 (robustness at twice the certified radius 36/255 for a
1-Lipschitz model) and temperature tau = 0.25.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_MARGIN = 2 * math.sqrt(2) * 36 / 255
DEFAULT_TEMPERATURE = 0.25


def offset_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float = DEFAULT_MARGIN,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """Mean over the batch of tau CE((z - m onehot(y)) / tau, y) for logits z (B, classes)."""
    onehot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    offset = logits - margin * onehot
    return temperature * F.cross_entropy(offset / temperature, labels)


class OffsetCrossEntropy(nn.Module):
    """``offset_cross_entropy`` as a module with fixed margin and temperature."""

    def __init__(
        self, margin: float = DEFAULT_MARGIN, temperature: float = DEFAULT_TEMPERATURE
    ) -> None:
        super().__init__()
        self.margin = margin
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return offset_cross_entropy(logits, labels, self.margin, self.temperature)

    def extra_repr(self) -> str:
        return f"margin={self.margin:.4f}, temperature={self.temperature}"
