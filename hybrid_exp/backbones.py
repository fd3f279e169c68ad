"""Backbones: networks whose conv units come from ``model/block``."""
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_exp.blocks import Standard, conv_bn_act

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


class FractalBlock(nn.Module):
    """One FractalNet block of C columns (Larsson et al. 2016): column i has 2**i units.

    The fractal rule f_1(z) = unit(z), f_{C+1}(z) = join(f_C(f_C(z)), unit(z)) unrolled: the
    deepest column runs a unit at every step, column i every 2**(C-1-i) steps, and the columns
    that finish a unit at the same step meet in one join (the element-wise mean of all of them,
    as in the paper's Fig. 1: the block ends in a join of C inputs) and continue from it.
    """

    def __init__(self, block: Block, c_in: int, c_out: int, columns: int, dropout: float):
        super().__init__()
        unit = lambda first: nn.Sequential(block(c_in if first else c_out, c_out, stride=1),
                                           nn.Dropout(dropout))
        self.columns = nn.ModuleList(nn.ModuleList(unit(k == 0) for k in range(2**i))
                                     for i in range(columns))

    def forward(self, x: torch.Tensor, column: int | None = None,
                local_drop: float = 0.0) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        if column is not None:  # global drop-path: this column alone
            for unit in self.columns[column]:
                x = unit(x)
            return x
        n = len(self.columns)
        inputs = [x] * n
        for step in range(1, 2 ** (n - 1) + 1):
            active = [i for i in range(n) if step % 2 ** (n - 1 - i) == 0]
            outputs = [self.columns[i][step // 2 ** (n - 1 - i) - 1](inputs[i]) for i in active]
            joined = join(outputs, local_drop)
            for i in active:
                inputs[i] = joined
        return joined


def join(inputs: list[torch.Tensor], drop: float) -> torch.Tensor:
    """Element-wise mean; with local drop-path each input is dropped with probability ``drop``
    (once per batch), and one random input survives if all were dropped."""
    if drop > 0 and len(inputs) > 1:
        keep = torch.rand(len(inputs)) >= drop
        if not keep.any():
            keep[torch.randint(len(inputs), ())] = True
        inputs = [x for x, k in zip(inputs, keep) if k]
    return torch.stack(inputs).mean(0)


class FractalNet(nn.Module):
    """FractalNet for CIFAR (Larsson et al. 2016): fractal blocks, each followed by a 2x2
    max-pool, then a linear classifier. Every conv is the ``block`` unit.

    Training draws drop-path per batch: with probability ``global_fraction`` one column end to
    end through every block (global), else each join drops inputs with ``local_drop`` (local).
    Evaluation uses every column. ``dropout[b]`` follows each unit of block b.
    """

    def __init__(self, block: Block, columns: int = 3,
                 widths: tuple[int, ...] = (64, 128, 256, 512, 512),
                 dropout: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4),
                 local_drop: float = 0.15, global_fraction: float = 0.5, num_classes: int = 10):
        super().__init__()
        if columns < 1 or len(widths) != len(dropout):
            raise ValueError(f"model.columns must be >= 1 and model.widths and model.dropout "
                             f"must have one entry per block; got columns={columns}, "
                             f"{len(widths)} widths, {len(dropout)} dropout rates")
        self.columns, self.local_drop, self.global_fraction = columns, local_drop, global_fraction
        c_ins = (3, *widths[:-1])
        self.blocks = nn.ModuleList(FractalBlock(block, c_in, c_out, columns, p)
                                    for c_in, c_out, p in zip(c_ins, widths, dropout))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        column, local_drop = None, 0.0
        if self.training:
            if torch.rand(()) < self.global_fraction:
                column = int(torch.randint(self.columns, ()))
            else:
                local_drop = self.local_drop
        for block in self.blocks:
            x = F.max_pool2d(block(x, column, local_drop), 2)  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
        return self.head(x.mean(dim=(2, 3)))


class DarkNet(nn.Module):
    """The Darknet networks (Redmon et al.) from a layer list, for 32x32 inputs.

    ``layers``: the first entry is the stem (a dense 3x3 on the 3 image channels), then
    ``N`` a 3x3 conv unit of N filters (the ``block``), ``1xN`` a 1x1 conv of N filters, ``M`` a
    2x2 max-pool with stride 2, ``m`` a 2x2 max-pool with stride 1 (Darknet's, size-preserving).
    Every conv has BN and leaky ReLU 0.1, which also become the unit's activation. A 1x1 conv
    (linear, with bias) maps to the classes, then global average pooling.
    """

    def __init__(self, block: Block, layers: str, num_classes: int = 10):
        super().__init__()
        act = partial(nn.LeakyReLU, 0.1)
        stem, *rest = layers.split()
        modules, c = [Standard(3, int(stem), act=act)], int(stem)
        for layer in rest:
            if layer == "M":
                modules.append(nn.MaxPool2d(2, 2))
            elif layer == "m":  # pad right/bottom by repetition: Darknet's stride-1 pool keeps size
                modules += [nn.ReplicationPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, 1)]
            elif layer.startswith("1x"):
                modules += conv_bn_act(c, int(layer[2:]), 1, act=act)
                c = int(layer[2:])
            elif layer.isdigit():
                modules.append(block(c, int(layer), stride=1, act=act))
                c = int(layer)
            else:
                raise ValueError(f"model.layers: unknown layer '{layer}'; use N (3x3 unit), "
                                 f"1xN (1x1 conv), M (pool /2) or m (pool, stride 1)")
        self.features = nn.Sequential(*modules)
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        return self.classifier(self.features(x)).mean(dim=(2, 3))
