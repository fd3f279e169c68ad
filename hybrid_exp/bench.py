"""python -m hybrid_exp.bench [--models ...] [--device cpu|cuda] [--seconds N] [--fuse N] [--pack 1,2,4,8] [--json FILE]

Training throughput (images/s) of hybrid-exp's fast path against the pipeline people usually
write, for each model, in one process on one machine, alternating between the two so that both
share the machine's noise:

- fast: the whole uint8 training set on the device, crop + flip for a whole batch at once there
  (``data.Batches``), NHWC weights, bf16 autocast where the GPU has it (``trainer.precision=auto``),
  optionally ``torch.compile``; the loss is never read back during training.
- conventional: a torch DataLoader with worker processes doing per-image CPU augmentation (pad,
  random crop, flip, to float, normalise: torchvision's RandomCrop(32, 4) + RandomHorizontalFlip
  + ToTensor + Normalize), pinned memory on a GPU, a host-to-device copy per batch, fp32 NCHW,
  and the running loss read each step (``loss.item()``) as training scripts do.

Both run the same network, loss and SGD step, without Lightning (whose loop adds the same small
per-step cost to both). The table gives the ratio fast/conventional (JSON ``ratio``), peak GPU
memory while each pipeline trained (both networks and the fast path's dataset stay resident
throughout; on a CPU, the process's peak RSS), and the projected device-hours of the paper's
protocol: Figs. 4, 5 and 6 (experiment=fig4, fig5, fig6), 10 seeds each, training steps only
(evaluation adds about 4%). ``--fuse N`` also times fused seed arrays of N members (the
seeds of one setup as one network, hybrid_exp.fusion; what a grid runs by default) and gives
their images/s over all members together. ``--pack`` also times several fast-path runs sharing the device at
once, each its own process (``hydra.launcher.runs_per_gpu``), and gives the aggregate images/s.
"""
import argparse
import contextlib
import json
import os
import resource
from pathlib import Path
import statistics
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from hybrid_exp.cli import config_dir
from hybrid_exp.data import MEAN, STD, Batches, CIFAR10, DataError, load_cifar10
from hybrid_exp.fusion import fuse, per_member_cross_entropy
from hybrid_exp.module import prepare_network, resolve_precision

PROTOCOL = ("fig4", "fig5", "fig6")
SEEDS = 10  # trials per setup in the protocol


class AugmentedImages(Dataset):
    """Per-image CPU augmentation, as torchvision's transforms do it: (3, 32, 32) float."""

    def __init__(self, images, labels, pad: int = 4):
        self.images, self.labels, self.pad = images, labels, pad  # (N, H, W, C) uint8 arrays
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1)  # (C, H, W) uint8
        _, h, w = image.shape
        top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()  # torch RNG: seeded per worker
        image = F.pad(image, (self.pad,) * 4)[:, top:top + h, left:left + w]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return (image.float() / 255 - self.mean) / self.std, int(self.labels[i])


def conventional_loader(images, labels, batch_size: int, workers: int, pin: bool,
                        seed: int = 0) -> DataLoader:
    return DataLoader(AugmentedImages(images, labels), batch_size=batch_size, shuffle=True,
                      drop_last=True, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))


class ConventionalCIFAR10(CIFAR10):
    """``data=cifar10`` with the conventional training pipeline instead of the fast one (same
    splits, same evaluation): the reference the fast path's accuracy is tested against."""

    def __init__(self, workers: int = 2, **kwargs):
        super().__init__(**kwargs)
        if len(self.seeds) != 1:
            raise DataError("data=cifar10_conventional trains one seed per process: add "
                            "hydra.launcher.fuse_seeds=false to the grid, or give one seed")
        self.workers = workers

    def train_dataloader(self) -> DataLoader:
        images, labels, (rows,) = self.splits["train"]  # one member
        return conventional_loader(images[rows].cpu().numpy(), labels[rows].cpu().numpy(),
                                   self.batch_size, self.workers, images.is_cuda, seed=self.seeds[0])


def setup_overrides(setup: str) -> list[str]:
    """'fractalnet+separable' -> model=fractalnet model/block=separable; 'hybrid' -> model=hybrid."""
    model, _, block = setup.partition("+")
    return [f"model={model}", *([f"model/block={block}"] if block else [])]


def protocol() -> dict[str, int]:
    """{setup: training images over the whole protocol}: Figs. 4-6, SEEDS seeds each."""
    images = {}
    with initialize_config_dir(config_dir(), version_base="1.3"):
        for experiment in PROTOCOL:
            cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
            (key, values), = cfg.hydra.sweeper.params.items()
            model = cfg.hydra.runtime.choices["model"]
            per_run = cfg.trainer.max_epochs * (50000 - cfg.data.val_size)
            for value in str(values).split(","):
                setup = value if key == "model" else f"{model}+{value}"
                images[setup] = images.get(setup, 0) + SEEDS * per_run
    return images


def network(setup: str, device: torch.device, members: int = 1) -> torch.nn.Module:
    """The setup's network; with ``members`` > 1, a fused array of that many (seeds 0, 1, ...)."""
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=setup_overrides(setup))
    nets = []
    for seed in range(members):
        torch.manual_seed(seed)
        nets.append(instantiate(cfg.model))
    return (fuse(nets) if members > 1 else nets[0]).to(device)


class Pipeline:
    """One training setup to time: a network, its optimiser and an endless batch stream."""

    def __init__(self, net, batches, precision: str, read_loss: bool, device: torch.device,
                 fused_sgd: bool = False):
        self.net, self.batches, self.read_loss, self.device = net, batches, read_loss, device
        self.precision = precision
        self.optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                         fused=fused_sgd)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if precision == "bf16-mixed" else contextlib.nullcontext())
        self.images, self.seconds, self.peak_mb = 0, 0.0, 0.0

    def step(self) -> int:
        x, y = next(self.batches)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.autocast:  # each member's mean loss, summed (one member: the plain loss)
            loss = per_member_cross_entropy(self.net(x), y.view(len(y), -1)).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.read_loss:
            loss.item()
        return y.numel()  # images, over every member

    def run(self, seconds: float) -> None:
        """Train for about ``seconds``; the time counts until the device has finished."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else lambda: None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.images += self.step()
        sync()
        self.seconds += time.perf_counter() - start
        if self.device.type == "cuda":
            self.peak_mb = max(self.peak_mb, torch.cuda.max_memory_allocated() / 2**20)

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def endless(batches):
    while True:
        yield from batches


def fast_pipeline(setup: str, x_train, y_train, device: torch.device, batch_size: int,
                  compile: bool = False, members: int = 1) -> Pipeline:
    """The training path of ``python -m hybrid_exp``: device-resident data, NHWC, bf16 on GPUs,
    fused SGD; with ``members`` > 1, a fused seed array, each member its own data stream."""
    rows = torch.arange(len(x_train), device=device).expand(members, -1)
    batches = Batches(torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device),
                      rows, batch_size, augment_seeds=list(range(members)))
    return Pipeline(prepare_network(network(setup, device, members), True, compile), endless(batches),
                    resolve_precision("auto", accelerator=device.type), read_loss=False,
                    device=device, fused_sgd=True)


def bench(setup: str, arrays, device: torch.device, seconds: float, workers: int,
          batch_size: int = 128, compile: bool = False, rounds: int = 2, fuse: int = 1) -> dict:
    x_train, y_train = arrays[0], arrays[1]
    fast = fast_pipeline(setup, x_train, y_train, device, batch_size, compile)
    loader = conventional_loader(x_train, y_train, batch_size, workers, pin=device.type == "cuda")
    conventional = Pipeline(network(setup, device), endless(loader), "32-true", read_loss=True,
                            device=device)
    pipelines = {"fast": fast, "conventional": conventional}
    if fuse > 1:
        pipelines["fused"] = fast_pipeline(setup, x_train, y_train, device, batch_size, compile, fuse)
    for pipeline in pipelines.values():  # warm-up: worker start, cudnn autotuning, compiling
        for _ in range(3):
            pipeline.step()
    for _ in range(rounds):  # alternate, so slow drifts of the machine hit every pipeline
        for pipeline in pipelines.values():
            pipeline.run(seconds / rounds)
    result = {"setup": setup, "device": device.type, "precision": fast.precision, "compile": compile,
              "workers": workers, "batch_size": batch_size, "fuse": fuse,
              "fast_images_per_s": fast.rate, "conventional_images_per_s": conventional.rate,
              "ratio": fast.rate / conventional.rate,
              "fast_peak_memory_mb": fast.peak_mb or None,
              "conventional_peak_memory_mb": conventional.peak_mb or None}
    if fuse > 1:  # images/s over all members together, against one run of the fast path
        fused = pipelines["fused"]
        result.update({"fused_images_per_s": fused.rate, "fused_ratio": fused.rate / fast.rate,
                       "fused_peak_memory_mb": fused.peak_mb or None})
    return result


def packed_run(setup: str, data_root: str, device: str, seconds: float, threads: int,
               batch_size: int, start, results) -> None:
    """One of several runs sharing a device (a spawned process): the fast path, timed from a
    common start so the runs overlap fully."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    x_train, y_train, _, _ = load_cifar10(data_root)
    pipeline = fast_pipeline(setup, x_train, y_train, device, batch_size)
    for _ in range(3):
        pipeline.step()
    start.wait()
    pipeline.run(seconds)
    results.put((pipeline.images, pipeline.seconds))


def packing(setup: str, data_root: str, device: torch.device, seconds: float, runs: list[int],
            batch_size: int = 128) -> list[dict]:
    """Aggregate fast-path images/s with n runs at once on one device, for each n in ``runs``
    (what hydra.launcher.runs_per_gpu does); CPU threads are split between the runs, as the
    launcher splits them."""
    context = torch.multiprocessing.get_context("spawn")
    rows = []
    for n in runs:
        start, results = context.Barrier(n), context.Queue()
        threads = max(1, (os.cpu_count() or 1) // n)
        workers = [context.Process(target=packed_run, args=(setup, data_root, device.type, seconds,
                                                            threads, batch_size, start, results))
                   for _ in range(n)]
        for worker in workers:
            worker.start()
        done = [results.get() for _ in workers]
        for worker in workers:
            worker.join()
        rate = sum(images for images, _ in done) / max(elapsed for _, elapsed in done)
        rows.append({"runs": n, "images_per_s": rate, "per_run_images_per_s": rate / n})
    for row in rows:
        row["scaling"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows


def project(results: list[dict]) -> dict:
    """Device-hours of the protocol at the measured rates (training steps only)."""
    needed = protocol()
    rates = {r["setup"]: r for r in results}
    covered = [s for s in needed if s in rates]
    hours = lambda key: sum(needed[s] / rates[s][key] for s in covered) / 3600
    projection = {"setups_measured": len(covered), "setups_in_protocol": len(needed),
                  "complete": len(covered) == len(needed),
                  "fast_device_hours": hours("fast_images_per_s"),
                  "conventional_device_hours": hours("conventional_images_per_s")}
    if all("fused_images_per_s" in rates[s] for s in covered):
        projection["fused_device_hours"] = hours("fused_images_per_s")
    return projection


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hybrid_exp.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(protocol()),
                        help="setups: a model preset, or <model>+<block> (default: every setup "
                             "of Figs. 4-6)")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=10, help="timed seconds per pipeline and model")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers of the conventional pipeline (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's network")
    parser.add_argument("--fuse", type=int, default=1, metavar="N",
                        help="also time fused seed arrays of N members (images/s over all of them)")
    parser.add_argument("--data-root", default="data/cifar10",
                        help="CIFAR-10, either layout; downloaded there (md5-checked) if missing")
    parser.add_argument("--pack", type=lambda text: [int(n) for n in text.split(",")],
                        help="also time N fast-path runs at once on the device for each N in "
                             "this list, e.g. 1,2,4,8 (the first model only)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    known = lambda group: sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
    for setup in args.models:
        model, _, block = setup.partition("+")
        if model not in known("model") or (block and block not in known("model/block")):
            parser.error(f"unknown setup '{setup}': give a model preset ({', '.join(known('model'))}), "
                         f"optionally +<block> ({', '.join(known('model/block'))})")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as trainer.benchmark=true does in training
    try:
        arrays = load_cifar10(args.data_root, download_missing=True)  # as training does
    except DataError as e:
        parser.error(f"{e} (--data-root)")
    if args.fuse < 1:
        parser.error(f"--fuse must be >= 1 (members per fused array); got {args.fuse}")
    results = []
    fused_head = f" {'fused x' + str(args.fuse) + ' img/s':>17} {'vs fast':>7} {'peak MB':>8}" if args.fuse > 1 else ""
    print(f"{'setup':<28} {'fast img/s':>11} {'conv. img/s':>11} {'ratio':>6} {'peak MB':>8}{fused_head}")
    mb = lambda value: f"{value:.0f}" if value else "-"
    for setup in args.models:
        r = bench(setup, arrays, device, args.seconds, args.workers, args.batch_size, args.compile,
                  fuse=args.fuse)
        results.append(r)
        fused = (f" {r['fused_images_per_s']:>17.0f} {r['fused_ratio']:>6.2f}x "
                 f"{mb(r['fused_peak_memory_mb']):>8}") if args.fuse > 1 else ""
        print(f"{setup:<28} {r['fast_images_per_s']:>11.0f} {r['conventional_images_per_s']:>11.0f} "
              f"{r['ratio']:>5.2f}x {mb(r['fast_peak_memory_mb']):>8}{fused}")
    projection = project(results)
    share = "" if projection["complete"] else (
        f" (only the {projection['setups_measured']} of {projection['setups_in_protocol']} "
        "protocol setups measured)")
    fused = (f", {projection['fused_device_hours']:.1f} fused x{args.fuse}"
             if "fused_device_hours" in projection else "")
    print(f"Figs. 4-6 protocol, {SEEDS} seeds, training only{share}: "
          f"{projection['fast_device_hours']:.1f} device-hours fast, "
          f"{projection['conventional_device_hours']:.1f} conventional{fused}")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"machine": machine(device), "seconds": args.seconds, "results": results,
              "ratio": statistics.geometric_mean(r["ratio"] for r in results),
              "process_peak_rss_mb": peak_rss, "protocol": projection}
    print(f"ratio (geometric mean): {report['ratio']:.2f}x on {report['machine']}; "
          f"process peak RSS {peak_rss:.0f} MB")
    if args.pack:
        report["packing"] = packing(args.models[0], args.data_root, device, args.seconds, args.pack,
                                    args.batch_size)
        print(f"{args.models[0]}, runs at once on one {device.type}: " + ", ".join(
            f"{r['runs']}: {r['images_per_s']:.0f} img/s ({r['scaling']:.2f}x)" for r in report["packing"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
