"""The paper's ConvNet (1LC Sec. 1, Tables 5-7), one architecture for every layer method.

Layers in order, for base width ``w``, ``n`` blocks and input channels ``c_in``:

1. ``ZeroChannelPad(w)``: c_in -> w channels (an isometric embedding);
2. a 1 x 1 first conv (w -> w) and MaxMin;
3. blocks i = 0 .. n-1 with c = w 2^i channels: 5 x (k x k conv c -> c, MaxMin), then
   ``FirstChannels(c / 2)`` and ``PixelUnshuffle(2)`` (c / 2 x s x s -> 2c x s/2 x s/2).
   k is ``kernel_size`` (3) except in the last block, where k = 1 (the paper: a 2 x 2 map);
4. ``AdaptiveMaxPool2d(1)`` (a no-op when the input is 2^n pixels wide);
5. the head of width W = w 2^n: a 1 x 1 conv, then Flatten, or, for BCOP and Cayley, Flatten
   then the method's 1-Lipschitz dense layer (``LINEAR_HEADS``);
6. ``FirstChannels(num_classes)``: the logits are the first outputs of the head.

Every stage is 1-Lipschitz when the convs are, so the network is. Standard-conv parameter
counts equal the paper's (CIFAR XS: 1,572,288); see ``count_parameters``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from lipsweep.data import DATASETS
from lipsweep.layers.channels import FirstChannels, MaxMin, ZeroChannelPad
from lipsweep.layers.registry import spec

LAYERS_PER_BLOCK = 5
# Base width w on CIFAR (paper Table 7); the final width is 32 w for every dataset there.
SIZES: dict[str, int] = {"XS": 16, "S": 32, "M": 64, "L": 128}
# Tiny ImageNet has one more block and half the width, so its final width equals CIFAR's.
# digits (8 x 8, 3 blocks) is a CPU smoke-test dataset: it keeps the CIFAR widths, which makes
# its models small (XS: 95,424 parameters) rather than matching a paper bucket.
WIDTH_DIVISOR: dict[str, int] = {"tiny-imagenet": 2}


def blocks_for_input(size: int) -> int:
    """Number of blocks that bring a size x size input down to 1 x 1: log2(size)."""
    if size < 2 or size & (size - 1):
        raise ValueError(f"input size must be a power of two >= 2, got {size}")
    return int(math.log2(size))


def base_width(size: str, dataset: str) -> int:
    """The base width ``w`` of model ``size`` ("XS", "S", "M", "L") on ``dataset``."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return SIZES[size] // WIDTH_DIVISOR.get(dataset, 1)


def make_conv(
    method: str, channels: int, kernel_size: int, resolution: int, role: str
) -> nn.Module:
    """One square conv of ``method`` with the extras its registry spec asks for.

    ``role`` is "first", "block" or "head" (``MethodSpec.init_by_role``); ``resolution`` is the
    input's side (``MethodSpec.takes_input_size``).
    """
    method_spec = spec(method)
    options: dict[str, object] = {}
    if method_spec.init_by_role:
        options["init"] = "dirac" if role == "block" else "orthogonal"
    if method_spec.takes_input_size:
        options["input_size"] = resolution
    return method_spec.layer_class()(channels, channels, kernel_size, **options)


def conv_block(method: str, channels: int, kernel_size: int, resolution: int) -> nn.Sequential:
    """Block of ``channels`` channels at ``resolution``: 5 x (conv, MaxMin), project, unshuffle."""
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    for j in range(LAYERS_PER_BLOCK):
        stages[f"conv{j}"] = make_conv(method, channels, kernel_size, resolution, "block")
        stages[f"act{j}"] = MaxMin()
    stages["project"] = FirstChannels(channels // 2)
    stages["unshuffle"] = nn.PixelUnshuffle(2)
    return nn.Sequential(stages)


def head(method: str, width: int) -> nn.Sequential:
    """The classification head of ``width`` outputs on a 1 x 1 map, flattened."""
    linear = spec(method).head_class()
    if linear is not None:
        return nn.Sequential(OrderedDict(flatten=nn.Flatten(), linear=linear(width, width)))
    conv = make_conv(method, width, 1, 1, "head")
    return nn.Sequential(OrderedDict(conv=conv, flatten=nn.Flatten()))


class ConvNet(nn.Sequential):
    """The paper's ConvNet (see the module docstring); maps (B, c_in, s, s) to (B, classes)."""

    def __init__(
        self,
        method: str,
        base_width: int,
        num_blocks: int,
        num_classes: int,
        in_channels: int = 3,
        kernel_size: int = 3,
        input_size: int = 32,
    ) -> None:
        check_shape(base_width, num_blocks, num_classes, in_channels, input_size)
        width = base_width * 2**num_blocks
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        stages["pad"] = ZeroChannelPad(base_width)
        stages["first_conv"] = make_conv(method, base_width, 1, input_size, "first")
        stages["first_act"] = MaxMin()
        for i in range(num_blocks):
            last = i == num_blocks - 1
            resolution = input_size // 2**i
            block_kernel = 1 if last else kernel_size
            stages[f"block{i}"] = conv_block(method, base_width * 2**i, block_kernel, resolution)
        stages["pool"] = nn.AdaptiveMaxPool2d(1)
        stages["head"] = head(method, width)
        stages["logits"] = FirstChannels(num_classes)
        super().__init__(stages)
        self.method = method
        self.base_width = base_width
        self.num_blocks = num_blocks
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = input_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (self.in_channels, self.input_size, self.input_size)


def check_shape(
    base_width: int, num_blocks: int, num_classes: int, in_channels: int, input_size: int
) -> None:
    """Reject ConvNet shapes that cannot work, with a message that says why."""
    if base_width < in_channels or base_width % 2:
        raise ValueError(f"base_width must be even and >= in_channels, got {base_width}")
    if num_blocks < 1 or input_size % 2**num_blocks:
        raise ValueError(f"{num_blocks} blocks need an input size divisible by 2^{num_blocks}")
    if not 1 <= num_classes <= base_width * 2**num_blocks:
        raise ValueError(f"num_classes must be in [1, {base_width * 2**num_blocks}]")


def build_model(method: str, size: str, dataset: str) -> ConvNet:
    """The paper's model ``size`` ("XS", "S", "M", "L") for ``dataset``, with ``method`` convs."""
    width = base_width(size, dataset)  # validates size and dataset
    info = DATASETS[dataset]
    return ConvNet(
        method,
        base_width=width,
        num_blocks=blocks_for_input(info.image_size),
        num_classes=info.num_classes,
        in_channels=info.channels,
        input_size=info.image_size,
    )


def count_parameters(method: str, size: str, dataset: str) -> int:
    """Number of parameters of ``build_model(method, size, dataset)``, built on the meta
    device so even the 100 M-parameter L models allocate no memory."""
    with torch.device("meta"):
        model = build_model(method, size, dataset)
    return sum(p.numel() for p in model.parameters())


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's stages in execution order: nested ``nn.Sequential`` containers flattened."""
    if not isinstance(model, nn.Sequential):
        return [("", model)]
    flat: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        for sub_name, stage in stages(child):
            flat.append((f"{name}.{sub_name}" if sub_name else name, stage))
    return flat


def lipschitz_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stages that carry parameters: the convs and the dense head, in order."""
    return [(name, stage) for name, stage in stages(model) if any(True for _ in stage.parameters())]
