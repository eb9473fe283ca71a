"""The seven 1-Lipschitz convolutions of the paper, AOC and BRO (ICML 2025), Sandwich (ICML 2023)
and the standard conv, in one registry.

Every class is built as ``LAYERS[name](in_channels, out_channels, kernel_size)`` and maps
(B, C, H, W) to (B, C, H, W) for any H, W. What else is known of a method (its head, display
name, Table 1 entry, assumed Lipschitz constant) is its ``MethodSpec`` in
``lipsweep.layers.registry``. ``LAYERS``, ``LINEAR_HEADS`` and the classes are imported on first
use (PEP 562), so ``import lipsweep.layers`` and the registry need no torch.
"""

from __future__ import annotations

from typing import Any

from lipsweep.layers.registry import METHODS, SPECS, MethodSpec, display_name, spec

_CLASSES = {
    "AOCConv2d": "aoc",
    "AOLConv2d": "aol",
    "BCOPConv2d": "bcop",
    "BjorckLinear": "bcop",
    "BROConv2d": "bro",
    "CPLConv2d": "cpl",
    "CayleyConv2d": "cayley",
    "CayleyLinear": "cayley",
    "LOTConv2d": "lot",
    "SLLConv2d": "sll",
    "SandwichConv2d": "sandwich",
    "SOCConv2d": "soc",
    "StandardConv2d": "standard",
    "FirstChannels": "channels",
    "MaxMin": "channels",
    "ZeroChannelPad": "channels",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "LAYERS":
        value: Any = {method: s.layer_class() for method, s in SPECS.items()}
    elif name == "LINEAR_HEADS":
        value = {method: s.head_class() for method, s in SPECS.items() if s.head}
    elif name in _CLASSES:
        value = getattr(importlib.import_module(f"lipsweep.layers.{_CLASSES[name]}"), name)
    else:
        raise AttributeError(f"module 'lipsweep.layers' has no attribute {name!r}")
    globals()[name] = value  # built once
    return value


__all__ = ["LAYERS", "LINEAR_HEADS", "METHODS", "SPECS", "MethodSpec", "display_name", "spec"]
__all__ += list(_CLASSES)
