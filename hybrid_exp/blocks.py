"""Conv units: every unit maps (B, C_in, H, W) -> (B, C_out, H/stride, W/stride).

A backbone builds each unit as ``block(c_in, c_out, stride)``; the config group
``model/block`` picks the class (``_target_`` + ``_partial_``), so a new unit is one class
here plus one YAML file. ``act`` is the unit's activation (a module class, called with
``inplace=True``): ReLU by default; a backbone may pass its own (DarkNet: leaky ReLU 0.1).
Notation below: ``*`` is convolution, ``D`` a depthwise 3x3 kernel
(one 3x3 filter per channel), ``P`` a pointwise 1x1 kernel (C_out x C_in), BN batch norm.
Equations, sources and the choices our reading of the paper had to make: docs/variants.md.

Every unit also runs fused (hybrid_exp.fusion: the seeds of a setup as one network): built from
convs, BN, element-wise and per-channel layers, it fuses without code of its own; channels are
concatenated with ``cat_channels`` (within each member's block), never ``torch.cat``.
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_exp.fusion import cat_channels

Activation = Callable[..., nn.Module]


def check(condition: bool, message: str) -> None:
    """Impossible shapes fail when the model is built from the config, in one sentence."""
    if not condition:
        raise ValueError(message)


def conv(c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free 'same' convolution (BN follows every conv here)."""
    return nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)


def conv_bn_act(c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1,
                act: Activation = nn.ReLU) -> list[nn.Module]:
    return [conv(c_in, c_out, kernel_size, stride, groups), nn.BatchNorm2d(c_out), act(inplace=True)]


class Standard(nn.Sequential):
    """y = ReLU(BN(W * x)), W a dense 3x3 kernel (C_out, C_in, 3, 3)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: Activation = nn.ReLU):
        super().__init__(*conv_bn_act(c_in, c_out, 3, stride, act=act))


class Grouped(nn.Sequential):
    """y = ReLU(BN(P (G * x))), G a 3x3 kernel (C_in -> W) in g groups, P a 1x1 (W -> C_out).

    g = 1: a dense 3x3 then 1x1; g = C_in: ``Separable``. g is ``groups``, the same in every
    unit (as ResNeXt's cardinality: it must divide every C_in), or, when ``channels_per_group``
    is set, C_in / channels_per_group: the same channels per group in every stage, so every
    stage moves from dense (channels_per_group = C_in) to depthwise (1) together. W = C_in; with
    ``preserve_complexity`` W is the width that keeps the unit's weights at separable's,
    9 C_in W / g + W C_out = 9 C_in + C_in C_out (ResNeXt's Table 2 practice), rounded to a
    multiple of g: fewer, wider-reaching channels as the groups grow dense.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, groups: int = 1,
                 channels_per_group: int | None = None, preserve_complexity: bool = False,
                 act: Activation = nn.ReLU):
        if channels_per_group is not None:
            check(channels_per_group >= 1 and c_in % channels_per_group == 0,
                  f"model.block.channels_per_group must divide every unit's input channels; "
                  f"channels_per_group={channels_per_group} does not divide C_in={c_in}")
            groups = c_in // channels_per_group
        check(groups >= 1 and c_in % groups == 0,
              f"model.block.groups must divide the unit's input channels; groups={groups} "
              f"does not divide C_in={c_in} (choose a divisor of model.width)")
        width = c_in
        if preserve_complexity:
            budget = 9 * c_in + c_in * c_out  # separable's weights
            width = max(1, round(budget / (9 * c_in / groups + c_out) / groups)) * groups
        super().__init__(conv(c_in, width, 3, stride, groups), *conv_bn_act(width, c_out, 1, act=act))


class Separable(Grouped):
    """y = ReLU(BN(P (D * x))): depthwise 3x3 (groups = C_in), then pointwise 1x1.

    Nothing sits between D and P (Xception; the paper's baseline).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: Activation = nn.ReLU):
        super().__init__(c_in, c_out, stride, groups=c_in, act=act)


class SeparableAct(nn.Sequential):
    """y = ReLU(BN(P act(BN(D * x)))): Xception sec. 4.7's ablation, a nonlinearity between
    the depthwise and the pointwise convolution (``mid_act``: relu or elu; none: BN alone, the
    arm that separates the activation's effect from the added BN's)."""

    ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "none": nn.Identity}

    def __init__(self, c_in: int, c_out: int, stride: int = 1, mid_act: str = "relu",
                 act: Activation = nn.ReLU):
        check(mid_act in self.ACTIVATIONS, f"model.block.mid_act must be one of "
              f"{', '.join(self.ACTIVATIONS)}; got '{mid_act}'")
        super().__init__(conv(c_in, c_in, 3, stride, groups=c_in), nn.BatchNorm2d(c_in),
                         self.ACTIVATIONS[mid_act](inplace=True), *conv_bn_act(c_in, c_out, 1, act=act))


class Equivalent(nn.Module):
    """``Separable`` written as C_in single-channel towers (Fig. 4's control for noise):
    tower i convolves channel i with its own 3x3 filter, the towers are concatenated, then 1x1.

        y = ReLU(BN(P concat_i(d_i * x_i)))

    The towers are built as real 1-channel convs (fan-in 9, the same distribution as a depthwise
    filter), in order, so their initial weights are what C separate modules would draw. They are
    stored as one (C_in, 1, 3, 3) tensor, row i = tower i, and run as one grouped conv, which
    computes exactly the same thing: one parameter tensor, as ``Separable`` has, instead of C_in
    (the optimizer step no longer scales with the channel count). The state_dict keeps one key
    per tower, ``towers.<i>.weight``, so checkpoints of either form load.
    """

    members = 1  # set by fusion.fuse: a fused array holds each tower's weight for every member

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: Activation = nn.ReLU):
        super().__init__()
        self.stride, self.towers = stride, c_in
        self.weight = nn.Parameter(torch.cat([conv(1, 1, 3, stride).weight.detach()
                                              for _ in range(c_in)]))  # (C_in, 1, 3, 3)
        self.pointwise = nn.Sequential(*conv_bn_act(c_in, c_out, 1, act=act))
        self.register_state_dict_post_hook(towers_state_dict)
        self.register_load_state_dict_pre_hook(towers_load_state_dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, stride=self.stride, padding=1, groups=len(self.weight))
        return self.pointwise(x)


def towers_state_dict(module: Equivalent, state: dict, prefix: str, local_metadata) -> None:
    """``weight`` (M*C, 1, 3, 3) -> ``towers.<i>.weight`` (M, 1, 3, 3), i < C: tower i of each member."""
    weight = state.pop(prefix + "weight").view(module.members, module.towers, 1, 3, 3)
    for i in range(module.towers):
        state[f"{prefix}towers.{i}.weight"] = weight[:, i]


def towers_load_state_dict(module: Equivalent, state: dict, prefix: str, *args) -> None:
    """The inverse of ``towers_state_dict``."""
    keys = [f"{prefix}towers.{i}.weight" for i in range(module.towers)]
    if all(key in state for key in keys):
        state[prefix + "weight"] = torch.stack([state.pop(key) for key in keys], 1).flatten(0, 1)


class Hybrid(nn.Module):
    """The paper's hypothesised reading: a ResNeXt aggregated transformation with cardinality
    = C_in. Path i takes channel i through its own 3x3 filter d_i and a 1x1 projection p_i to
    C_out; the paths are summed, and an identity shortcut is added where shapes allow:

        y = ReLU(BN(sum_i p_i (d_i * x_i)) + x)

    sum_i p_i (d_i * x_i) is P (D * x) with P's column i = p_i: one depthwise conv and one 1x1,
    exactly, initialised as ``Separable``'s: what differs from it is the shortcut alone.
    ``residual=False`` is the form the paper calls ResNeXt "if we remove the identity
    connection"; it computes the same function as ``Separable``. ``path_init=True`` initialises
    each p_i by its own path's fan-in (1: U(-1, 1)) rather than the pointwise conv's (C_in); BN
    follows, so the function is unchanged, but the weights are sqrt(C_in) times larger, which
    slows their learning by about C_in (an optimiser-level change, kept as a separate knob).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, residual: bool = True,
                 path_init: bool = False, act: Activation = nn.ReLU):
        super().__init__()
        self.depthwise = conv(c_in, c_in, 3, stride, groups=c_in)  # the d_i, fan-in 9
        self.project = conv(c_in, c_out, 1)  # column i is p_i
        if path_init:  # PyTorch's conv init is U(-b, b), b = 1/sqrt(fan-in); a path's p_i: fan-in 1
            nn.init.uniform_(self.project.weight, -1.0, 1.0)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = act(inplace=True)
        self.shortcut = residual and c_in == c_out and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.project(self.depthwise(x)))
        return self.act(y + x if self.shortcut else y)


class ReformulatedInception(nn.Sequential):
    """Chollet's re-formulated simplified Inception module: a 1x1, then the output channels
    split into ``towers`` non-overlapping segments, each convolved by its own 3x3:

        y = ReLU(BN(G * ReLU(BN(P x)))),  G a 3x3 kernel in ``towers`` groups
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, towers: int = 4,
                 act: Activation = nn.ReLU):
        check(towers >= 1 and c_out % towers == 0,
              f"model.block.towers must divide the unit's output channels; towers={towers} "
              f"does not divide C_out={c_out}")
        super().__init__(*conv_bn_act(c_in, c_out, 1, act=act),
                         *conv_bn_act(c_out, c_out, 3, stride, towers, act))


class ExtremeInception(ReformulatedInception):
    """Xception's "extreme" Inception module (Chollet 2017, Fig. 4): a 1x1, then one 3x3 per
    output channel of it, each followed by BN-ReLU:

        y = ReLU(BN(D * ReLU(BN(P x))))

    ``ReformulatedInception`` with towers = C_out: the reading of a separable conv (1x1 first,
    a nonlinearity between) that the paper argues against.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: Activation = nn.ReLU):
        super().__init__(c_in, c_out, stride, towers=c_out, act=act)


class PointwiseDepthwise(nn.Sequential):
    """The 1x1-first order with nothing between, Xception's two steps swapped:

        y = ReLU(BN(D * (P x))),  P a 1x1 (C_in -> C_out), D a depthwise 3x3 on its output

    Against ``Separable`` it changes the order alone; against ``ExtremeInception`` the BN-ReLU
    between the two alone: each comparison tests one thing.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: Activation = nn.ReLU):
        super().__init__(conv(c_in, c_out, 1), *conv_bn_act(c_out, c_out, 3, stride, c_out, act))


class Inception(nn.Module):
    """GoogLeNet's Inception module (Szegedy et al. 2015, Fig. 2b), four parallel branches,
    each conv followed by BN-ReLU, concatenated to C_out:

        1x1                      C_out/4 channels
        1x1 (3/4 of it) -> 3x3   C_out/2
        1x1 (1/2 of it) -> 5x5   C_out/8
        3x3 max-pool -> 1x1      the rest (C_out/8)

    the split of GoogLeNet's inception (3a) block (64, 128, 32, 32 of 256; reductions 96, 16).
    With stride 2, each branch's last spatial op (or its 1x1) has the stride.
    """

    members = 1  # set by fusion.fuse: the branches concatenate within each member's channels

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: Activation = nn.ReLU):
        super().__init__()
        check(c_out >= 8, f"an inception unit needs C_out >= 8 to split into four branches; "
              f"got C_out={c_out}")
        c1, c3, c5 = c_out // 4, c_out // 2, c_out // 8
        r3, r5 = max(1, 3 * c3 // 4), max(1, c5 // 2)
        self.branches = nn.ModuleList(nn.Sequential(*layers) for layers in [
            conv_bn_act(c_in, c1, 1, stride, act=act),
            conv_bn_act(c_in, r3, 1, act=act) + conv_bn_act(r3, c3, 3, stride, act=act),
            conv_bn_act(c_in, r5, 1, act=act) + conv_bn_act(r5, c5, 5, stride, act=act),
            [nn.MaxPool2d(3, stride, 1), *conv_bn_act(c_in, c_out - c1 - c3 - c5, 1, act=act)],
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cat_channels([branch(x) for branch in self.branches], self.members)


class ResNeXt(nn.Module):
    """ResNeXt bottleneck, form (c) (Xie et al. 2017, Fig. 3c): 1x1 to d channels, grouped 3x3
    (``cardinality`` groups), 1x1 to C_out:

        y = ReLU(BN(P2 ReLU(BN(G * ReLU(BN(P1 x))))) + S x)

    S is the identity when shapes allow, else a 1x1 projection with BN. The bottleneck width d
    is ``cardinality`` x ``bottleneck_width`` (32x4d: 128 in every stage), or, with
    ``bottleneck_ratio``, that share of C_out (it follows the stage, as in ResNeXt's own
    networks). ``cardinality=None``: one path per bottleneck channel (a depthwise 3x3).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, cardinality: int | None = 32,
                 bottleneck_width: int = 4, bottleneck_ratio: float | None = None,
                 act: Activation = nn.ReLU):
        super().__init__()
        check((cardinality is None or cardinality >= 1) and bottleneck_width >= 1,
              f"model.block.cardinality and model.block.bottleneck_width must be >= 1; got "
              f"cardinality={cardinality}, bottleneck_width={bottleneck_width}")
        check(cardinality is not None or bottleneck_ratio is not None,
              "model.block.cardinality=null (one path per channel) needs model.block.bottleneck_ratio")
        d = round(c_out * bottleneck_ratio) if bottleneck_ratio else cardinality * bottleneck_width
        cardinality = cardinality or d
        check(d >= 1 and d % cardinality == 0,
              f"model.block.cardinality must divide the bottleneck width; cardinality={cardinality} "
              f"does not divide d={d} (C_out={c_out})")
        self.residual = nn.Sequential(*conv_bn_act(c_in, d, 1, act=act),
                                      *conv_bn_act(d, d, 3, stride, cardinality, act),
                                      conv(d, c_out, 1), nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Identity() if c_in == c_out and stride == 1 else
                         nn.Sequential(conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out)))
        self.act = act(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))
