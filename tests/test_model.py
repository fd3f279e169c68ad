"""Backbone shapes, complexity counts and the learning-rate schedule."""
import math

import pytest
import torch

from hybrid_exp.backbones import Stacked
from hybrid_exp.blocks import Separable, Standard
from hybrid_exp.module import complexity, warmup_cosine


@pytest.mark.parametrize("block", [Standard, Separable])
@pytest.mark.parametrize("c_in, c_out, stride", [(8, 8, 1), (8, 16, 2), (16, 4, 1), (3, 12, 2)])
def test_units_map_channels_and_resolution(block, c_in, c_out, stride):
    out = block(c_in, c_out, stride)(torch.randn(2, c_in, 16, 16))
    assert out.shape == (2, c_out, 16 // stride, 16 // stride)


def test_stacked_backbone_downsamples_between_stages():
    net = Stacked(Separable, width=8, depth=2, stages=3)
    strides = [unit[0].stride[0] for unit in net.units]
    assert strides == [1, 1, 2, 1, 2, 1]
    assert [unit[1].out_channels for unit in net.units] == [8, 8, 16, 16, 32, 32]
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)


def test_impossible_backbone_size_names_the_keys():
    with pytest.raises(ValueError, match="model.width, model.depth and model.stages must be >= 1"):
        Stacked(Standard, width=0)


def test_complexity_counts_params_and_multiply_adds_by_hand():
    net = Stacked(Separable, width=4, depth=1, stages=1, num_classes=10)
    # stem 3x3 3->4 + BN(4); depthwise 3x3 on 4 + pointwise 4->4 + BN(4); linear 4->10 + bias
    params = 3 * 4 * 9 + 8 + 4 * 9 + 4 * 4 + 8 + 4 * 10 + 10
    mult_adds = 32 * 32 * (3 * 4 * 9 + 4 * 9 + 4 * 4) + 4 * 10  # convs per pixel, then linear
    assert complexity(net) == {"params": params, "mult_adds": mult_adds}
    assert net.training  # counting leaves the mode alone


def test_warmup_then_cosine_to_zero():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)
    assert warmup_cosine(0, 0, 100) == 1.0
    assert all(warmup_cosine(s, 10, 100) >= warmup_cosine(s + 1, 10, 100) for s in range(10, 100))
    assert not math.isnan(warmup_cosine(5, 0, 1))


def test_depthwise_weight_decay_is_its_own_group_and_off_by_default(make_cfg):
    from hybrid_exp.fusion import fuse
    from hybrid_exp.members import build_network, member_config
    from hybrid_exp.module import Classifier, is_depthwise

    cfg = make_cfg("model=equivalent", "model.width=8", "model.depth=1")
    nets = [build_network(member_config(cfg, seed)) for seed in (0, 1)]
    default = Classifier(nets[0]).configure_optimizers()
    assert len(default.param_groups) == 1 and default.param_groups[0]["weight_decay"] == 5e-4
    for net in (nets[0], fuse(nets)):  # one run, and an array: depthwise filters found in both
        groups = Classifier(net, depthwise_weight_decay=0.0).configure_optimizers().param_groups
        assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
        depthwise = {id(p) for p in groups[1]["params"]}
        expected = [unit.weight for unit in net.units]  # the towers (3x3, one channel per group)
        assert depthwise == {id(p) for p in expected} and all(is_depthwise(p) for p in expected)
    assert not any(is_depthwise(p) for p in build_network(member_config(make_cfg("model=standard"), 0)).parameters())
