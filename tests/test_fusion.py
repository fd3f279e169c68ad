"""Fused seed arrays: every unit and backbone, fused, trains exactly as its members would alone."""
import copy
from pathlib import Path

import pytest
import torch

from hybrid_exp import config_dir
from hybrid_exp.data import ResidentData
from hybrid_exp.dataset_files import load_cifar10
from hybrid_exp.fusion import cat_channels, fuse, member_state
from hybrid_exp.members import build_network, member_config
from hybrid_exp.module import prepare_network
from tests.helpers import BACKBONES, sgd_steps

SEEDS = [0, 3, 7]  # the members of the array under test
UNITS = sorted(p.stem for p in (Path(config_dir()) / "model/block").glob("*.yaml"))
FAST_CASES = {"separable", "standard", "inception", "equivalent"}  # the rest run in the slow suite


@pytest.fixture(scope="module")
def arrays(cifar10_root):
    return load_cifar10(cifar10_root)


class Loaded(ResidentData):
    """Real CIFAR-10 images, read once for the module."""

    def __init__(self, arrays, **kwargs):
        super().__init__(**kwargs)
        self.arrays = arrays

    def load(self):
        return self.arrays


def real_data(arrays, seeds):
    data = Loaded(arrays, batch_size=8, val_size=100, eval_size=100, train_subset=40, seeds=seeds)
    data.setup()
    return data


def cases():
    for backbone, overrides in BACKBONES.items():
        for unit in UNITS:
            marks = [] if unit in FAST_CASES else [pytest.mark.slow]
            yield pytest.param(overrides, unit, marks=marks, id=f"{backbone}-{unit}")


@pytest.mark.parametrize("backbone, unit", list(cases()))
def test_fused_training_equals_separate_trainings_member_by_member(make_cfg, arrays, backbone, unit):
    torch.set_default_dtype(torch.float64)
    try:
        cfg = make_cfg(*backbone, f"model/block={unit}")
        nets = [build_network(member_config(cfg, seed)) for seed in SEEDS]
        fused = prepare_network(fuse([copy.deepcopy(net) for net in nets]), True, False)
        sgd_steps(fused, len(SEEDS), real_data(arrays, SEEDS))
        for m, (seed, net) in enumerate(zip(SEEDS, nets)):
            sgd_steps(prepare_network(net, True, False), 1, real_data(arrays, [seed]))
            alone, extracted = net.state_dict(), member_state(fused.state_dict(), m, len(SEEDS))
            assert extracted.keys() == alone.keys()
            for key, value in alone.items():
                torch.testing.assert_close(extracted[key], value, rtol=1e-9, atol=1e-12, msg=key)
            reloaded = build_network(member_config(cfg, seed))
            reloaded.load_state_dict(extracted)  # today's key layout: the unfused network loads it
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_fused_unit_state_dict_keeps_the_unfused_keys_and_the_first_step_moves_every_member(make_cfg, arrays):
    cfg = make_cfg("model=equivalent", "model.width=8", "model.depth=1")
    nets = [build_network(member_config(cfg, seed)) for seed in SEEDS]
    fused = fuse(nets)
    assert fused.state_dict().keys() == nets[0].state_dict().keys()  # towers.<i>.weight included
    assert fused.state_dict()["units.0.towers.0.weight"].shape == (3, 1, 3, 3)  # one per member
    before = [member_state(fused.state_dict(), m, 3) for m in range(3)]
    sgd_steps(fused, 3, real_data(arrays, SEEDS), steps=1)
    for m in range(3):
        after = member_state(fused.state_dict(), m, 3)
        assert not torch.equal(after["units.0.towers.0.weight"], before[m]["units.0.towers.0.weight"])


def test_members_start_from_the_weights_their_unfused_runs_start_from(make_cfg):
    cfg = make_cfg("model=separable", "model.width=8", "model.depth=1", "seed=[3,0]")
    fused = fuse([build_network(member_config(cfg, seed)) for seed in (0, 3)])
    for m, seed in enumerate((0, 3)):
        alone = build_network(make_cfg("model=separable", "model.width=8", "model.depth=1", f"seed={seed}"))
        for key, value in alone.state_dict().items():
            assert torch.equal(member_state(fused.state_dict(), m, 2)[key], value), key


def test_cat_channels_concatenates_within_each_members_block():
    a = torch.arange(4.0).view(1, 4, 1, 1)  # 2 members x 2 channels
    b = torch.arange(10.0, 16.0).view(1, 6, 1, 1)  # 2 members x 3 channels
    assert cat_channels([a, b], 2).flatten().tolist() == [0, 1, 10, 11, 12, 2, 3, 13, 14, 15]


def test_a_torch_layer_without_a_fusion_rule_is_refused_in_one_sentence():
    with pytest.raises(TypeError, match="no rule for LayerNorm, whose parameters would mix the members"):
        fuse([torch.nn.Sequential(torch.nn.LayerNorm(4)) for _ in range(2)])


def layout_cases():
    for backbone, overrides in BACKBONES.items():
        for unit in UNITS:
            for members in (1, 2):
                yield pytest.param(overrides, unit, members, id=f"{backbone}-{unit}-x{members}")


@pytest.mark.parametrize("backbone, unit, members", list(layout_cases()))
def test_every_activation_stays_channels_last_in_every_unit_and_backbone(make_cfg, backbone, unit, members):
    """A reshape across the channel dim of an NHWC tensor silently copies it to NCHW, and every
    conv after it pays layout copies: no module may see or return a 4-D tensor in another layout."""
    cfg = make_cfg(*backbone, f"model/block={unit}")
    nets = [build_network(member_config(cfg, seed)) for seed in range(members)]
    net = prepare_network(fuse(nets) if members > 1 else nets[0], True, False)
    strays = []

    def check(module, inputs, output):
        for role, x in [*(("input", x) for x in inputs), ("output", output)]:
            if isinstance(x, torch.Tensor) and x.dim() == 4 and not x.is_contiguous(
                    memory_format=torch.channels_last):
                strays.append(f"{role} of {names[module]} ({type(module).__name__}, {tuple(x.shape)})")

    names = {module: name or "the network" for name, module in net.named_modules()}
    hooks = [m.register_forward_hook(check) for m in names]
    x = torch.randn(2, 3 * members, 32, 32).to(memory_format=torch.channels_last)
    net(x).sum().backward()
    for hook in hooks:
        hook.remove()
    assert not strays, f"{len(strays)} activations left channels_last, first: {strays[:3]}"


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cat_channels_keeps_its_inputs_layout_and_is_the_same_in_both(layout):
    torch.manual_seed(0)
    a, b = torch.randn(2, 3 * 4, 5, 5), torch.randn(2, 3 * 2, 5, 5)  # 3 members x 4, 3 x 2
    expected = torch.cat([a.view(2, 3, 4, 5, 5), b.view(2, 3, 2, 5, 5)], 2).view(2, 18, 5, 5)
    joined = cat_channels([a.to(memory_format=layout), b.to(memory_format=layout)], 3)
    assert torch.equal(joined, expected) and joined.is_contiguous(memory_format=layout)


class TwoBranches(torch.nn.Module):
    """A unit as anyone writes it: two conv branches joined with ``join``."""

    members = 1  # set by fuse

    def __init__(self, join):
        super().__init__()
        self.join = join
        self.a, self.b = torch.nn.Conv2d(4, 3, 3, padding=1), torch.nn.Conv2d(4, 5, 1)

    def forward(self, x):
        return self.join([self.a(x), self.b(x)], self.members)


def test_a_unit_that_joins_channels_with_torch_cat_breaks_the_fusion_contract_and_is_caught():
    from hybrid_exp.fusion import contract_breach

    plain = TwoBranches(lambda tensors, members: torch.cat(tensors, dim=1))
    assert contract_breach(plain).startswith("fused, each member's output differs from its own by up to")
    assert contract_breach(TwoBranches(cat_channels)) is None  # within each member's block: exact


@pytest.mark.parametrize("unit", UNITS)
def test_every_project_unit_keeps_the_fusion_contract(make_cfg, unit):
    from hybrid_exp.checks import check_fusable

    check_fusable(make_cfg(*BACKBONES["stacked"], f"model/block={unit}"))  # raises if it breaks it


def test_a_grid_of_a_unit_that_breaks_the_contract_stops_before_anything_exists(tmp_path):
    """A researcher's edit, as it happens: Inception's branches joined with torch.cat."""
    import subprocess
    import sys

    edited = ("import torch, hybrid_exp.blocks as blocks\n"
              "blocks.Inception.forward = lambda self, x: torch.cat([b(x) for b in self.branches], dim=1)\n"
              "from hybrid_exp.cli import main; main()\n")
    grid = subprocess.run([sys.executable, "-c", edited, "-m", "model=inception", "seed=0,1", "data=synthetic",
                           "model.width=8", "model.depth=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = grid.stderr.strip().splitlines()
    assert grid.returncode != 0 and len(lines) == 1, grid.stderr[-2000:]
    assert lines[0].startswith("model/block=inception (Inception) breaks the fusion contract: fused, each member's "
                               "output differs") and "hybrid_exp.fusion.cat_channels" in lines[0]
    assert "hydra.launcher.fuse_seeds=false" in lines[0] and not list(tmp_path.iterdir())
