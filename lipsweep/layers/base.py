"""The shared contract of every 1-Lipschitz layer: a parametrised weight, cached in eval mode.

A layer computes its constrained weight from its free parameters (``parametrize``) and applies
it to the input (``apply_weight``). In training the weight is recomputed on every forward so gradients
flow through the transform. In ``eval()`` it is computed once, without gradient, and reused.

The cache is keyed on the identity and version counter of every parameter and buffer, so any
in-place update (an optimizer step, ``load_state_dict``, ``copy_``) or a move with ``.to()``
makes the next eval forward recompute it. Writes through ``.data`` bypass the version counter:
after such surgery call ``clear_cache()`` (every cached weight is a self-consistent snapshot, so a
stale one is still 1-Lipschitz, only out of date). ``train()`` and ``_apply`` (``.to``, ``.double``)
also drop it explicitly. A stale eval weight (the reference BCOP bug) cannot survive this.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CacheKey = tuple[tuple[int, int, torch.dtype, torch.device], ...]


class CachedParametrization(nn.Module):
    """Base class: subclasses implement ``parametrize`` and ``apply_weight``.

    ``parametrize(training)`` returns whatever the layer needs to run (a kernel, a tuple of
    tensors, ...). ``training`` is False when the result will be cached for evaluation, so a
    layer can use more iterations or higher precision there. Layers whose weight depends on
    the input's spatial size (FFT-domain weights) set ``size_dependent = True`` and receive
    it as ``parametrize(training, spatial_size)``; their cache holds one weight per size.
    """

    size_dependent: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._eval_cache: dict[tuple[int, ...], tuple[CacheKey, Any]] = {}

    def parametrize(self, training: bool, *spatial_size: int) -> Any:
        raise NotImplementedError

    def apply_weight(self, x: torch.Tensor, weight: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:]) if self.size_dependent else ()
        if self.training:
            return self.apply_weight(x, self.parametrize(True, *size))
        return self.apply_weight(x, self.cached_weight(*size))

    def cached_weight(self, *spatial_size: int) -> Any:
        """The eval-mode weight, recomputed only when a parameter or buffer changed."""
        key = self._cache_key()
        entry = self._eval_cache.get(spatial_size)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                weight = self.parametrize(False, *spatial_size)
            if entry is not None:  # parameters changed: every cached size is stale
                self._eval_cache.clear()
            entry = self._eval_cache[spatial_size] = (key, weight)
        return entry[1]

    def clear_cache(self) -> None:
        self._eval_cache.clear()

    def _cache_key(self) -> CacheKey:
        tensors = [*self.parameters(recurse=False), *self.buffers(recurse=False)]
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def train(self, mode: bool = True) -> CachedParametrization:
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        self.clear_cache()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)


def require_square(name: str, in_channels: int, out_channels: int) -> None:
    """The paper's layers never change the channel count; say so instead of failing later."""
    if in_channels != out_channels:
        raise ValueError(
            f"{name} needs in_channels == out_channels (got {in_channels} and {out_channels}); "
            "change the channel count with ZeroChannelPad or FirstChannels instead"
        )
