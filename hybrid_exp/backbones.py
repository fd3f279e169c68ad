"""Backbones: networks whose conv units come from ``model/block``."""
from typing import Callable

import torch
from torch import nn

from hybrid_exp.blocks import Standard

Block = Callable[..., nn.Module]  # block(c_in, c_out, stride) -> module


class Stacked(nn.Module):
    """The paper's baseline shape: stem, ``stages`` stages of ``depth`` units, GAP, linear.

    Stage s has ``width * 2**s`` channels; its first unit downsamples with stride 2
    (except in stage 0), so a 32x32 input ends at 32 / 2**(stages-1) pixels per side.
    """

    def __init__(self, block: Block, width: int = 64, depth: int = 2, stages: int = 3,
                 num_classes: int = 10):
        super().__init__()
        if min(width, depth, stages) < 1:
            raise ValueError(f"model.width, model.depth and model.stages must be >= 1; "
                             f"got width={width}, depth={depth}, stages={stages}")
        self.stem = Standard(3, width)
        units, c_in = [], width
        for s in range(stages):
            c_out = width * 2**s
            for d in range(depth):
                units.append(block(c_in, c_out, stride=2 if s > 0 and d == 0 else 1))
                c_in = c_out
        self.units = nn.Sequential(*units)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        x = self.units(self.stem(x))  # (B, C, h, w)
        return self.head(x.mean(dim=(2, 3)))  # global average pooling
