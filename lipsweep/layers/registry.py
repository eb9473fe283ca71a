"""What the rest of lipsweep knows about each method, declared once (no torch needed here).

Adding a method means a module under ``lipsweep/layers/`` and one ``MethodSpec`` below: the
model, the certificates, the plans, the benchmarks and the analysis read everything from it.
Classes are named as ``"module:Class"`` and imported on first use, so the CLI's validation,
``lipsweep status`` and the analysis package never import torch.

A user's own layer needs no entry here: a method may also be an import path
(``mypkg.layers:MyConv``, kept as ``mypkg.layers.MyConv`` in ids and paths) or the name of an
entry point in the ``lipsweep.layers`` group of an installed package. Such a plug-in is built
as ``Class(c, c, k)`` (also as the 1 x 1 head) and must pass ``lipsweep.audit`` before a sweep
or bench uses it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Complexity:
    """One Table 1 entry (PAPER.md 5.6) and its exponents of c and s (None: none given)."""

    text: str
    c: int | None
    s: int | None

    def __str__(self) -> str:
        return self.text if self.c is None else f"{self.text} (c^{self.c} s^{self.s})"


def _t1(text: str, c: int | None, s: int | None) -> Complexity:
    return Complexity(text, c, s)


@dataclass(frozen=True)
class MethodSpec:
    """One method of the registry.

    ``assumed_lipschitz`` is the constant certificates use while training (1 for a 1-Lipschitz
    layer; infinity for the unconstrained standard conv, which certifies nothing). ``head`` is
    the 1-Lipschitz dense layer the paper uses after Flatten (None: a 1 x 1 conv of the method).
    ``init_by_role`` passes ``init="dirac"`` inside blocks and ``"orthogonal"`` elsewhere (AOL);
    ``takes_input_size`` passes the input resolution (CPL's power-iteration buffer).
    ``table1`` holds Table 1's parameter-transform time, input-op time, parameter memory and
    input memory (C = b s^2 c^2 k^2, M = b s^2 c, P = c^2 k^2; t, t1, t2 inner iterations).
    """

    name: str
    display: str
    layer: str  # "module:Class" of the convolution
    table1: dict[str, Complexity]
    head: str | None = None  # "module:Class" of the dense head
    assumed_lipschitz: float = 1.0
    init_by_role: bool = False
    takes_input_size: bool = False

    def layer_class(self) -> type:
        return _load(self.layer)

    def head_class(self) -> type | None:
        return _load(self.head) if self.head else None


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


_L = "lipsweep.layers."
SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("standard", "Standard", _L + "standard:StandardConv2d",
                   {"param_s": _t1("-", None, None), "input_s": _t1("C", 2, 2),
                    "param_mem": _t1("P", 2, 0), "input_mem": _t1("M", 1, 2)},
                   assumed_lipschitz=math.inf),
        MethodSpec("aol", "AOL", _L + "aol:AOLConv2d",
                   {"param_s": _t1("c^3 k^4", 3, 0), "input_s": _t1("C", 2, 2),
                    "param_mem": _t1("5P", 2, 0), "input_mem": _t1("M", 1, 2)},
                   init_by_role=True),
        MethodSpec("bcop", "BCOP", _L + "bcop:BCOPConv2d",
                   {"param_s": _t1("c^3 k t + c^3 k^3", 3, 0), "input_s": _t1("C", 2, 2),
                    "param_mem": _t1("c^2 k t + c^2 k^3", 2, 0), "input_mem": _t1("M", 1, 2)},
                   head=_L + "bcop:BjorckLinear"),
        MethodSpec("cpl", "CPL", _L + "cpl:CPLConv2d",
                   {"param_s": _t1("s^2 c^2 k^2", 2, 2), "input_s": _t1("2C", 2, 2),
                    "param_mem": _t1("P + s^2 c", 2, 0), "input_mem": _t1("3M", 1, 2)},
                   takes_input_size=True),
        MethodSpec("cayley", "Cayley", _L + "cayley:CayleyConv2d",
                   {"param_s": _t1("s^2 c^3", 3, 2), "input_s": _t1("b s^2 c^2", 2, 2),
                    "param_mem": _t1("3/2 s^2 c^2", 2, 2), "input_mem": _t1("5/2 M", 1, 2)},
                   head=_L + "cayley:CayleyLinear"),
        MethodSpec("lot", "LOT", _L + "lot:LOTConv2d",
                   {"param_s": _t1("4 s^2 c^3 t", 3, 2), "input_s": _t1("b s^2 c^2", 2, 2),
                    "param_mem": _t1("4 s^2 c^2 t", 2, 2), "input_mem": _t1("3M", 1, 2)}),
        MethodSpec("sll", "SLL", _L + "sll:SLLConv2d",
                   {"param_s": _t1("c^3 k^4", 3, 0), "input_s": _t1("2C", 2, 2),
                    "param_mem": _t1("5P", 2, 0), "input_mem": _t1("3M", 1, 2)}),
        MethodSpec("soc", "SOC", _L + "soc:SOCConv2d",
                   {"param_s": _t1("c^2 k^2 t2", 2, 0), "input_s": _t1("C t1", 2, 2),
                    "param_mem": _t1("P", 2, 0), "input_mem": _t1("M t1", 1, 2)}),
        # Not in the paper (ICML 2025): its Table 1 row is our count, marked "(ours)".
        MethodSpec("bro", "BRO", _L + "bro:BROConv2d",
                   {"param_s": _t1("s^2 c^3 (ours)", 3, 2), "input_s": _t1("b s^2 c^2 (ours)", 2, 2),
                    "param_mem": _t1("2 s^2 c^2 (ours)", 2, 2), "input_mem": _t1("3M (ours)", 1, 2)}),
        # Not in the paper (ICML 2025): one plain conv at inference, like BCOP at half its Bjorck work.
        MethodSpec("aoc", "AOC", _L + "aoc:AOCConv2d",
                   {"param_s": _t1("c^3 k t + c^3 k^3 (ours)", 3, 0), "input_s": _t1("C (ours)", 2, 2),
                    "param_mem": _t1("c^2 k t + 2k c^2 + c^2 k^3 (ours)", 2, 0), "input_mem": _t1("M (ours)", 1, 2)}),
        # Not in the paper's comparison (ICML 2023; left out for vanishing gradients).
        MethodSpec("sandwich", "Sandwich", _L + "sandwich:SandwichConv2d",
                   {"param_s": _t1("s^2 c^3 (ours)", 3, 2), "input_s": _t1("2 b s^2 c^2 (ours)", 2, 2),
                    "param_mem": _t1("4 s^2 c^2 (ours)", 2, 2), "input_mem": _t1("6M (ours)", 1, 2)}),
    )
}  # fmt: skip
METHODS: tuple[str, ...] = tuple(name for name in SPECS if name != "standard")


PLUGIN_GROUP = "lipsweep.layers"  # entry points: name = "package.module:Class"


def method_key(method: str) -> str:
    """The name a method goes by in ids, paths and sweep.json: an import path's ':' as '.'."""
    return method.replace(":", ".")


def plugin_path(method: str) -> str | None:
    """ "module:Class" of a user's layer given as an import path ("pkg.mod:Class" or
    "pkg.mod.Class") or as a ``lipsweep.layers`` entry point; None for any other name."""
    if method in SPECS:
        return None
    if ":" in method or "." in method:
        module, _, name = method.replace(":", ".").rpartition(".")
        return f"{module}:{name}" if module and name else None
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if entry.name == method:
            return entry.value
    return None


def is_plugin(method: str) -> bool:
    return plugin_path(method) is not None


def spec(method: str) -> MethodSpec:
    """The spec of ``method`` (a plug-in gets a plain one: no Table 1 entry, a 1 x 1 head of
    its own class); ValueError naming the known methods otherwise."""
    if method in SPECS:
        return SPECS[method]
    path = plugin_path(method)
    if path is None:
        raise ValueError(
            f"unknown method {method!r}; known: {', '.join(SPECS)}, an import path such as "
            f"mypkg.layers:MyConv, or a {PLUGIN_GROUP!r} entry point"
        )
    return MethodSpec(method, path.rpartition(":")[2], path, table1={})


def display_name(method: str) -> str:
    """The paper's spelling of a method key ("cayley" -> "Cayley"); a plug-in's class name."""
    if method in SPECS:
        return SPECS[method].display
    path = plugin_path(method)
    return path.rpartition(":")[2] if path else method
