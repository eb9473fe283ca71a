"""The unconstrained baseline: a plain convolution (timing and memory comparisons only)."""

from __future__ import annotations

from torch import nn


class StandardConv2d(nn.Conv2d):
    """``nn.Conv2d`` with 'same' circular padding and PyTorch's default init, as in the paper."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding="same", padding_mode="circular"
        )
