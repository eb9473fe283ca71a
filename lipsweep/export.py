"""Export a final run's model as a plain PyTorch program that runs without lipsweep.

``freeze`` turns the eval model into fixed modules holding the weights the eval layers cache:
``nn.Conv2d`` (circular padding) where a method's inference is one conv (AOL, BCOP, AOC, the
standard conv), ``nn.Linear`` for the dense heads, and the fixed forms of ``lipsweep.layers.fixed``
otherwise (per-frequency matrices for Cayley, LOT and BRO; residual steps with fixed kernels for
CPL and SLL; SOC's fixed series). ``export_checkpoint`` traces that with ``torch.export`` (the
batch size left free) and saves the program with a ``lipsweep.json`` record: the cell, the
input shape, and the guaranteed Lipschitz bound of the frozen model (``lipsweep.bounds``),
which equals the trained model's. ``torch.export.load(path).module()`` runs it with torch alone.

Weights always come from a checkpoint file: there is no way to export a model before its
trained weights are loaded (the pitfall of exporting a freshly built network).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsweep.atomic import write_atomic
from lipsweep.bounds import Size, model_bound, output_size
from lipsweep.data import DATASETS
from lipsweep.layers.aoc import AOCConv2d
from lipsweep.layers.aol import AOLConv2d
from lipsweep.layers.bcop import BCOPConv2d, BjorckLinear
from lipsweep.layers.bro import BROConv2d
from lipsweep.layers.cayley import CayleyConv2d, CayleyLinear
from lipsweep.layers.cpl import CPLConv2d
from lipsweep.layers.fixed import ResidualStep, SandwichStep, SkewSeries, SpectralConv
from lipsweep.layers.lot import LOTConv2d
from lipsweep.layers.sandwich import SandwichConv2d
from lipsweep.layers.sll import SLLConv2d
from lipsweep.layers.soc import SOCConv2d
from lipsweep.model import ConvNet
from lipsweep.results.artifacts import checkpoint_config, load_checkpoint

RECORD = "lipsweep.json"  # the extra file of the saved program
FORMATS = ("pt2", "onnx")


class NotExportable(Exception):
    """A model the chosen format cannot express (a plug-in layer, complex matrices in ONNX)."""


@dataclass(frozen=True)
class Exported:
    """A loaded export: the plain module and what lipsweep recorded with it."""

    module: nn.Module
    record: dict[str, Any]

    @property
    def lipschitz_bound(self) -> float:
        return float(self.record["lipschitz_bound"])


def freeze(model: ConvNet) -> nn.Sequential:
    """The eval model as fixed modules (module docstring), stage names kept."""
    model.eval()
    frozen, _ = _freeze(model, (model.input_size, model.input_size))
    return frozen.eval()


def _freeze(module: nn.Module, size: Size) -> tuple[nn.Module, Size]:
    if not isinstance(module, nn.Sequential):
        return freeze_stage(module, size), output_size(module, size)
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    for name, child in module.named_children():
        stages[name], size = _freeze(child, size)
    return nn.Sequential(stages), size


def freeze_stage(module: nn.Module, size: Size) -> nn.Module:
    """One stage's fixed form; a parameter-free stage is kept as it is."""
    with torch.no_grad():
        if isinstance(module, AOLConv2d | BCOPConv2d | AOCConv2d):
            weight = module.cached_weight()
            kernel, bias = weight if isinstance(weight, tuple) else (weight, module.bias)
            return circular_conv(kernel, bias)
        if isinstance(module, nn.Conv2d):  # the standard conv
            return circular_conv(module.weight, module.bias, module)
        if isinstance(module, BjorckLinear | CayleyLinear):
            weight = module.cached_weight()
            matrix, bias = weight if isinstance(weight, tuple) else (weight, module.bias)
            return linear(matrix, bias)
        if isinstance(module, CayleyConv2d):
            return SpectralConv(module.cached_weight(*_hw(size)), module.bias, 0, _hw(size))
        if isinstance(module, LOTConv2d | BROConv2d):
            weight = module.cached_weight(*_hw(size))
            return SpectralConv(weight, module.bias, module.padding, _hw(size))
        if isinstance(module, SandwichConv2d):
            a_adjoint, b = module.cached_weight(*_hw(size))
            return SandwichStep(a_adjoint, b, module.psi, module.bias, _hw(size))
        if isinstance(module, CPLConv2d):
            kernel, scale = module.cached_weight(*_hw(size))
            return ResidualStep(kernel, module.bias, scale)
        if isinstance(module, SLLConv2d):
            kernel, scale = module.cached_weight()
            return ResidualStep(kernel, module.bias, scale)
        if isinstance(module, SOCConv2d):
            kernel, bias = module.cached_weight()
            return SkewSeries(kernel, bias, module.eval_terms)
    if any(True for _ in module.parameters()):
        raise NotExportable(f"export knows no fixed form of {type(module).__name__}")
    return module


def _hw(size: Size) -> tuple[int, int]:
    if size is None:
        raise TypeError("a convolution after Flatten")
    return size


def circular_conv(
    kernel: torch.Tensor, bias: torch.Tensor | None, like: nn.Conv2d | None = None
) -> nn.Conv2d:
    """``nn.Conv2d`` with ``kernel``: circular 'same' padding (AOL's and BCOP's
    ``circular_same_pad``, the standard conv's own padding) unless ``like`` says otherwise."""
    out_channels, in_channels, kh, kw = kernel.shape
    padding: Any = "same" if like is None else like.padding
    mode = "circular" if like is None else like.padding_mode
    conv = nn.Conv2d(in_channels, out_channels, (kh, kw), padding=padding, padding_mode=mode,
                     bias=bias is not None, dtype=kernel.dtype)  # fmt: skip
    conv.weight.copy_(kernel)
    if bias is not None:
        conv.bias.copy_(bias)
    return conv.requires_grad_(False)


def linear(matrix: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    out_features, in_features = matrix.shape
    layer = nn.Linear(in_features, out_features, dtype=matrix.dtype)
    layer.weight.copy_(matrix)
    layer.bias.copy_(bias)
    return layer.requires_grad_(False)


def export_checkpoint(checkpoint: Path, out: Path, fmt: str = "pt2") -> dict[str, Any]:
    """Export the model of an attempt's checkpoint to ``out``; returns its record."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    model = load_checkpoint(checkpoint)
    cell = checkpoint_config(checkpoint)
    frozen = freeze(model)
    bound, stages = model_bound(frozen, model.input_shape)
    if not math.isfinite(bound):
        raise NotExportable(f"its Lipschitz bound is {bound} (non-finite weights)")
    record = {
        "format": fmt,
        "cell": cell,
        "model_config": _config(model),
        "input_shape": list(model.input_shape),
        # The model's input: uint8 images / 255 minus this per-channel mean (std 1).
        "input_mean": list(DATASETS[cell["dataset"]].mean),
        "num_classes": model.num_classes,
        "lipschitz_bound": bound,
        "certified_lipschitz": max(1.0, bound),
        "stages": [{"stage": name, "bound": value} for name, value in stages],
        "checkpoint": str(checkpoint),
    }
    example = torch.zeros(2, *model.input_shape)
    if fmt == "onnx":
        _save_onnx(frozen, example, out, record)
    else:
        program = torch.export.export(
            frozen, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
        )
        extra = {RECORD: json.dumps(record)}

        def save(path: Path) -> None:
            with path.open("wb") as file:  # a file object: torch.export wants a .pt2 name
                torch.export.save(program, file, extra_files=extra)

        write_atomic(out, save)
    return record


def _config(model: ConvNet) -> dict[str, Any]:
    return {"method": model.method, "base_width": model.base_width,
            "num_blocks": model.num_blocks, "num_classes": model.num_classes,
            "in_channels": model.in_channels, "input_size": model.input_size}  # fmt: skip


def _save_onnx(frozen: nn.Module, example: torch.Tensor, out: Path, record: dict) -> None:
    """ONNX where the graph allows it: ONNX has no complex tensors, so the FFT-domain
    layers (Cayley, LOT, BRO with k > 1) cannot be written; the record goes beside the file."""
    if any(buffer.is_complex() for buffer in frozen.buffers()):
        raise NotExportable(
            "this model applies complex per-frequency matrices, which ONNX cannot express: "
            "export it with --format pt2"
        )

    def save(path: Path) -> None:
        batch = {0: torch.export.Dim("batch", min=1)}
        torch.onnx.export(frozen, (example,), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_shapes=(batch,), dynamo=True,
                          verbose=False)  # fmt: skip

    write_atomic(out, save)
    record_path = out.with_name(out.name + ".json")
    write_atomic(record_path, lambda path: path.write_text(json.dumps(record, indent=1)))


def load_exported(path: Path) -> Exported:
    """A ``.pt2`` written by ``export_checkpoint``: the module (torch alone runs it) and its
    record. The same module is ``torch.export.load(path).module()`` without lipsweep."""
    extra = {RECORD: ""}
    program = torch.export.load(str(path), extra_files=extra)
    if not extra[RECORD]:
        raise ValueError(f"{path} is not a lipsweep export (it has no {RECORD})")
    return Exported(program.module(), json.loads(extra[RECORD]))
