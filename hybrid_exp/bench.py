"""python -m hybrid_exp.bench [--models ...] [--device cpu|cuda] [--seconds N] [--fuse N] [--compile] [--modes ...] [--e2e] [--pack 1,2,4,8] [--json FILE]

Training throughput (images/s) of each way to train a setup, in one process on one machine,
alternating between the platform's modes so that they share the machine's noise:

- lightning: one run per process as a lightning-hydra-template user runs it: a LightningModule
  with automatic optimization and the loss logged every step, a DataLoader with worker processes
  doing per-image CPU augmentation (torchvision's RandomCrop(32, 4) + RandomHorizontalFlip +
  ToTensor + Normalize), fp32 NCHW;
- conventional: the same data path and precision in a plain loop, the loss read every step;
- fast: what ``python -m hybrid_exp`` trains one run with: the uint8 dataset on the device,
  crop + flip for a whole batch there, NHWC, bf16 autocast where the GPU has it, fused SGD,
  metrics read once per epoch (``Classifier.fit_step``, the training step itself);
- fused (``--fuse N``): a fused array of N seeds in one network (hybrid_exp.fusion, what a
  grid runs by default), images/s over all N;
- graph (``--fuse N`` on a GPU): the same array with its whole step as one CUDA graph
  (``trainer.cuda_graph=true``);
- compiled, compiled_graph (``--compile``): the array (one run at ``--fuse 1``) compiled with
  ``torch.compile`` (``trainer.compile=true``), and on a GPU its compiled step captured as a
  CUDA graph (both switches); the compile time counts in the warm-up.

Every mode trains the same network with the same loss and SGD settings. The table gives images/s
per mode, the ratio fast/conventional (JSON ``ratio``), peak GPU memory (on a CPU, the JSON gives
the process's peak RSS), the FLOPs and bytes a training step moves per image (counted from the
network as it runs, hybrid_exp/costs.py: grouped convs counted right, bytes as eager kernels move
them) and, on a GPU whose peak bandwidth is known (or ``--bandwidth``), the share of it that each
mode reaches. Then the projected device-hours of each figure's protocol in each mode: Fig. 4
(experiment=fig4: the preset's 11 setups, and the paper's 6 of them), Figs. 5 and 6, 10 seeds
each, 190 epochs, with evaluation (5000 validation images every epoch, 6000 test images at the
end) at the measured evaluation rate and each process's warm-up (cudnn autotuning, compiling,
capture: once per run, or per array).
``--e2e`` also trains a short real grid through ``python -m hybrid_exp`` (2 epochs, fused) and
reports seconds per epoch per member, to check the projection against the product path.
``--modes`` times only the modes named (default: every one the other options and the device
allow). The JSON is rewritten after each setup: a bench stopped early leaves what it measured;
a setup that fails is its row, with the reason, and the next goes on.
``--pack`` also times several fast-path runs sharing the device at once, each its own process
(``hydra.launcher.runs_per_gpu``), and gives the aggregate images/s.
``--shapes``, instead of the modes, times each distinct conv of the setups' training step
(arrays of ``--fuse`` members), forward + backward, as cuDNN's grouped conv and the other ways
to compute it (hybrid_exp/conv_alternatives.py), the shapes that cost the step most first.
"""
import argparse
import json
import os
from pathlib import Path

PROTOCOL_SETUPS = "every setup of Figs. 4-6"


def parser() -> argparse.ArgumentParser:
    """The command line; it imports nothing heavy, so --help answers at once."""
    cli = argparse.ArgumentParser(prog="python -m hybrid_exp.bench", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--models", nargs="+", help=f"setups: a model preset, or <model>+<block> "
                                                 f"(default: {PROTOCOL_SETUPS})")
    cli.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda where torch sees one")
    cli.add_argument("--seconds", type=float, default=10, help="timed seconds per mode and model")
    cli.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                     help="DataLoader workers of the lightning and conventional modes (default: %(default)s)")
    cli.add_argument("--batch-size", type=int, default=128)
    cli.add_argument("--compile", action="store_true",
                     help="also time the array (one run at --fuse 1) compiled, and on a GPU its "
                          "compiled step as a CUDA graph")
    cli.add_argument("--bandwidth", type=float, metavar="GB/s",
                     help="the device's peak memory bandwidth, for the share each mode reaches "
                          "(default: known for H100, H200, A100 80GB)")
    cli.add_argument("--fuse", type=int, default=1, metavar="N",
                     help="also time fused seed arrays of N members (and, on a GPU, as a CUDA graph)")
    cli.add_argument("--e2e", action="store_true",
                     help="also time a 2-epoch fused grid of the --models through python -m hybrid_exp")
    cli.add_argument("--data-root", default="data/cifar10",
                     help="CIFAR-10, either layout; downloaded there (md5-checked) if missing")
    cli.add_argument("--pack", type=lambda text: [int(n) for n in text.split(",")],
                     help="also time N fast-path runs at once on the device for each N in "
                          "this list, e.g. 1,2,4,8 (the first model only)")
    cli.add_argument("--shapes", action="store_true",
                     help="instead of the modes: time each distinct conv of the --models' training "
                          "step (arrays of --fuse members) forward + backward as one grouped conv, "
                          "one conv per member and (1x1) one batched matmul, --seconds per shape "
                          "and implementation (hybrid_exp/conv_alternatives.py)")
    cli.add_argument("--modes", nargs="+", metavar="MODE",
                     choices=["lightning", "conventional", "fast", "fused", "graph", "compiled", "compiled_graph"],
                     help="the modes to time (default: every one the other options and the device "
                          "allow); a graph mode the network or the device cannot capture is "
                          "skipped with its reason")
    cli.add_argument("--json", help="also write the results here, rewritten after each setup "
                                    "(each shape with --shapes): a bench stopped early leaves "
                                    "what it measured")
    return cli


def write_json(path: str | None, report: dict) -> None:
    """The report so far, whole or not at all."""
    if path:
        partial = f"{path}.part"
        with open(partial, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(partial, path)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def main(argv: list[str] | None = None) -> dict:
    cli = parser()
    args = cli.parse_args(argv)
    if args.fuse < 1:
        cli.error(f"--fuse must be >= 1 (members per fused array); got {args.fuse}")
    if args.shapes and (args.compile or args.e2e or args.pack or args.modes):
        cli.error("--shapes times the convs instead of the training modes: run --modes, --compile, "
                  "--e2e and --pack in a command of their own")
    arrays_only = sorted(set(args.modes or []) & {"fused", "graph", "compiled_graph"})
    if arrays_only and args.fuse < 2:
        cli.error(f"--modes {' '.join(arrays_only)} time(s) a fused array: add --fuse N (N >= 2 seeds)")
    import resource
    import statistics

    import torch

    from hybrid_exp import config_dir, process, throughput
    from hybrid_exp.dataset_files import load_cifar10
    from hybrid_exp.device import machine
    from hybrid_exp.errors import reported

    process.setup()

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        cli.error("--device cuda: no CUDA device visible to torch")
    args.models = args.models or throughput.protocol_setups()
    known = lambda group: sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
    for setup in args.models:
        model, _, block = setup.partition("+")
        if model not in known("model") or (block and block not in known("model/block")):
            cli.error(f"unknown setup '{setup}': give a model preset ({', '.join(known('model'))}), "
                      f"optionally +<block> ({', '.join(known('model/block'))})")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as trainer.benchmark=true does in training
    with reported(" (--data-root)"):
        arrays = load_cifar10(args.data_root, download_missing=True)  # as training does
    args.machine = f"{machine(device.type == 'cuda')}, torch {torch.__version__}, {torch.get_num_threads()} threads"

    if args.shapes:
        return shapes(args, arrays, device)
    modes = args.modes or throughput.default_modes(args.fuse, device.type == "cuda", args.compile)
    print("images/s per mode (" + "; ".join(f"{m}: {throughput.MODES[m]}" for m in modes) + ")")
    print(f"{'setup':<24}" + "".join(f"{m:>15}" for m in modes)
          + f"{'ratio':>7}{'peak MB':>9}{'GFLOP/img':>10}{'MB/img':>8}")
    mb = lambda value: f"{value:.0f}" if value else "-"
    results, report = [], {"machine": args.machine, "seconds": args.seconds, "modes": modes}

    def so_far() -> dict:
        """The report of the setups measured so far, with their projection."""
        measured = [r for r in results if "error" not in r]
        ratios = [r["ratio"] for r in measured if "ratio" in r]
        return {**report, "results": results, "protocol": throughput.project(measured),
                "ratio": statistics.geometric_mean(ratios) if ratios else None,
                "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    for setup in args.models:
        try:
            r = throughput.bench(setup, arrays, device, args.seconds, args.workers, args.batch_size,
                                modes, fuse=args.fuse, bandwidth=args.bandwidth and args.bandwidth * 1e9)
        except Exception as e:  # out of memory, a failed capture: this setup's row, and the next goes on
            results.append({"setup": setup, "error": one_line(e)})
            print(f"{setup:<24}failed: {one_line(e)}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_json(args.json, so_far())
            continue
        results.append(r)
        write_json(args.json, so_far())  # before its row: a printed row is on disk
        peak = max((r.get(f"{m}_peak_memory_mb") or 0) for m in modes)
        cell = lambda m, r=r: ("skipped" if m in r["skipped"] else
                          f"{r[f'{m}_images_per_s']:.0f}" + (f" ({100 * r[f'{m}_bandwidth_share']:.0f}%)"
                                                            if f"{m}_bandwidth_share" in r else ""))
        ratio = f"{r['ratio']:>6.2f}x" if "ratio" in r else f"{'-':>7}"
        print(f"{setup:<24}" + "".join(cell(m).rjust(15) for m in modes)
              + f"{ratio}{mb(peak):>9}{r['flops_per_image'] / 1e9:>10.2f}{r['bytes_per_image'] / 1e6:>8.1f}")
        for mode, reason in r["skipped"].items():
            print(f"{'':<24}{mode} skipped: {reason}")
    if any("fast_bandwidth_share" in r for r in results):
        print("(n%): the share of the device's peak memory bandwidth the mode's step reaches")
    report = so_far()
    for figure, p in report["protocol"].items():
        if not p["setups_measured"]:
            continue
        share = "" if p["complete"] else (
            f" (only {p['setups_measured']} of its {p['setups_in_protocol']} setups measured)")
        print(f"{figure}: {throughput.SEEDS} seeds, training + evaluation + warm-ups{share}, "
              f"device-hours: " + ", ".join(f"{m} {p[f'{m}_device_hours']:.2f}"
                                            for m in modes if f"{m}_device_hours" in p))
    ratio = f"{report['ratio']:.2f}x" if report["ratio"] else "not measured (--modes without fast and conventional)"
    print(f"ratio fast/conventional (geometric mean): {ratio} on {report['machine']}; "
          f"process peak RSS {report['process_peak_rss_mb']:.0f} MB")
    if args.e2e:
        setups = [s for s in args.models if "+" not in s]  # a grid over model presets
        report["e2e"] = throughput.e2e(setups, args.data_root, max(args.fuse, 2))
        for setup in setups:
            rows = [row for row in report["e2e"] if row["setup"] == setup]
            per_member = rows[0]["seconds_per_epoch_per_member"]
            measured = next(r for r in results if r["setup"] == setup)
            mode = "fused" if args.fuse > 1 else "fast"
            projected = (f"{throughput.TRAIN / measured[f'{mode}_images_per_s']:.2f} s projected from "
                         f"the {mode} rate (training only)" if f"{mode}_images_per_s" in measured
                         else f"the {mode} rate not measured")
            print(f"e2e {setup}: {per_member:.2f} s per epoch per member through python -m "
                  f"hybrid_exp ({len(rows)} seeds fused; training and validation), {projected}")
    if args.pack:
        report["packing"] = throughput.packing(args.models[0], args.data_root, device, args.seconds,
                                              args.pack, args.batch_size)
        print(f"{args.models[0]}, runs at once on one {device.type}: " + ", ".join(
            f"{r['runs']}: {r['images_per_s']:.0f} img/s ({r['scaling']:.2f}x)" for r in report["packing"]))
    write_json(args.json, report)
    return report


def shapes(args, arrays, device) -> dict:
    """``--shapes``: a row per conv as it is timed; the JSON, the slowest shapes first."""
    from hybrid_exp import throughput

    names = list(throughput.conv_alternatives.IMPLEMENTATIONS)
    print(f"forward + backward, ms per call, {args.fuse} member(s) per array, on {args.machine}")
    print(f"{'setup':<24}{'input':>22}{'weight':>20}{'stride':>7}{'groups':>7}{'layers':>7}"
          + "".join(f"{name:>12}" for name in names) + "  fastest")
    report = {"machine": args.machine, "members": args.fuse, "seconds": args.seconds,
              "shapes": [], "failed": []}
    for setup in args.models:
        try:
            for row in throughput.shape_timings(setup, arrays, device, args.batch_size, args.fuse, args.seconds):
                ms = row["ms"]
                print(f"{row['setup']:<24}{'x'.join(map(str, row['input'])):>22}"
                      f"{'x'.join(map(str, row['weight'])):>20}{row['stride']:>7}{row['groups']:>7}"
                      f"{row['layers']:>7}" + "".join(f"{ms[name]:>12.3f}" if name in ms else f"{'-':>12}"
                                                      for name in names) + f"  {min(ms, key=ms.get)}")
                report["shapes"].append(row)
                report["shapes"].sort(key=lambda row: -row["ms"]["grouped"] * row["layers"])
                write_json(args.json, report)
        except Exception as e:  # this setup's remaining shapes are lost; the next goes on
            report["failed"].append({"setup": setup, "error": one_line(e)})
            print(f"{setup:<24}failed: {one_line(e)}")
            write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
