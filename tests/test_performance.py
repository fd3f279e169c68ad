"""The fast path: its augmentation against the conventional per-image one, the compute knobs,
the benchmark command, and accuracy parity with the conventional pipeline."""
import copy
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid_exp.batches import Batches, crop_flip
from hybrid_exp.conventional import AugmentedImages
from hybrid_exp.costs import step_costs
from hybrid_exp.dataset_files import MEAN, STD
from hybrid_exp.device import resolve_precision
from hybrid_exp.fusion import fuse
from hybrid_exp.members import build_network, member_config
from hybrid_exp.module import prepare_network
from hybrid_exp.throughput import PAPER_FIG4, project, protocol, protocol_setups
from hybrid_exp.train import train
from tests.helpers import FAST, SMALL_FRACTAL, TINY, start


def test_per_image_augmentation_draws_the_same_crops_and_flips_as_the_batched_one():
    """Every conventional sample is one of the 9 x 9 x 2 crops/flips crop_flip can produce."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 32, 32, 3), dtype=torch.uint8)
    dataset = AugmentedImages(images.numpy(), torch.arange(20).numpy())
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    seen_offsets, seen_flips = set(), set()
    for i in range(20):
        x, label = dataset[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and label == i
        pixels = ((x * std + mean) * 255).round().to(torch.uint8).permute(1, 2, 0)  # (H, W, C)
        matches = [(r, c, f) for r in range(9) for c in range(9) for f in (False, True)
                   if torch.equal(crop_flip(images[i:i + 1], torch.tensor([[r, c]]),
                                            torch.tensor([f]))[0], pixels)]
        assert matches, f"sample {i} is no crop/flip of its image"
        seen_offsets.add(matches[0][:2])
        seen_flips.add(matches[0][2])
    assert len(seen_offsets) > 5 and seen_flips == {False, True}  # it does augment


@pytest.mark.gpu
def test_augmentation_stream_is_the_same_on_cpu_and_gpu():
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    labels = torch.arange(64)
    rows = torch.arange(64)[None]
    on_cpu = list(Batches(images, labels, rows, 16, augment_seeds=[3]))
    on_gpu = list(Batches(images.cuda(), labels.cuda(), rows.cuda(), 16, augment_seeds=[3]))
    for (x, y), (gx, gy) in zip(on_cpu, on_gpu):
        assert torch.equal(y, gy.cpu())
        torch.testing.assert_close(x, gx.cpu())


def test_precision_auto_is_fp32_on_cpu_and_explicit_values_pass_through():
    expected = ("bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                else "32-true")
    assert resolve_precision("auto") == expected
    assert resolve_precision("auto", accelerator="cpu") == "32-true"
    assert resolve_precision("16-mixed") == "16-mixed"


def test_prepared_network_is_channels_last_and_keeps_its_checkpoint_keys():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    keys = list(net.state_dict())
    prepared = prepare_network(net, channels_last=True, compile=True)
    assert prepared[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(prepared.state_dict()) == keys  # compiled in place: checkpoints still load


def test_protocol_counts_the_paper_figures():
    figures = protocol()
    assert len(figures["fig4"]) == 11 and len(figures["fig4-paper"]) == 6  # 6 setups + 5 controls
    assert set(figures["fig5"]) == {"fractalnet+standard", "fractalnet+separable"}
    assert set(figures["fig6"]) == {"darknet+standard", "darknet+separable"}
    assert set(figures["fig4-paper"]) == {"separable", "inception", "resnext",
                                          "reformulated_inception", "equivalent", "hybrid"}
    assert len(protocol_setups()) == 15
    assert figures["fig4"]["separable"] == 10 * 190 * 45000  # seeds x epochs x training images


def test_grouped_convs_backward_flops_are_counted_with_their_groups():
    """torch's counter charges a grouped conv's input gradient as a dense conv's."""
    for groups in (1, 4, 64):
        conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=groups, bias=False)
        x = torch.randn(2, 64, 8, 8, requires_grad=True)
        forward = 2 * 2 * 64 * 8 * 8 * (64 // groups) * 9  # 2 x multiply-adds
        assert step_costs(lambda conv=conv, x=x: conv(x))["flops"] == forward
        assert step_costs(lambda conv=conv, x=x: conv(x).sum().backward())["flops"] == 3 * forward


def test_traffic_counts_what_each_operator_reads_and_writes():
    a = torch.randn(1000)  # 4000 bytes
    assert step_costs(lambda: a + a)["bytes"] == 3 * 4000  # two reads of the same tensor, a write
    assert step_costs(lambda: a.relu_())["bytes"] == 2 * 4000  # in place: read, write
    assert step_costs(lambda: a.view(10, 100).t())["bytes"] == 0  # views move nothing


def test_projection_gives_each_figure_in_each_measured_mode():
    fake = lambda setup, rate: {"setup": setup, "fuse": 10, "fast_images_per_s": rate,
                                "fused_images_per_s": 4 * rate, "fast_eval_images_per_s": 3 * rate,
                                "fused_eval_images_per_s": 12 * rate, "fused_warmup_seconds": 10.0}
    results = [fake(setup, 1000.0) for setup in protocol()["fig4-paper"]]
    projection = project(results)
    paper, fig4, fig5 = projection["fig4-paper"], projection["fig4"], projection["fig5"]
    assert paper["complete"] and (fig4["setups_measured"], fig4["complete"]) == (6, False)
    assert fig5["setups_measured"] == 0 and "fast_device_hours" not in fig5
    train, evaluate = 10 * 190 * 45000, 10 * (190 * 5000 + 6000)  # per setup, images
    assert paper["fast_device_hours"] == pytest.approx(6 * (train / 1000 + evaluate / 3000) / 3600)
    assert paper["fused_device_hours"] == pytest.approx(6 * (train / 4000 + evaluate / 12000 + 10) / 3600)


@pytest.mark.slow
def test_bench_command_times_both_pipelines_packing_and_projects_the_protocol(tmp_path, cifar10_root):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "hybrid_exp.bench", "--models", "separable",
                          "--seconds", "2", "--workers", "1", "--data-root", str(cifar10_root),
                          "--fuse", "2", "--pack", "1,2", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["fast_images_per_s"] > 0 and result["conventional_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["fast_images_per_s"] / result["conventional_images_per_s"])
    assert report["ratio"] == pytest.approx(result["ratio"])
    assert result["lightning_images_per_s"] > 0 and result["fused_images_per_s"] > 0  # --fuse 2
    assert "graph_images_per_s" not in result  # CUDA graphs need a GPU: the mode is left out
    projection = report["protocol"]["fig4-paper"]
    assert (projection["setups_measured"], projection["complete"]) == (1, False)
    for mode in ("lightning", "conventional", "fast", "fused"):  # training + evaluation + warm-up
        training_only = protocol()["fig4"]["separable"] / result[f"{mode}_images_per_s"] / 3600
        assert projection[f"{mode}_device_hours"] > training_only
    assert result["flops_per_image"] > 3 * 2 * 24_000_000 * 0.9  # forward + backward of separable
    assert result["bytes_per_image"] > 1e6
    assert "fast_bandwidth_share" not in result  # a CPU's peak bandwidth is not known
    assert "separable" in run.stdout and "ratio" in run.stdout and report["machine"]
    one, two = report["packing"]  # two runs at once, each its own process
    assert (one["runs"], two["runs"], one["scaling"]) == (1, 2, 1.0)
    assert two["images_per_s"] > 0 and two["per_run_images_per_s"] == pytest.approx(two["images_per_s"] / 2)


@pytest.mark.slow
def test_fast_path_reaches_the_accuracy_of_the_conventional_pipeline(make_cfg, cifar10_root):
    """Same subset, same seeds, same network: test error within noise of each other."""
    common = [f"data.root={cifar10_root}", "data.train_subset=2000", "data.val_size=0",
              "data.eval_size=2000", *TINY, "trainer.max_epochs=4"]
    errors = {pipeline: [train(make_cfg(f"data={pipeline}", *common, f"seed={seed}",
                                        "logger.experiment_name=" + pipeline))[0].metrics["test/error"]
                         for seed in range(3)]
              for pipeline in ("cifar10", "cifar10_conventional")}
    fast, conventional = errors["cifar10"], errors["cifar10_conventional"]
    assert max(fast + conventional) < 75  # both learn (chance: 90%)
    spread = statistics.stdev(fast + conventional)
    assert abs(statistics.mean(fast) - statistics.mean(conventional)) < 3 * spread + 1, errors


@pytest.mark.slow
def test_compiled_training_runs_and_matches_the_plain_one(make_cfg):
    fast = ["data=synthetic", "data.train_subset=256", "data.val_size=64", "data.eval_size=64",
            *TINY, "trainer.max_epochs=1"]
    plain = train(make_cfg(*fast))[0].metrics
    compiled = train(make_cfg(*fast, "trainer.compile=true", "rerun=true"))[0].metrics
    assert compiled["train/loss"] == pytest.approx(plain["train/loss"], rel=1e-2)


@pytest.mark.slow
def test_a_compiled_fused_array_trains_as_the_eager_one_in_float64(make_cfg):
    """trainer.compile=true on an array: the same weights after SGD steps, to float64 rounding
    (inception: its branches concatenate within each member's channels)."""
    from tests.helpers import sgd_steps

    class Batches:  # real shapes, random values: the compiled code sees what training sees
        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(3):
                yield (torch.randn(8, 6, 32, 32, generator=g, dtype=torch.float64)
                       .to(memory_format=torch.channels_last), torch.randint(10, (8, 2), generator=g))

    torch.set_default_dtype(torch.float64)
    try:
        cfg = make_cfg("model=inception", "model.width=8", "model.depth=1")
        nets = [build_network(member_config(cfg, seed)) for seed in (0, 1)]
        eager = sgd_steps(prepare_network(fuse(copy.deepcopy(nets)), True, False), 2, Batches(), steps=3)
        compiled = sgd_steps(prepare_network(fuse(nets), True, True), 2, Batches(), steps=3)
        assert compiled.net._compiled_call_impl is not None  # compiled in place
        for key, value in eager.net.state_dict().items():
            torch.testing.assert_close(compiled.net.state_dict()[key], value, rtol=1e-9, atol=1e-12, msg=key)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.slow
def test_bench_e2e_times_a_real_fused_grid_per_member(cifar10_root):
    from hybrid_exp.throughput import e2e
    rows = e2e(["separable", "hybrid"], str(cifar10_root), members=2, epochs=2,
               overrides=("data.train_subset=500", "data.val_size=200", "data.eval_size=200", *TINY))
    assert [(r["setup"], r["seed"]) for r in rows] == [("hybrid", 0), ("hybrid", 1),
                                                       ("separable", 0), ("separable", 1)]
    for row in rows:
        assert row["epoch_seconds"] > 0
        assert row["seconds_per_epoch_per_member"] == pytest.approx(row["epoch_seconds"] / 2)


@pytest.mark.slow
def test_a_bench_killed_after_its_first_setup_leaves_that_setups_figures(tmp_path, cifar10_root):
    """--modes times only the modes named; the JSON is on disk before a setup's row is printed."""
    out = tmp_path / "bench.json"
    bench = start([sys.executable, "-m", "hybrid_exp.bench", "--models", "separable", "inception",
                              "--modes", "fast", "fused", "--fuse", "2", "--seconds", "0.05",
                   "--batch-size", "16", "--data-root", str(cifar10_root), "--json", str(out)])
    for line in bench.stdout:
        if line.startswith("separable "):
            break
    bench.kill()
    bench.communicate(timeout=60)
    report = json.loads(out.read_text())
    first = report["results"][0]
    assert report["modes"] == ["fast", "fused"] and first["setup"] == "separable"
    assert first["fast_images_per_s"] > 0 and first["fused_images_per_s"] > 0
    assert not any(key.startswith(("lightning", "conventional")) for key in first)  # not asked for
    assert report["protocol"]["fig4-paper"]["setups_measured"] == 1  # the projection so far


def test_a_failing_setup_is_its_row_and_the_next_is_timed(tmp_path, capsys, monkeypatch, cifar10_root):
    from hybrid_exp import throughput
    from hybrid_exp.bench import main

    def bench(setup, *args, **kwargs):
        if setup == "inception":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")
        return {"setup": setup, "fuse": 1, "skipped": {}, "fast_images_per_s": 100.0,
                "flops_per_image": 1e9, "bytes_per_image": 1e6, "fast_eval_images_per_s": 300.0}

    monkeypatch.setattr(throughput, "bench", bench)
    report = main(["--models", "inception", "separable", "--modes", "fast", "--device", "cpu",
                   "--data-root", str(cifar10_root), "--json", str(tmp_path / "b.json")])
    failed, timed = report["results"]
    assert failed == {"setup": "inception", "error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert timed["fast_images_per_s"] == 100.0 and report["protocol"]["fig4-paper"]["setups_measured"] == 1
    assert "inception               failed: RuntimeError: CUDA out of memory." in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["results"] == report["results"]


def test_the_bench_and_training_make_the_same_graph_decision():
    """FractalNet with dropout (Fig. 5's default) seeds its dropout on the host every step: no
    graph mode on any device; the stacked networks can be captured on a GPU only."""
    from hybrid_exp.module import graph_blocker
    from hybrid_exp.throughput import default_modes, network

    fractal, stacked = network("fractalnet", torch.device("cpu")), network("inception", torch.device("cpu"))
    assert graph_blocker(fractal, on_gpu=True).startswith("FractalNet seeds its dropout on the host")
    assert graph_blocker(stacked, on_gpu=True) is None
    assert graph_blocker(stacked, on_gpu=False) == "it needs a CUDA device"
    assert default_modes(1, False, False) == ["lightning", "conventional", "fast"]
    assert default_modes(10, True, True) == ["lightning", "conventional", "fast", "fused", "graph",
                                             "compiled", "compiled_graph"]


@pytest.mark.gpu
def test_fractalnet_with_dropout_is_skipped_in_graph_modes_on_a_gpu_with_its_reason(cifar10_root):
    from hybrid_exp.bench import main

    report = main(["--models", "fractalnet", "--device", "cuda", "--fuse", "2", "--modes", "fused", "graph",
                   "--seconds", "0.1", "--data-root", str(cifar10_root)])
    (result,) = report["results"]
    assert result["fused_images_per_s"] > 0 and "graph_images_per_s" not in result
    assert result["skipped"]["graph"].startswith("FractalNet seeds its dropout on the host")


def test_the_gpu_check_script_fits_seven_minutes_of_a_lent_gpu():
    import re

    script = (Path(__file__).parent.parent / "tools/gpu-check.sh").read_text()
    limits = [int(n) for n in re.findall(r"^step (\d+) ", script, flags=re.M)]
    assert len(limits) == 5 and sum(limits) <= 7 * 60  # steps (a)-(e), each under its limit


@pytest.mark.slow
def test_the_gpu_check_script_runs_its_own_commands_on_a_cpu(tmp_path, cifar10_root):
    """The script's commands with a device switch and tiny budgets: every step leaves its JSON
    (or log) with figures, and no step stops on an argument or a missing file."""
    env = {**os.environ, "DEVICE": "cpu", "FUSE": "2", "FUSE_LARGE": "3", "BATCH": "8",
           "SECONDS_PER_MODE": "0.01", "DATA": str(cifar10_root), "OUT": str(tmp_path), "TIMEOUT_SCALE": "10"}
    run = subprocess.run(["bash", "tools/gpu-check.sh"], cwd=Path(__file__).parent.parent, env=env,
                         capture_output=True, text=True, timeout=3000)
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout + run.stderr
    for trouble in ("usage:", "error:", "Traceback", "No such file", "command not found"):
        assert trouble not in output, output[-3000:]
    paper = json.loads((tmp_path / "paper-x10.json").read_text())
    assert [r["setup"] for r in paper["results"]] == list(PAPER_FIG4)
    assert all(r["fused_images_per_s"] > 0 and r["skipped"] == {"graph": "it needs a CUDA device"}
               for r in paper["results"])
    compiled = json.loads((tmp_path / "compiled-x10.json").read_text())
    assert [r["skipped"] for r in compiled["results"]] == [{"compiled_graph": "it needs a CUDA device"}] * 3
    heavy = json.loads((tmp_path / "heavy-x20.json").read_text())
    assert [(r["setup"], r["fuse"]) for r in heavy["results"]] == [("inception", 3), ("resnext", 3)]
    shapes = json.loads((tmp_path / "shapes.json").read_text())
    assert {row["setup"] for row in shapes["shapes"]} == {"inception", "resnext"} and not shapes["failed"]
    assert " skipped" in (tmp_path / "tests.log").read_text()  # CUDA-only: skipped on a CPU


def test_bench_help_answers_without_importing_torch():
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "hybrid_exp.bench", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--fuse N" in run.stdout and "--e2e" in run.stdout
    assert " torch" not in run.stderr  # -X importtime lists every module imported


def test_bench_names_the_valid_setups_for_an_unknown_one(capsys):
    from hybrid_exp.bench import main
    with pytest.raises(SystemExit) as stopped:
        main(["--models", "separable", "fractalnet+nope"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "unknown setup 'fractalnet+nope'" in error and "hybrid" in error and "standard" in error


def test_bench_shapes_with_a_training_mode_is_one_sentence(capsys, tmp_path):
    from hybrid_exp.bench import main
    with pytest.raises(SystemExit) as stopped:
        main(["--shapes", "--compile", "--json", str(tmp_path / "out.json")])
    assert stopped.value.code == 2
    assert "run --modes, --compile, --e2e and --pack in a command of their own" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("network", [
    pytest.param(TINY, id="stacked"),
    pytest.param([*TINY, "trainer.compile=true"], id="stacked-compiled"),
    pytest.param([*FAST, *SMALL_FRACTAL, "model.dropout=[0,0,0,0,0]"], id="fractalnet")])
def test_a_cuda_graph_trains_as_the_eager_step_does(make_cfg, cifar10_root, caplog, network):
    """The captured step replays forward, backward and SGD with the schedule's lr each step
    (compiled too; FractalNet's drop-path draws on the device, so its step is captured)."""
    common = [f"data.root={cifar10_root}", "data.train_subset=2000", "data.val_size=500",
              "data.eval_size=1000", *network, "trainer.max_epochs=3", "trainer.precision=32-true",
              "trainer.benchmark=false", "seed=[0,1]"]
    eager = train(make_cfg(*common, "logger.experiment_name=eager"))
    with caplog.at_level("INFO"):
        graphed = train(make_cfg(*common, "trainer.cuda_graph=true", "logger.experiment_name=graph"))
    assert "captured as a CUDA graph" in caplog.text
    for a, b in zip(eager, graphed):
        assert a.metrics["train/loss"] == pytest.approx(b.metrics["train/loss"], rel=0.02)
        assert a.metrics["lr"] == b.metrics["lr"]


def test_cuda_graph_without_cuda_trains_eagerly_saying_why(make_cfg, caplog):
    cfg = make_cfg("data=synthetic", "data.train_subset=256", *TINY, "trainer.max_epochs=1",
                   "trainer.cuda_graph=true", "trainer.accelerator=cpu")
    with caplog.at_level("INFO"):
        result = train(cfg)[0]
    assert result.status == "finished"
    assert "trainer.cuda_graph=true: it needs a CUDA device; training without a CUDA graph" in caplog.text
    assert "litlogger" not in caplog.text  # Lightning's advertisement is filtered out


SHAPES = [  # (input, weight, stride, padding, groups, members): the kinds a fused array has
    ((2, 9, 6, 6), (12, 3, 3, 3), 1, 1, 3, 3),  # a stem: 3 channels per group, 3 members
    ((2, 24, 6, 6), (24, 4, 3, 3), 2, 1, 6, 3),  # ResNeXt's grouped 3x3, 2 groups per member
    ((2, 24, 6, 6), (6, 8, 1, 1), 1, 0, 3, 3),  # a narrow 1x1 (8 -> 2 per member)
    ((2, 24, 6, 6), (12, 4, 1, 1), 1, 0, 6, 3),  # a grouped 1x1
    ((2, 24, 6, 6), (6, 8, 1, 1), 2, 0, 3, 3),  # a strided 1x1 (a shortcut's projection)
    ((2, 8, 6, 6), (4, 8, 1, 1), 1, 0, 1, 1),  # one run
]


@pytest.mark.parametrize("input_shape, weight_shape, stride, padding, groups, members", SHAPES)
def test_every_conv_alternative_computes_the_grouped_conv_exactly(input_shape, weight_shape, stride,
                                                                   padding, groups, members):
    """Forward and both gradients in float64, on NHWC tensors as training has them."""
    from hybrid_exp.conv_alternatives import IMPLEMENTATIONS, applies, grouped

    shape = {"kernel": weight_shape[-1], "stride": stride, "members": members}
    x = torch.randn(input_shape, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(weight_shape, dtype=torch.float64).requires_grad_()
    args = (stride, padding, groups, members)
    expected = grouped(x, w, *args)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, w), grad_out)
    checked = [name for name in IMPLEMENTATIONS if applies(name, shape)]
    assert ("matmul" in checked) == (weight_shape[-1] == 1 and stride == 1)
    assert ("per_member" in checked) == (members > 1)
    for name in checked:
        y = IMPLEMENTATIONS[name](x, w, *args)
        assert y.is_contiguous(memory_format=torch.channels_last), name  # stays NHWC
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12, msg=name)
        for grad, expected_grad in zip(torch.autograd.grad(y, (x, w), grad_out), expected_grads):
            torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12, msg=name)


def test_conv_shapes_finds_each_distinct_conv_of_a_fused_training_step():
    from hybrid_exp.conv_alternatives import conv_shapes
    from hybrid_exp.throughput import network

    array = network("resnext", torch.device("cpu"), members=2)
    x = torch.randn(2, 6, 32, 32)  # 2 members' images
    shapes = conv_shapes(array, lambda: array(x).sum().backward(), members=2)
    convs = [m for m in array.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(s["layers"] for s in shapes) == len(convs)  # every conv once, each shape once
    assert len({repr({k: v for k, v in s.items() if k != "layers"}) for s in shapes}) == len(shapes)
    stem = next(s for s in shapes if s["input"][1] == 6)
    assert (stem["groups"], stem["members"], stem["weight"][1]) == (2, 2, 3)  # 3 channels per group
    grouped = [s for s in shapes if s["groups"] == 2 * 32]  # ResNeXt's 32 paths, per member
    assert grouped and all(s["weight"][1] == 4 and s["layers"] >= 1 for s in grouped)


@pytest.mark.slow
def test_bench_shapes_times_each_conv_of_an_array_in_every_implementation(tmp_path, cifar10_root):
    out = tmp_path / "shapes.json"
    run = subprocess.run([sys.executable, "-m", "hybrid_exp.bench", "--models", "inception", "--fuse", "2",
                          "--shapes", "--seconds", "0.05", "--batch-size", "16",
                          "--data-root", str(cifar10_root), "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["shapes"]
    assert report["members"] == 2 and all(row["members"] == 2 for row in rows)
    assert all(row["ms"]["grouped"] > 0 and row["ms"]["per_member"] > 0 for row in rows)
    assert all(row["dtype"] == "float32" for row in rows)  # the step's dtype: fp32 on a CPU, bf16 on a GPU
    one_by_one = [row for row in rows if row["kernel"] == 1 and row["stride"] == 1]
    assert one_by_one and all(row["ms"]["matmul"] > 0 for row in one_by_one)
    assert all("matmul" not in row["ms"] for row in rows if row["kernel"] > 1)
    narrow = next(row for row in rows if row["weight"][:2] == [8, 64])  # 64 -> 4 per member, x2
    assert narrow["groups"] == 2 and narrow["input"][1] == 128
    assert "fastest" in run.stdout and "grouped" in run.stdout
