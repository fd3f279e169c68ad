"""Backbones: networks whose conv units come from ``model/block``."""
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_exp.blocks import Standard, conv_bn_act
from hybrid_exp.fusion import channels
from hybrid_exp.seeding import counter_uniform, derive_seed

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
        self.stages = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) -> (B, classes)
        x = self.units(self.stem(x))  # (B, C, h, w)
        return self.head(x.mean(dim=(2, 3)))  # global average pooling

    def stage_ends(self) -> list[nn.Module]:
        """The modules whose outputs end each stage (representation similarity compares them)."""
        depth = len(self.units) // self.stages
        return [self.units[(s + 1) * depth - 1] for s in range(self.stages)]


class MemberDropout(nn.Module):
    """Dropout whose masks come from the caller's generators, one per member of a fused array
    (one for an unfused network), so each member draws exactly the masks it would alone."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        B, _, H, W = x.shape
        keep = torch.cat([torch.empty(B, x.shape[1] // len(generators), H, W, device=x.device)
                          .bernoulli_(1 - self.p, generator=g) for g in generators], dim=1)
        return x * keep / (1 - self.p)


class FractalBlock(nn.Module):
    """One FractalNet block of C columns (Larsson et al. 2016): column i has 2**i units.

    The fractal rule f_1(z) = unit(z), f_{C+1}(z) = join(f_C(f_C(z)), unit(z)) unrolled: the
    deepest column runs a unit at every step, column i every 2**(C-1-i) steps, and the columns
    that finish a unit at the same step meet in one join (a weighted mean of all of them, as in
    the paper's Fig. 1: the block ends in a join of C inputs) and continue from it.
    """

    def __init__(self, block: Block, c_in: int, c_out: int, columns: int, dropout: float,
                 entry: Block | None = None):
        super().__init__()  # entry: the unit of each column's first layer (default: block)
        unit = lambda first: nn.Sequential((entry or block)(c_in, c_out, stride=1) if first else
                                           block(c_out, c_out, stride=1), MemberDropout(dropout))
        self.columns = nn.ModuleList(nn.ModuleList(unit(k == 0) for k in range(2**i))
                                     for i in range(columns))

    def forward(self, x: torch.Tensor, paths: "DropPath") -> torch.Tensor:
        # (B, M*C_in, H, W) -> (B, M*C_out, H, W)
        n = len(self.columns)
        inputs = [x] * n
        for step in range(1, 2 ** (n - 1) + 1):
            active = [i for i in range(n) if step % 2 ** (n - 1 - i) == 0]
            outputs = []
            for i in active:
                layer, dropout = self.columns[i][step // 2 ** (n - 1 - i) - 1]
                outputs.append(dropout(layer(inputs[i]), paths.generators))
            joined = join(outputs, paths.weights(active))
            for i in active:
                inputs[i] = joined
        return joined


def join(inputs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Sum of (B, M*C, H, W) inputs, input i weighted by weights[m, i] in member m's channels."""
    members = len(weights)
    joined = sum(channels(x, members) * w.view(1, members, 1, 1, 1)
                 for x, w in zip(inputs, weights.to(inputs[0]).unbind(1)))
    return joined.flatten(1, 2)


class DropPath:
    """One training step's drop-path draws for each member (Larsson et al. 2016): with
    probability ``global_fraction`` one column end to end through every block (global), else
    each join drops each input with probability ``local_drop``, and keeps one at random if it
    dropped all (local). ``seeds=None``: evaluation, every input joined.

    The draws come from ``seeding.counter_uniform`` keyed on (member's noise seed, ``step``,
    join): they are computed on the device, the same on a CPU and a GPU, with no host round
    trip per join. A dropped input is weighted 0 in its join rather than skipped: every unit
    runs every step (so the members of a fused array can take different paths in one pass).
    Its gradient is exactly 0, BN statistics see every unit's activations, and weight decay acts
    on all weights. ``generators``: each member's dropout generator (``MemberDropout``).
    """

    def __init__(self, columns: int, global_fraction: float, local_drop: float, members: int,
                 seeds: torch.Tensor | None = None, step: torch.Tensor | None = None,
                 generators: list[torch.Generator] | None = None):
        self.members, self.local_drop = members, local_drop
        self.seeds, self.step, self.generators = seeds, step, generators
        self.draws = 0  # draws made this step: the stream of the next one
        if seeds is not None:
            u = self.draw(2)  # (M, 2): global or local, and the global column
            self.is_global = u[:, 0] < global_fraction
            self.column = (u[:, 1] * columns).long().clamp(max=columns - 1)

    def draw(self, n: int) -> torch.Tensor:
        self.draws += 1
        return counter_uniform(self.seeds, self.step, self.draws, n)

    def weights(self, active: list[int]) -> torch.Tensor:
        """(M, len(active)) join weights, each row summing to 1; ``active``: the consecutive
        columns that meet in this join."""
        n = len(active)
        if self.seeds is None:
            return torch.full((self.members, n), 1 / n, dtype=torch.float64)
        u = self.draw(n + 1)  # (M, n + 1): a keep draw per input, then the fallback's
        local = u[:, :n] >= self.local_drop
        fallback = F.one_hot((u[:, n] * n).long().clamp(max=n - 1), n).bool()
        local = torch.where(local.any(1, keepdim=True), local, fallback)
        # global: the chosen column alone (a join it is not in feeds only dropped paths)
        columns = torch.arange(n, device=u.device) + active[0]
        chosen = columns == self.column[:, None]
        chosen = chosen | ~chosen.any(1, keepdim=True)
        keep = torch.where(self.is_global[:, None], chosen, local)
        return keep.double() / keep.sum(1, keepdim=True)


class FractalNet(nn.Module):
    """FractalNet for CIFAR (Larsson et al. 2016): fractal blocks, each followed by a 2x2
    max-pool, then a linear classifier. Every conv is the ``block`` unit.

    Training draws drop-path per batch (``DropPath``): global with probability
    ``global_fraction``, else local with ``local_drop``. Evaluation uses every column.
    ``dense_stem``: the first layer of each column of the first block, the convs that read the
    RGB image, are dense ``Standard`` convs (as DarkNet's stem), else the unit.
    ``dropout[b]`` follows each unit of block b. Drop-path and dropout draw from the network's
    own streams, keyed on (noise seed, training step): drop-path from a counter-based stream
    computed on the device (``seeding.counter_uniform``: the same on a CPU and a GPU, and a CUDA
    graph can capture it), dropout from torch generators seeded with ``derive_seed(noise seed,
    step, "dropout")`` on the host (which no CUDA graph can capture). The noise seed is drawn
    from the init stream and the step counts training passes, both saved in the state_dict, so a
    resumed run continues the streams, and each member of a fused array keeps its own.
    """

    members = 1  # set by fusion.fuse

    def __init__(self, block: Block, columns: int = 3,
                 widths: tuple[int, ...] = (64, 128, 256, 512, 512),
                 dropout: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4),
                 local_drop: float = 0.15, global_fraction: float = 0.5, num_classes: int = 10,
                 dense_stem: bool = True):
        super().__init__()
        if columns < 1 or len(widths) != len(dropout):
            raise ValueError(f"model.columns must be >= 1 and model.widths and model.dropout "
                             f"must have one entry per block; got columns={columns}, "
                             f"{len(widths)} widths, {len(dropout)} dropout rates")
        self.columns, self.local_drop, self.global_fraction = columns, local_drop, global_fraction
        self.has_dropout = any(p > 0 for p in dropout)
        c_ins = (3, *widths[:-1])
        entries = [Standard if dense_stem else block] + [block] * (len(widths) - 1)
        self.blocks = nn.ModuleList(FractalBlock(block, c_in, c_out, columns, p, entry)
                                    for c_in, c_out, p, entry in zip(c_ins, widths, dropout, entries))
        self.head = nn.Linear(widths[-1], num_classes)
        # each member's noise seed (drawn after every weight) and training passes so far;
        # buffers outside the state_dict's keys, saved as its extra state
        self.register_buffer("noise_seed", torch.randint(2**62, (1,)), persistent=False)
        self.register_buffer("step", torch.tensor(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, M*3, 32, 32) -> (B, M*classes)
        paths = DropPath(self.columns, self.global_fraction, self.local_drop, self.members)
        if self.training:
            generators = None
            if self.has_dropout:  # torch's generators, seeded on the host
                step = int(self.step)
                generators = [torch.Generator(x.device).manual_seed(derive_seed(seed, step, "dropout"))
                              for seed in self.noise_seed.tolist()]
            paths = DropPath(self.columns, self.global_fraction, self.local_drop, self.members,
                             self.noise_seed, self.step, generators)
        for block in self.blocks:
            x = F.max_pool2d(block(x, paths), 2)  # 32 -> 16 -> 8 -> 4 -> 2 -> 1
        if self.training:
            self.step.add_(1)  # in place: a captured step counts its replays
        return self.head(x.mean(dim=(2, 3)))

    def stage_ends(self) -> list[nn.Module]:
        """The fractal blocks, whose outputs end each stage (before its max-pool)."""
        return list(self.blocks)

    @property
    def cuda_graph_blocker(self) -> str | None:
        """Why a CUDA graph cannot capture this network's training step (None: it can)."""
        return ("FractalNet seeds its dropout on the host every step (model.dropout all 0 "
                "allows a graph)" if self.has_dropout else None)

    def get_extra_state(self) -> torch.Tensor:  # (M, 2): each member's noise seed and step
        return torch.stack([self.noise_seed, self.step.expand(len(self.noise_seed))], 1).cpu()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.noise_seed = state[:, 0].to(self.noise_seed.device).clone()
        self.step = state[0, 1].to(self.step.device).clone()


class DarkNet(nn.Module):
    """The Darknet networks (Redmon et al.) from a layer list, for 32x32 inputs.

    ``layers``: the first entry is the stem (a 3x3 on the 3 image channels: dense, or the unit
    when not ``dense_stem``), then
    ``N`` a 3x3 conv unit of N filters (the ``block``), ``1xN`` a 1x1 conv of N filters, ``M`` a
    2x2 max-pool with stride 2, ``m`` a 2x2 max-pool with stride 1 (Darknet's, size-preserving).
    Every conv has BN and leaky ReLU 0.1, which also become the unit's activation. A 1x1 conv
    (linear, with bias) maps to the classes, then global average pooling.
    """

    def __init__(self, block: Block, layers: str, num_classes: int = 10, dense_stem: bool = True):
        super().__init__()
        act = partial(nn.LeakyReLU, 0.1)
        stem, *rest = layers.split()
        modules, c = [(Standard if dense_stem else block)(3, int(stem), stride=1, act=act)], int(stem)
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

    def stage_ends(self) -> list[nn.Module]:
        """The modules before each halving max-pool, and the last one: the ends of its stages."""
        layers = list(self.features)
        return [m for m, after in zip(layers, layers[1:] + [None])
                if after is None or (isinstance(after, nn.MaxPool2d) and after.stride == 2)]
