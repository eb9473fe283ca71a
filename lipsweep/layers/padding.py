"""Circular 'same' padding, shared by the layers whose conv is a plain ``F.conv2d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def circular_same_pad(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Pad (B, C, H, W) circularly so a k x k convolution keeps H, W, for any H, W >= 1.

    Like ``nn.Conv2d(padding='same', padding_mode='circular')``, the odd pixel of an even
    kernel goes after. Inputs smaller than the padding wrap around more than once.
    """
    before = (kernel_size - 1) // 2
    after = kernel_size - 1 - before
    height, width = x.shape[-2:]
    if after == 0:  # k = 1: no padding, and no copy
        return x
    if after <= min(height, width):
        return F.pad(x, (before, after, before, after), mode="circular")
    rows = torch.arange(-before, height + after, device=x.device) % height
    cols = torch.arange(-before, width + after, device=x.device) % width
    return x[..., rows[:, None], cols]
