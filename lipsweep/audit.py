"""The Lipschitz audit of a layer: exact Jacobians on small inputs, before and after adversarial
training steps, in training and in eval mode, the eval cache, and the guaranteed bound.

Any layer can be audited: a registered method ("soc") or a user's own class given as an import
path ("mypkg.layers:MyConv", constructed as ``cls(channels, channels, kernel_size)``). A layer
is 1-Lipschitz when every check holds:

* eval: the exact Jacobian norm (autograd, float64) <= 1 + EVAL_SLACK at several random inputs
  of several sizes (H != W, odd and even), at initialisation and after ``ADVERSARIAL_STEPS``
  optimiser steps that push the layer's output gaps up;
* training mode: the same <= 1 + TRAIN_SLACK (training may use cheaper approximations: SOC's
  5-term series reaches 1.0047, CPL's first power step ~1.6 before its warm-up; the paper's
  layers are judged in eval, which is what certificates use);
* cache: after an in-place change of every parameter, the eval output equals that of a fresh
  copy of the layer with the same state (a stale cached weight would differ);
* bound: where ``lipsweep.bounds`` knows the layer, its guaranteed bound >= the measured norm.

``gate_plugins`` is the gate a user's layer passes before a sweep or bench uses it: these checks
at the kernel sizes the ConvNet builds it with (1 and 3), and a guaranteed bound of its own
(``lipschitz_bound(input_hw)``, as final runs certify with proven bounds only).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import torch
from torch import nn

from lipsweep.bounds import layer_bound
from lipsweep.errors import InputError
from lipsweep.layers.registry import SPECS, plugin_path

EVAL_SLACK = 1e-6
TRAIN_SLACK = 0.01
SIZES = ((5, 5), (6, 4))
POINTS = 3
ADVERSARIAL_STEPS = 20
GATE_KERNELS = (1, 3)  # the ConvNet's first conv and head are 1 x 1, its blocks 3 x 3


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float

    @property
    def passed(self) -> bool:
        return self.value <= self.limit


def layer_class(method: str) -> type[nn.Module]:
    """A registered method's class, or a class from an import path "package.module:Class"."""
    if method in SPECS:
        return SPECS[method].layer_class()
    path = plugin_path(method)
    if path is None:
        raise InputError(
            f"unknown method {method!r}: give one of {', '.join(SPECS)} or an import path "
            "such as mypkg.layers:MyConv"
        )
    module, _, name = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise InputError(f"cannot import {method!r}: {error}") from None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise InputError(f"{method!r} is not a torch.nn.Module class")
    return found


def jacobian_norm(layer: nn.Module, x: torch.Tensor) -> float:
    """sigma_max of the layer's Jacobian at x (C, H, W), float64."""
    jacobian = torch.autograd.functional.jacobian(
        lambda z: layer(z.view(1, *x.shape)).reshape(-1), x.reshape(-1)
    )
    return torch.linalg.matrix_norm(jacobian, ord=2).item()


def norms_by_size(
    layer: nn.Module, channels: int, generator: torch.Generator
) -> dict[tuple[int, int], float]:
    """Per input size of SIZES, the largest Jacobian norm over POINTS random inputs."""
    return {
        size: max(
            jacobian_norm(layer, torch.randn(channels, *size, generator=generator).double())
            for _ in range(POINTS)
        )
        for size in SIZES
    }


def largest_norm(layer: nn.Module, channels: int, generator: torch.Generator) -> float:
    return max(norms_by_size(layer, channels, generator).values())


def adversarial_steps(layer: nn.Module, channels: int, generator: torch.Generator) -> None:
    """Optimiser steps (training mode) that raise ||f(x) - f(y)|| / ||x - y|| on close pairs:
    what a training run that rewarded expansion would do to the parameters."""
    layer.train()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(ADVERSARIAL_STEPS):
        x = torch.randn(8, channels, *SIZES[0], generator=generator).double()
        y = x + 1e-3 * torch.randn(x.shape, generator=generator).double()
        ratio = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        optimizer.zero_grad()
        (-ratio.mean()).backward()
        optimizer.step()


def audit_layer(
    cls: type[nn.Module], channels: int = 4, kernel_size: int = 3, seed: int = 0
) -> list[Check]:
    """Every check of the module docstring for ``cls(channels, channels, kernel_size)``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    layer = cls(channels, channels, kernel_size).double()
    checks = [
        Check("train, at init", largest_norm(layer.train(), channels, generator), 1 + TRAIN_SLACK),
        Check("eval, at init", largest_norm(layer.eval(), channels, generator), 1 + EVAL_SLACK),
    ]
    adversarial_steps(layer, channels, generator)
    trained = largest_norm(layer.train(), channels, generator)
    checks.append(Check("train, after adversarial steps", trained, 1 + TRAIN_SLACK))
    evaluated = norms_by_size(layer.eval(), channels, generator)
    checks.append(Check("eval, after adversarial steps", max(evaluated.values()), 1 + EVAL_SLACK))
    try:  # measured - bound at each size: <= 0 up to the Jacobian's own round-off
        excess = max(norm - layer_bound(layer, size) for size, norm in evaluated.items())
        checks.append(Check("measured - guaranteed bound", excess, 1e-12))
    except TypeError:  # a layer lipsweep.bounds does not know: no guaranteed bound to check
        pass
    fresh = cls(channels, channels, kernel_size).double()
    checks.append(cache_check(layer, fresh, channels, generator))
    return checks


def cache_check(
    layer: nn.Module, fresh: nn.Module, channels: int, generator: torch.Generator
) -> Check:
    """Max |difference| of eval outputs between the layer after an in-place parameter change
    and ``fresh`` (a new instance) loaded with its state: round-off unless a stale cached
    weight survived the change."""
    x = torch.randn(2, channels, *SIZES[1], generator=generator).double()
    layer.eval()
    with torch.no_grad():
        layer(x)  # fill the cache
        for parameter in layer.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator).double())
        fresh.load_state_dict(layer.state_dict())
        difference = (layer(x) - fresh.eval()(x)).abs().max().item()
    return Check("eval cache follows in-place changes", difference, 1e-9)


def gate_plugins(methods: Sequence[str]) -> dict[str, dict]:
    """Audit every plug-in among ``methods`` (see the module docstring); the first that fails
    is refused with an InputError naming the measured norm. Returns, per plug-in, the record a
    sweep stores in its audit.json."""
    return {method: plugin_record(method) for method in methods if plugin_path(method)}


@functools.cache  # a launch gates before Ray starts and again as it stores the sweep
def plugin_record(method: str) -> dict:
    path = plugin_path(method)
    cls = layer_class(method)
    if not callable(getattr(cls, "lipschitz_bound", None)):
        raise InputError(
            f"{method} has no lipschitz_bound(input_hw) method: final runs certify with a "
            "proven bound only (README: Your own layer)"
        )
    checks = {k: audit_layer(cls, kernel_size=k) for k in GATE_KERNELS}
    for k, check in ((k, c) for k, found in checks.items() for c in found):
        if not check.passed:
            raise InputError(
                f"{method} is refused by the Lipschitz audit at kernel size {k}: "
                f"{check.name} {check.value:.6g} > {check.limit:.6g} "
                f"(details: lipsweep audit {path})"
            )
    return {
        "class": path,
        "passed": True,
        "audited_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "checks": {str(k): [asdict(c) for c in found] for k, found in checks.items()},
    }
