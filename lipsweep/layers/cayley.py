"""PLACEHOLDER: being written (replace this whole file)."""
from torch import nn


class CayleyConv2d(nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("CayleyConv2d is being written")


class CayleyLinear(nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("CayleyLinear is being written")
