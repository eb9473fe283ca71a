"""The seven 1-Lipschitz convolutions of the paper and the standard conv, in one registry.

Every class is built as ``LAYERS[name](in_channels, out_channels, kernel_size)`` and maps
(B, C, H, W) to (B, C, H, W) for any H, W. The 1-Lipschitz linear heads the paper uses for BCOP
and Cayley are in ``LINEAR_HEADS``.
"""

from torch import nn

from lipsweep.layers.aol import AOLConv2d
from lipsweep.layers.bcop import BCOPConv2d, BjorckLinear
from lipsweep.layers.cayley import CayleyConv2d, CayleyLinear
from lipsweep.layers.channels import FirstChannels, MaxMin, ZeroChannelPad
from lipsweep.layers.cpl import CPLConv2d
from lipsweep.layers.lot import LOTConv2d
from lipsweep.layers.sll import SLLConv2d
from lipsweep.layers.soc import SOCConv2d
from lipsweep.layers.standard import StandardConv2d

LAYERS: dict[str, type[nn.Module]] = {
    "standard": StandardConv2d,
    "aol": AOLConv2d,
    "bcop": BCOPConv2d,
    "cpl": CPLConv2d,
    "cayley": CayleyConv2d,
    "lot": LOTConv2d,
    "sll": SLLConv2d,
    "soc": SOCConv2d,
}
METHODS: tuple[str, ...] = tuple(name for name in LAYERS if name != "standard")
LINEAR_HEADS: dict[str, type[nn.Module]] = {"bcop": BjorckLinear, "cayley": CayleyLinear}

__all__ = [
    "LAYERS",
    "LINEAR_HEADS",
    "METHODS",
    "AOLConv2d",
    "BCOPConv2d",
    "BjorckLinear",
    "CPLConv2d",
    "CayleyConv2d",
    "CayleyLinear",
    "FirstChannels",
    "LOTConv2d",
    "MaxMin",
    "SLLConv2d",
    "SOCConv2d",
    "StandardConv2d",
    "ZeroChannelPad",
]
