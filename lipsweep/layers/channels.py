"""Channel-wise pieces of the ConvNet: the MaxMin activation and the two channel projections.

All three are 1-Lipschitz: MaxMin permutes each pair's values (it is a sort of two numbers),
ZeroChannelPad is an isometric embedding and FirstChannels an orthogonal projection.
"""

from __future__ import annotations

import torch
from torch import nn


class MaxMin(nn.Module):
    """Sort each adjacent channel pair (2j, 2j+1) into (max, min). An odd last channel passes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        paired = x[:, : channels - channels % 2]
        a, b = paired.unflatten(1, (-1, 2)).unbind(dim=2)
        out = torch.stack((torch.maximum(a, b), torch.minimum(a, b)), dim=2).flatten(1, 2)
        if channels % 2:
            out = torch.cat((out, x[:, -1:]), dim=1)
        return out


class FirstChannels(nn.Module):
    """Keep the first ``channels`` channels (dimension 1) and drop the rest."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.channels:
            raise ValueError(f"FirstChannels({self.channels}) got only {x.shape[1]} channels")
        return x[:, : self.channels]

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class ZeroChannelPad(nn.Module):
    """Append all-zero channels after the input's channels, up to ``channels`` in total."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = self.channels - x.shape[1]
        if missing < 0:
            raise ValueError(f"ZeroChannelPad({self.channels}) got {x.shape[1]} channels")
        zeros = x.new_zeros(x.shape[0], missing, *x.shape[2:])
        return torch.cat((x, zeros), dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
