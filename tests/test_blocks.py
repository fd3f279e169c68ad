"""The zoo's math: each unit against a first-principles reference, with mapped weights."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from hybrid_exp import blocks, config_dir
from hybrid_exp.blocks import Equivalent, Grouped, Hybrid, Separable, SeparableAct

UNITS = {"standard": blocks.Standard, "separable": Separable, "equivalent": Equivalent,
         "hybrid": Hybrid, "inception": blocks.Inception,
         "reformulated_inception": blocks.ReformulatedInception, "resnext": blocks.ResNeXt,
         "separable_act": SeparableAct, "grouped": Grouped,
         "extreme_inception": blocks.ExtremeInception, "pointwise_depthwise": blocks.PointwiseDepthwise}
STACKED_PRESETS = sorted(p.stem for p in (Path(config_dir()) / "model").glob("*.yaml")
                         if not p.stem.startswith(("fractalnet", "darknet")))


def bn_relu(y: torch.Tensor) -> torch.Tensor:
    """BN in training mode with its initial affine (1, 0), then ReLU."""
    return F.relu(F.batch_norm(y, None, None, training=True, eps=1e-5))


def separable_reference(x, depthwise, pointwise, stride=1):
    """y = ReLU(BN(P (D * x))), written with functional convs."""
    return bn_relu(F.conv2d(F.conv2d(x, depthwise, stride=stride, padding=1, groups=x.shape[1]),
                            pointwise))


@pytest.fixture(autouse=True)
def float64():
    """Equivalences hold to float tolerance; float64 keeps float32 rounding out of the way."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture
def x():
    return torch.randn(4, 8, 10, 10)


@pytest.mark.parametrize("stride", [1, 2])
def test_separable_is_depthwise_then_pointwise(x, stride):
    unit = Separable(8, 12, stride)
    depthwise, pointwise = unit[0].weight, unit[1].weight
    assert depthwise.shape == (8, 1, 3, 3) and pointwise.shape == (12, 8, 1, 1)
    torch.testing.assert_close(unit(x), separable_reference(x, depthwise, pointwise, stride))


@pytest.mark.parametrize("stride", [1, 2])
def test_equivalent_equals_separable_tower_by_tower(x, stride):
    unit = Equivalent(8, 12, stride)
    tower_weights = [unit.state_dict()[f"towers.{i}.weight"] for i in range(8)]  # (1, 1, 3, 3) each
    towers = torch.cat([F.conv2d(x[:, i:i + 1], w, stride=stride, padding=1)
                        for i, w in enumerate(tower_weights)], dim=1)  # the literal towers
    pointwise = unit.pointwise[0].weight
    torch.testing.assert_close(unit(x), bn_relu(F.conv2d(towers, pointwise)))
    depthwise = torch.cat(tower_weights)
    torch.testing.assert_close(unit(x), separable_reference(x, depthwise, pointwise, stride))

    separable = Separable(8, 12, stride)  # mapped weights: the very same function
    with torch.no_grad():
        separable[0].weight.copy_(depthwise)
        separable[1].weight.copy_(pointwise)
    torch.testing.assert_close(unit(x), separable(x))


@pytest.mark.parametrize("c_out, stride", [(8, 1), (12, 2)])  # (8, 1): a shortcut would fit
def test_hybrid_without_shortcut_equals_separable_path_by_path(x, c_out, stride):
    unit = Hybrid(8, c_out, stride, residual=False)
    d, p = unit.depthwise.weight, unit.project.weight  # (C_in, 1, 3, 3), (C_out, C_in, 1, 1)
    paths = [F.conv2d(F.conv2d(x[:, i:i + 1], d[i:i + 1], stride=stride, padding=1), p[:, i:i + 1])
             for i in range(8)]  # path i: channel i -> its 3x3 -> its 1x1 projection to C_out
    torch.testing.assert_close(unit(x), bn_relu(torch.stack(paths).sum(0)))
    torch.testing.assert_close(unit(x), separable_reference(x, d, p, stride))


def test_hybrid_adds_an_identity_shortcut_where_shapes_allow(x):
    unit = Hybrid(8, 8, 1)
    d, p = unit.depthwise.weight, unit.project.weight
    pre = F.batch_norm(F.conv2d(F.conv2d(x, d, padding=1, groups=8), p), None, None, training=True)
    torch.testing.assert_close(unit(x), F.relu(pre + x))
    assert not Hybrid(8, 12, 1).shortcut and not Hybrid(8, 8, 2).shortcut


def test_hybrid_starts_as_separable_and_path_init_is_a_separate_knob():
    torch.manual_seed(0)
    separable = Separable(256, 256)
    torch.manual_seed(0)
    hybrid = Hybrid(256, 256)  # the same draws, in the same order: the shortcut is the only change
    assert torch.equal(hybrid.depthwise.weight, separable[0].weight)
    assert torch.equal(hybrid.project.weight, separable[1].weight)
    path_init = Hybrid(256, 256, path_init=True)
    # U(-b, b) has std b / sqrt(3): b = 1 (fan-in 1) for a path's projection, 1/16 for a pointwise
    assert path_init.project.weight.abs().max() <= 1
    assert path_init.project.weight.std().item() == pytest.approx(3 ** -0.5, rel=0.02)
    assert separable[1].weight.std().item() == pytest.approx(3 ** -0.5 / 16, rel=0.02)
    assert path_init.depthwise.weight.abs().max() <= 1 / 3  # fan-in 9, as a depthwise filter


def test_the_2x2_of_shortcut_and_init_is_four_presets(make_cfg):
    arms = {}
    for model in ("separable", "hybrid", "separable_path_init", "hybrid_path_init"):
        unit = instantiate(make_cfg(f"model={model}", "model.width=8", "model.depth=2").model).units[1]
        shortcut = isinstance(unit, Hybrid) and unit.shortcut
        pointwise = unit.project.weight if isinstance(unit, Hybrid) else unit[1].weight
        arms[model] = (shortcut, bool(pointwise.abs().max() > 1 / 8 ** 0.5))  # past U(+-1/sqrt(C_in))
    assert arms == {"separable": (False, False), "hybrid": (True, False),
                    "separable_path_init": (False, True), "hybrid_path_init": (True, True)}


def test_separable_bn_puts_bn_alone_between_depthwise_and_pointwise(x):
    unit = SeparableAct(8, 12, mid_act="none")
    assert [type(m).__name__ for m in unit] == ["Conv2d", "BatchNorm2d", "Identity", "Conv2d",
                                                "BatchNorm2d", "ReLU"]
    d, p = unit[0].weight, unit[3].weight
    mid = F.batch_norm(F.conv2d(x, d, padding=1, groups=8), None, None, training=True)
    torch.testing.assert_close(unit(x), bn_relu(F.conv2d(mid, p)))


@pytest.mark.parametrize("stride", [1, 2])
def test_extreme_inception_is_a_1x1_then_a_3x3_per_channel(x, stride):
    unit = blocks.ExtremeInception(8, 12, stride)
    p, d = unit[0].weight, unit[3].weight
    assert p.shape == (12, 8, 1, 1) and d.shape == (12, 1, 3, 3)
    expected = bn_relu(F.conv2d(bn_relu(F.conv2d(x, p)), d, stride=stride, padding=1, groups=12))
    torch.testing.assert_close(unit(x), expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_depthwise_is_extreme_inception_less_its_middle_bn_relu(x, stride):
    unit = blocks.PointwiseDepthwise(8, 12, stride)
    p, d = unit[0].weight, unit[1].weight
    assert p.shape == (12, 8, 1, 1) and d.shape == (12, 1, 3, 3) and len(unit) == 4
    expected = bn_relu(F.conv2d(F.conv2d(x, p), d, stride=stride, padding=1, groups=12))
    torch.testing.assert_close(unit(x), expected)


def test_resnext_depthwise_has_a_path_per_channel_and_a_bottleneck_that_follows_the_stage(make_cfg):
    net = instantiate(make_cfg("model=resnext_depthwise").model)
    for unit, c_out in zip(net.units, (64, 64, 128, 128, 256, 256)):
        grouped = unit.residual[3]
        assert grouped.in_channels == grouped.out_channels == grouped.groups == c_out // 2


def test_equivalent_towers_have_the_depthwise_init_distribution():
    torch.manual_seed(0)
    towers = Equivalent(512, 8).weight.flatten()
    depthwise = Separable(512, 8)[0].weight.flatten()
    assert towers.abs().max() <= 1 / 3 and depthwise.abs().max() <= 1 / 3
    assert towers.std().item() == pytest.approx(depthwise.std().item(), rel=0.05)


def test_grouped_spans_dense_to_separable(x):
    depthwise_end = Grouped(8, 12, groups=8)
    torch.testing.assert_close(
        depthwise_end(x), separable_reference(x, depthwise_end[0].weight, depthwise_end[1].weight))
    dense_end = Grouped(8, 12, groups=1)
    w3, w1 = dense_end[0].weight, dense_end[1].weight
    assert w3.shape == (8, 8, 3, 3)  # a dense 3x3 ...
    torch.testing.assert_close(dense_end(x), bn_relu(F.conv2d(F.conv2d(x, w3, padding=1), w1)))
    middle = Grouped(8, 12, groups=4)
    assert middle[0].weight.shape == (8, 2, 3, 3)  # ... through 4 groups of 2 channels


def test_channels_per_group_moves_every_stage_together(make_cfg):
    net = instantiate(make_cfg("model=grouped", "model.block.channels_per_group=4").model)
    assert [unit[0].groups for unit in net.units] == [16, 16, 16, 32, 32, 64]  # C_in / 4
    assert all(unit[0].in_channels // unit[0].groups == 4 for unit in net.units)
    depthwise = instantiate(make_cfg("model=grouped", "model.block.channels_per_group=1").model)
    assert all(unit[0].groups == unit[0].in_channels for unit in depthwise.units)


@pytest.mark.parametrize("channels_per_group", [1, 2, 8, 32, 64])
def test_preserve_complexity_keeps_each_unit_at_separables_weights(make_cfg, channels_per_group):
    net = instantiate(make_cfg("model=grouped", f"model.block.channels_per_group={channels_per_group}",
                               "model.block.preserve_complexity=true").model)
    separable = instantiate(make_cfg("model=separable").model)
    weights = lambda unit: sum(m.weight.numel() for m in unit if isinstance(m, nn.Conv2d))
    for unit, reference in zip(net.units, separable.units):
        assert abs(weights(unit) / weights(reference) - 1) <= 0.15, (channels_per_group, unit[0])  # W: a multiple of g
    plain = instantiate(make_cfg("model=grouped", f"model.block.channels_per_group={channels_per_group}").model)
    if channels_per_group > 1:  # without it, denser groups mean more weights
        assert sum(weights(u) for u in plain.units) > sum(weights(u) for u in separable.units)


@pytest.mark.parametrize("mid_act, act", [("relu", F.relu), ("elu", F.elu)])
def test_separable_act_puts_bn_and_the_activation_between(x, mid_act, act):
    unit = SeparableAct(8, 12, mid_act=mid_act)
    d, p = unit[0].weight, unit[3].weight
    mid = act(F.batch_norm(F.conv2d(x, d, padding=1, groups=8), None, None, training=True))
    torch.testing.assert_close(unit(x), bn_relu(F.conv2d(mid, p)))


def test_reformulated_inception_convolves_disjoint_segments(x):
    unit = blocks.ReformulatedInception(8, 12, towers=4)
    mid = bn_relu(F.conv2d(x, unit[0].weight))  # 1x1 -> (12 channels)
    w = unit[3].weight  # (12, 3, 3, 3): each tower sees its own 3 channels only
    segments = [F.conv2d(mid[:, 3 * t:3 * t + 3], w[3 * t:3 * t + 3], padding=1) for t in range(4)]
    torch.testing.assert_close(unit(x), bn_relu(torch.cat(segments, 1)))


def test_inception_branches_follow_googlenet_split(x):
    unit = blocks.Inception(8, 64)
    widths = [branch(x).shape[1] for branch in unit.branches]
    assert widths == [16, 32, 8, 8]
    assert [m.kernel_size for m in unit.branches[2] if isinstance(m, torch.nn.Conv2d)] == [(1, 1), (5, 5)]
    assert isinstance(unit.branches[3][0], torch.nn.MaxPool2d)
    torch.testing.assert_close(unit(x), torch.cat([b(x) for b in unit.branches], 1))


def test_resnext_is_a_bottleneck_with_a_projection_shortcut_when_shapes_change(x):
    unit = blocks.ResNeXt(8, 16, stride=2, cardinality=4, bottleneck_width=2)
    grouped = unit.residual[3]
    assert (grouped.in_channels, grouped.groups, grouped.stride) == (8, 4, (2, 2))
    assert isinstance(unit.shortcut[0], torch.nn.Conv2d)
    assert isinstance(blocks.ResNeXt(8, 8).shortcut, torch.nn.Identity)
    out = unit(x)
    expected = F.relu(unit.residual(x) + unit.shortcut(x))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", UNITS)
@pytest.mark.parametrize("c_in, c_out, stride", [(8, 8, 1), (8, 16, 2), (16, 8, 1), (12, 24, 2)])
def test_every_unit_maps_shapes(name, c_in, c_out, stride):
    out = UNITS[name](c_in, c_out, stride)(torch.randn(2, c_in, 8, 8))
    assert out.shape == (2, c_out, 8 // stride, 8 // stride)


@pytest.mark.parametrize("model", STACKED_PRESETS)
def test_every_preset_trains_a_step_in_the_stacked_backbone(make_cfg, model):
    net = instantiate(make_cfg(f"model={model}", "model.width=16", "model.depth=1").model)
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = F.cross_entropy(net(torch.randn(8, 3, 32, 32)), torch.arange(8))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()) if b.grad is not None)
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("overrides, message", [
    (["model=grouped", "model.block.groups=3"],
     "groups must divide the unit's input channels; groups=3 does not divide C_in=64"),
    (["model=reformulated_inception", "model.block.towers=5"],
     "towers must divide the unit's output channels; towers=5 does not divide C_out=64"),
    (["model=resnext", "model.block.cardinality=0"], "cardinality and model.block.bottleneck_width must be >= 1"),
    (["model=separable_act", "model.block.mid_act=tanh"], "mid_act must be one of relu, elu, none; got 'tanh'"),
    (["model=resnext", "model.block.cardinality=null"], "cardinality=null .one path per channel. needs model.block.bottleneck_ratio"),
    (["model=resnext", "model.block.cardinality=48", "model.block.bottleneck_ratio=0.5"],
     "cardinality=48 does not divide d=32"),
    (["model=inception", "model.width=4"], "needs C_out >= 8"),
])
def test_impossible_shapes_fail_when_the_config_is_read(make_cfg, overrides, message):
    with pytest.raises(Exception, match=message):
        instantiate(make_cfg(*overrides).model)


class TowersEquivalent(nn.Module):
    """The former ``Equivalent``: C_in tower modules, concatenated every step (727 parameter
    tensors in the network), kept here as the reference the one-tensor form must reproduce."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.stride = stride
        self.towers = nn.ModuleList(blocks.conv(1, 1, 3, stride) for _ in range(c_in))
        self.pointwise = nn.Sequential(*blocks.conv_bn_act(c_in, c_out, 1))

    def forward(self, x):
        filters = torch.cat([tower.weight for tower in self.towers])
        return self.pointwise(F.conv2d(x, filters, stride=self.stride, padding=1, groups=len(self.towers)))


def test_equivalent_is_one_tensor_that_inits_trains_and_saves_as_the_tower_modules_did(x):
    torch.manual_seed(0)
    towers = TowersEquivalent(8, 12, 2)
    torch.manual_seed(0)
    unit = Equivalent(8, 12, 2)
    assert unit.state_dict().keys() == towers.state_dict().keys()  # towers.<i>.weight kept
    for key, value in towers.state_dict().items():
        assert torch.equal(unit.state_dict()[key], value), key  # the same initial weights
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
                  for m in (towers, unit)]
    for step in range(3):
        for module, optimizer in zip((towers, unit), optimizers):
            optimizer.zero_grad()
            module(x * (step + 1)).square().mean().backward()
            optimizer.step()
    for key, value in towers.state_dict().items():
        assert torch.equal(unit.state_dict()[key], value), key  # bit for bit after training
    reloaded = Equivalent(8, 12, 2)
    reloaded.load_state_dict(towers.state_dict())  # a checkpoint of the tower modules loads
    assert torch.equal(reloaded.weight, unit.weight)
    count = lambda module: len(list(module.parameters()))
    assert count(unit) == count(Separable(8, 12, 2)) == 4  # depthwise, pointwise, BN weight and bias
