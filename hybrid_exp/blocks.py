"""Conv units: every unit maps (B, C_in, H, W) -> (B, C_out, H/stride, W/stride).

A backbone builds each unit as ``block(c_in, c_out, stride)``; the config group
``model/block`` picks the class (``_target_`` + ``_partial_``), so a new unit is one class
here plus one YAML file. Equations and sources: docs/variants.md.
"""
from torch import nn


class Standard(nn.Sequential):
    """y = ReLU(BN(W * x)), W a dense 3x3 kernel of shape (C_out, C_in, 3, 3)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class Separable(nn.Sequential):
    """y = ReLU(BN(P (D * x))): depthwise 3x3 D (groups = C_in), then pointwise 1x1 P.

    Nothing sits between D and P (Xception; the paper's baseline).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride, padding=1, groups=c_in, bias=False),  # depthwise
            nn.Conv2d(c_in, c_out, 1, bias=False),  # pointwise
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )
