"""FractalNet (drop-path, columns) and DarkNet: shapes, structure, every unit trains a step."""
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from hybrid_exp.backbones import DarkNet, DropPath, FractalBlock, FractalNet
from hybrid_exp.blocks import Separable, Standard
from hybrid_exp.seeding import counter_uniform
from tests.helpers import BACKBONES, BLOCKS, SMALL_DARKNET, SMALL_FRACTAL


@pytest.fixture
def instantiate_model(make_cfg):
    return lambda *overrides: instantiate(make_cfg(*overrides).model)


class Scale(nn.Module):
    """A unit that multiplies by its own constant: which units ran is visible in the output."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(float(torch.randint(2, 100, ()))))

    def forward(self, x):
        return x * self.factor


def fractal_block(columns):
    torch.manual_seed(0)
    return FractalBlock(Scale, 1, 1, columns, dropout=0.0)


def training_paths(columns, global_fraction=0.5, local_drop=0.15, seed=0, device="cpu"):
    """One training step's drop-path draws for one member."""
    return DropPath(columns, global_fraction, local_drop, 1, torch.tensor([seed], device=device),
                    torch.tensor(0, device=device))


def test_fractal_rule_in_eval_joins_every_column_by_mean():
    block = fractal_block(3).eval()
    (u0,), (u1a, u1b), (u2a, u2b, u2c, u2d) = [[u[0].factor for u in col] for col in block.columns]
    x = torch.ones(1, 1, 1, 1)
    inner = (x * u2a * u2b + x * u1a) / 2  # step 2: columns 1 and 2 meet
    expected = (inner * u2c * u2d + inner * u1b + x * u0) / 3  # step 4: one join of all three
    torch.testing.assert_close(block(x, DropPath(3, 0.5, 0.15, members=1)), expected)
    assert [len(col) for col in block.columns] == [1, 2, 4]


def test_global_drop_path_runs_one_column_end_to_end():
    block = fractal_block(3)
    x = torch.ones(1, 1, 1, 1)
    for column in range(3):
        product = torch.stack([u[0].factor for u in block.columns[column]]).prod()
        paths = training_paths(3, global_fraction=1.0)
        paths.column = torch.tensor([column])
        torch.testing.assert_close(block(x, paths), x * product)
    grads = torch.autograd.grad(block(x, paths), [u[0].factor for col in block.columns for u in col])
    assert [g.item() != 0 for g in grads] == [False, False, False, True, True, True, True]  # dropped: 0


def test_local_drop_path_keeps_at_least_one_input_and_drops_at_the_rate():
    all_dropped = [training_paths(3, 0.0, 1.0, seed).weights([0, 1, 2]) for seed in range(100)]
    assert all(w.sum() == 1 and (w == 1).sum() == 1 for w in all_dropped)  # one survives
    assert {int(w.argmax()) for w in all_dropped} == {0, 1, 2}
    torch.testing.assert_close(training_paths(3, 0.0, 0.0).weights([0, 1, 2]),
                               torch.full((1, 3), 1 / 3, dtype=torch.float64))  # no drop: the mean
    kept = [training_paths(2, 0.0, 0.15, seed).weights([0, 1]) for seed in range(4000)]
    both = sum(bool((w == 0.5).all()) for w in kept) / len(kept)
    assert both == pytest.approx(0.85 ** 2, abs=0.03)


def test_drop_path_draws_are_a_counter_stream_of_seed_and_step():
    """Rows of an array draw as their members alone; the step and the seed change the draws."""
    draw = lambda seeds, step: DropPath(3, 0.5, 0.15, len(seeds), torch.tensor(seeds),
                                        torch.tensor(step)).weights([0, 1, 2])
    both = draw([7, 2**62 - 1], 5)
    assert torch.equal(both[0], draw([7], 5)[0]) and torch.equal(both[1], draw([2**62 - 1], 5)[0])
    rows = {tuple(draw([seed], step)[0].tolist()) for seed in range(20) for step in range(20)}
    assert len(rows) >= 4  # global columns and local mixes: the draws vary
    u = counter_uniform(torch.arange(1000), torch.tensor(3), 1, 100)  # 100k numbers
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert ((counts - 10_000).abs() < 500).all() and 0 <= u.min() and u.max() < 1  # uniform


@pytest.mark.gpu
def test_drop_path_draws_are_the_same_on_cpu_and_gpu():
    for seed in range(50):
        cpu = training_paths(3, seed=seed)
        gpu = training_paths(3, seed=seed, device="cuda")
        assert torch.equal(cpu.weights([1, 2]), gpu.weights([1, 2]).cpu())
        assert torch.equal(cpu.weights([0, 1, 2]), gpu.weights([0, 1, 2]).cpu())


def test_network_mixes_global_and_local_batches_in_training_and_uses_all_columns_in_eval():
    torch.manual_seed(0)
    net = FractalNet(Scale, columns=2, widths=(1,), dropout=(0.0,), num_classes=1, dense_stem=False)
    with torch.no_grad():
        net.head.weight.fill_(1.0)
        net.head.bias.zero_()
    (u0,), (u1a, u1b) = [[u[0].factor.item() for u in col] for col in net.blocks[0].columns]
    x = torch.ones(1, 1, 2, 2)  # Scale units ignore channel counts
    full, col0, col1 = (u1a * u1b + u0) / 2, u0, u1a * u1b
    assert net.eval()(x).item() == pytest.approx(full)
    net.train()
    seen = [round(net(x).item(), 4) for _ in range(400)]
    # global batches give one column; local ones give the mean or (a join input dropped) one column
    assert set(seen) <= {round(v, 4) for v in (full, col0, col1)}
    assert seen.count(round(full, 4)) / 400 == pytest.approx(0.5 * 0.85 ** 2, abs=0.06)


def test_one_column_is_a_plain_conv_stack():
    torch.manual_seed(0)
    net = FractalNet(Standard, columns=1, widths=(8, 8, 16, 16, 16), dropout=(0.0,) * 5).eval()
    units = [block.columns[0][0][0] for block in net.blocks]  # the conv unit (then dropout)
    assert all(len(block.columns) == 1 and len(block.columns[0]) == 1 for block in net.blocks)
    x = torch.randn(2, 3, 32, 32)
    y = x
    for unit in units:
        y = F.max_pool2d(unit(y), 2)
    torch.testing.assert_close(net(x), net.head(y.mean(dim=(2, 3))))
    net.train()
    first = net(x)
    torch.testing.assert_close(net(x), first)  # drop-path has nothing to drop in one column


def test_fractalnet_layer_counts_and_shapes():
    for columns, layers in [(3, 20), (4, 40)]:
        net = FractalNet(Standard, columns=columns, widths=(8, 8, 8, 8, 8))
        assert sum(len(block.columns[-1]) for block in net.blocks) == layers  # deepest path
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_darknet_keeps_a_dense_stem_1x1_convs_and_leaky_relu_in_the_units(instantiate_model):
    net = instantiate_model("model=darknet19", "model/block=separable")
    stem = net.features[0]
    assert isinstance(stem, Standard) and stem[0].in_channels == 3 and stem[0].groups == 1
    units = [m for m in net.features if isinstance(m, Separable)]
    assert len(units) == 11  # Darknet-19's 12 3x3 convs, less the stem
    assert all(isinstance(u[-1], nn.LeakyReLU) and u[-1].negative_slope == 0.1 for u in units)
    one_by_one = [m for m in net.features if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [m.out_channels for m in one_by_one] == [64, 128, 256, 256, 512, 512]
    x = torch.randn(2, 3, 32, 32)
    assert net.features(x).shape == (2, 1024, 4, 4) and net(x).shape == (2, 10)


def test_darknet_reference_ends_at_4x4(instantiate_model):
    net = instantiate_model("model=darknet")
    convs = [m for m in net.features.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 256, 512, 1024]
    assert net.features(torch.randn(1, 3, 32, 32)).shape == (1, 1024, 4, 4)


def test_darknet_rejects_an_unknown_layer():
    with pytest.raises(ValueError, match="unknown layer 'X'"):
        DarkNet(Standard, "16 X 32")


@pytest.mark.parametrize("backbone", BACKBONES.values(), ids=BACKBONES.keys())
@pytest.mark.parametrize("unit", BLOCKS)
def test_every_unit_trains_a_step_in_every_backbone(instantiate_model, backbone, unit):
    torch.manual_seed(0)
    net = instantiate_model(*backbone, f"model/block={unit}")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loss = F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("dense_stem", [True, False])
def test_both_backbones_set_the_stem_on_the_rgb_image_the_same_way(instantiate_model, dense_stem):
    fractal = instantiate_model(*SMALL_FRACTAL, "model/block=separable", f"model.dense_stem={dense_stem}")
    darknet = instantiate_model(*SMALL_DARKNET, "model/block=separable", f"model.dense_stem={dense_stem}")
    on_rgb = [column[0][0] for column in fractal.blocks[0].columns] + [darknet.features[0]]
    expected = Standard if dense_stem else Separable
    assert all(type(unit) is expected for unit in on_rgb)
    assert all(type(column[0][0]) is Separable for block in fractal.blocks[1:] for column in block.columns)
    x = torch.randn(2, 3, 32, 32)
    assert fractal(x).shape == darknet(x).shape == (2, 10)


def test_only_fractalnets_dropout_keeps_its_step_from_a_cuda_graph(instantiate_model):
    assert "dropout on the host" in instantiate_model(*SMALL_FRACTAL).cuda_graph_blocker
    assert instantiate_model(*SMALL_FRACTAL, "model.dropout=[0,0,0,0,0]").cuda_graph_blocker is None
