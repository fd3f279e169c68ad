"""What ``python -m hybrid_exp.bench`` measures (its CLI and the modes: hybrid_exp/bench.py).

Every mode trains the same network of a setup with the same loss and SGD settings; the platform's
modes run the very training step of ``python -m hybrid_exp`` (``module.Classifier.fit_step``).
"""
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from hybrid_exp import config_dir, conv_alternatives, costs
from hybrid_exp.batches import Batches
from hybrid_exp.conventional import conventional_loader
from hybrid_exp.dataset_files import load_cifar10
from hybrid_exp.device import resolve_precision
from hybrid_exp.fusion import fuse
from hybrid_exp.module import Classifier, graph_blocker, prepare_network
from hybrid_exp.registry import build

PROTOCOL = ("fig4", "fig5", "fig6")  # the presets whose grids the projection covers
PAPER_FIG4 = ("separable", "inception", "resnext", "reformulated_inception", "equivalent", "hybrid")
SEEDS = 10  # trials per setup in the protocol
EPOCHS, VAL, TEST, TRAIN = 190, 5000, 6000, 45000  # the paper's protocol (experiment=paper)
# Peak memory bandwidth (bytes/s) of the GPUs measured here, from their data sheets: the
# denominator of a step's bandwidth share (--bandwidth gives any other device's).
BANDWIDTH = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12,
             "A100-SXM4-80GB": 2.04e12}


def setup_overrides(setup: str) -> list[str]:
    """'fractalnet+separable' -> model=fractalnet model/block=separable; 'hybrid' -> model=hybrid."""
    model, _, block = setup.partition("+")
    return [f"model={model}", *([f"model/block={block}"] if block else [])]


def protocol() -> dict[str, dict[str, int]]:
    """{figure: {setup: training images over its protocol}}, SEEDS seeds each: ``fig4`` (the
    preset's 11 setups), ``fig4-paper`` (the paper's six of them), ``fig5``, ``fig6``."""
    figures = {}
    with initialize_config_dir(config_dir(), version_base="1.3"):
        for experiment in PROTOCOL:
            cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
            (key, values), = cfg.hydra.sweeper.params.items()
            model = cfg.hydra.runtime.choices["model"]
            per_run = cfg.trainer.max_epochs * (50000 - cfg.data.val_size)
            figures[experiment] = {value if key == "model" else f"{model}+{value}": SEEDS * per_run
                                   for value in str(values).split(",")}
    figures["fig4-paper"] = {s: n for s, n in figures["fig4"].items() if s in PAPER_FIG4}
    return figures


def protocol_setups() -> list[str]:
    """Every setup of Figs. 4-6, once."""
    return list(dict.fromkeys(s for figure in protocol().values() for s in figure))


def network(setup: str, device: torch.device, members: int = 1) -> torch.nn.Module:
    """The setup's network; with ``members`` > 1, a fused array of that many (seeds 0, 1, ...)."""
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=setup_overrides(setup))
    nets = []
    for seed in range(members):
        torch.manual_seed(seed)
        nets.append(build(cfg, "model"))
    return (fuse(nets) if members > 1 else nets[0]).to(device)


class Pipeline:
    """One training setup to time; ``step`` trains one batch and returns its images (over all
    members of an array)."""

    images, seconds, peak_mb = 0, 0.0, 0.0

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def warm_up(self, steps: int = 5) -> float:
        """Seconds the first ``steps`` steps take (cudnn autotuning, allocator, capture...)."""
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return time.perf_counter() - start

    def run(self, seconds: float) -> None:
        """Train for about ``seconds``; the time counts until the device has finished."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.sync()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.images += self.step()
        self.sync()
        self.seconds += time.perf_counter() - start
        if self.device.type == "cuda":
            self.peak_mb = max(self.peak_mb, torch.cuda.max_memory_allocated() / 2**20)

    @property
    def rate(self) -> float:
        return self.images / self.seconds


class Conventional(Pipeline):
    """The loop training scripts usually have: DataLoader workers with per-image CPU
    augmentation, a host-to-device copy per batch, fp32 NCHW, the loss read every step."""

    def __init__(self, setup: str, x_train, y_train, device: torch.device, batch_size: int, workers: int):
        super().__init__(device)
        self.net = network(setup, device)
        self.batches = endless(conventional_loader(x_train, y_train, batch_size, workers,
                                                   pin=device.type == "cuda"))
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step(self) -> int:
        x, y = (t.to(self.device, non_blocking=True) for t in next(self.batches))
        loss = F.cross_entropy(self.net(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss.item()
        return len(y)


class Platform(Pipeline):
    """``python -m hybrid_exp``'s training step (``Classifier.fit_step``): the dataset on the
    device, NHWC, bf16 on GPUs, fused SGD with a tensor lr; ``members`` > 1: a fused seed array,
    each member its own data stream; ``cuda_graph``: the step captured once and replayed."""

    def __init__(self, setup: str, x_train, y_train, device: torch.device, batch_size: int,
                 compile: bool = False, members: int = 1, cuda_graph: bool = False):
        super().__init__(device)
        self.members = members
        rows = torch.arange(len(x_train), device=device).expand(members, -1)
        self.batches = Batches(torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device),
                               rows, batch_size, augment_seeds=list(range(members)))
        self.module = Classifier(prepare_network(network(setup, device, members), True, compile),
                                 members=members, cuda_graph=cuda_graph).to(device)
        self.module.prepare_fit(self.module.configure_optimizers(), len(self.batches), EPOCHS)
        self.module.on_train_epoch_start()
        self.precision = resolve_precision("auto", accelerator=device.type)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if self.precision == "bf16-mixed" else contextlib.nullcontext())
        self.stream, self.steps = endless(self.batches), 0

    def step(self) -> int:
        x, y = next(self.stream)
        with self.autocast:
            self.module.fit_step((x, y), self.steps % self.module.total_steps)
        self.steps += 1
        return y.numel()

    def step_costs(self) -> dict[str, int]:
        """FLOPs and bytes of one training step (``costs.step_costs``), over the batch's images."""
        return costs.step_costs(self.step)

    def eval_rate(self, batches: int = 20) -> float:
        """Images/s of evaluation (each member's), as validation and test run it."""
        x, _ = next(self.stream)
        self.module.eval()
        self.sync()
        start = time.perf_counter()
        with torch.no_grad(), self.autocast:
            for _ in range(batches):
                self.module(x)
        self.sync()
        self.module.train()
        return batches * len(x) * self.members / (time.perf_counter() - start)


class Timer(pl.Callback):
    """Stops a Lightning fit ``seconds`` after its warm-up steps, counting the images between."""

    def __init__(self, seconds: float, device: torch.device, warmup: int = 5):
        self.seconds, self.device, self.warmup = seconds, device, warmup
        self.images, self.elapsed, self.start = 0, 0.0, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            self.start = time.perf_counter()
        elif self.start is not None:
            self.images += len(batch[1])
            self.elapsed = time.perf_counter() - self.start
            trainer.should_stop = self.elapsed >= self.seconds


class TemplateModule(pl.LightningModule):
    """One run as a lightning-hydra-template user writes it: automatic optimization, the loss
    logged every step (on_epoch), fp32."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, nesterov=True)


def lightning_rate(setup: str, x_train, y_train, device: torch.device, batch_size: int,
                   workers: int, seconds: float) -> float:
    """Images/s of a TemplateModule fit with DataLoader workers, timed after its warm-up."""
    timer = Timer(seconds, device)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # its start-up tips
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         precision="32-true", max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    loader = conventional_loader(x_train, y_train, batch_size, workers, pin=device.type == "cuda")
    trainer.fit(TemplateModule(network(setup, device)), loader)
    return timer.images / timer.elapsed


def endless(batches):
    while True:
        yield from batches


MODES = {"lightning": "Lightning + DataLoader workers + fp32, one run per process",
         "conventional": "plain loop + DataLoader workers + fp32",
         "fast": "python -m hybrid_exp, one run", "fused": "a fused array of --fuse seeds",
         "graph": "a fused array, the step as a CUDA graph",
         "compiled": "the fused array (one run at --fuse 1) compiled with torch.compile",
         "compiled_graph": "the compiled array, its step as a CUDA graph"}
ARRAY_MODES = ("fused", "graph", "compiled", "compiled_graph")  # with --fuse N > 1: N members


def peak_bandwidth(device: torch.device) -> float | None:
    """The device's peak memory bandwidth in bytes/s, where ``BANDWIDTH`` knows it."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in BANDWIDTH.items() if key in name), None)


GRAPH_MODES = ("graph", "compiled_graph")


def default_modes(fuse: int, on_gpu: bool, compile: bool) -> list[str]:
    """What the bench times without ``--modes``: every mode the options and the device allow."""
    return [m for m in MODES if (m not in ("fused", "graph", "compiled_graph") or fuse > 1)
            and (m not in GRAPH_MODES or on_gpu) and (m not in ("compiled", "compiled_graph") or compile)]


def bench(setup: str, arrays, device: torch.device, seconds: float, workers: int,
          batch_size: int = 128, modes: list[str] = ("lightning", "conventional", "fast"),
          rounds: int = 2, fuse: int = 1, bandwidth: float | None = None) -> dict:
    """Images/s of each of ``modes`` (over all members for arrays), peak memory, warm-up seconds
    (compiling included), evaluation images/s, the FLOPs and bytes of a training step per
    image, and the share of the device's memory bandwidth each mode reaches. A graph mode the
    network or the device cannot capture is skipped, its reason in ``skipped``."""
    x_train, y_train = arrays[0], arrays[1]
    platform = lambda **kwargs: Platform(setup, x_train, y_train, device, batch_size, **kwargs)
    blocker = graph_blocker(network(setup, torch.device("cpu")), device.type == "cuda")
    skipped = {m: blocker for m in modes if m in GRAPH_MODES and blocker}
    wanted = [m for m in modes if m not in skipped]
    fast = platform()  # costs and the evaluation rate, timed or not
    build = {"conventional": lambda: Conventional(setup, x_train, y_train, device, batch_size, workers),
             "fast": lambda: fast, "fused": lambda: platform(members=fuse),
             "graph": lambda: platform(members=fuse, cuda_graph=True),
             "compiled": lambda: platform(members=fuse, compile=True),
             "compiled_graph": lambda: platform(members=fuse, compile=True, cuda_graph=True)}
    pipelines = {m: build[m]() for m in wanted if m != "lightning"}
    costs = fast.step_costs()  # before any timing: counting runs a step slowly
    warmup = {mode: pipeline.warm_up() for mode, pipeline in pipelines.items()}
    for _ in range(rounds):  # alternate, so slow drifts of the machine hit every pipeline
        for pipeline in pipelines.values():
            pipeline.run(seconds / rounds)
    result = {"setup": setup, "device": device.type, "precision": fast.precision,
              "compile": any(m.startswith("compiled") for m in wanted), "workers": workers,
              "batch_size": batch_size, "fuse": fuse, "skipped": skipped,
              "flops_per_image": costs["flops"] / batch_size,
              "bytes_per_image": costs["bytes"] / batch_size}
    if "lightning" in wanted:
        result["lightning_images_per_s"] = lightning_rate(setup, x_train, y_train, device, batch_size,
                                                          workers, seconds / rounds)
    bandwidth = bandwidth or peak_bandwidth(device)
    for mode, pipeline in pipelines.items():
        steady = pipeline.seconds / pipeline.images * 5 * batch_size * getattr(pipeline, "members", 1)
        result.update({f"{mode}_images_per_s": pipeline.rate,
                       f"{mode}_peak_memory_mb": pipeline.peak_mb or None,
                       f"{mode}_warmup_seconds": max(0.0, warmup[mode] - steady)})  # beyond 5 steady steps
        if bandwidth and mode != "conventional":  # the platform's own step's bytes
            result[f"{mode}_bandwidth_share"] = result["bytes_per_image"] * pipeline.rate / bandwidth
    result["fast_eval_images_per_s"] = fast.eval_rate()
    if fuse > 1:  # an array's evaluation: an eager one's forward (a compiled one would recompile)
        array = pipelines.get("fused") or pipelines.get("graph") or platform(members=fuse)
        result["fused_eval_images_per_s"] = array.eval_rate()
    if "fast_images_per_s" in result and "conventional_images_per_s" in result:
        result["ratio"] = result["fast_images_per_s"] / result["conventional_images_per_s"]
    return result


class ConvCall(Pipeline):
    """One conv of a fused array computed one way (hybrid_exp.conv_alternatives): each step is
    a forward + backward on the NHWC tensors ``x`` and ``w``, in the training step's precision."""

    def __init__(self, implementation, shape: dict, x: torch.Tensor, w: torch.Tensor, autocast):
        super().__init__(x.device)
        self.implementation, self.x, self.w, self.autocast = implementation, x, w, autocast
        self.args = (shape["stride"], shape["padding"], shape["groups"], shape["members"])

    def step(self) -> int:
        with self.autocast:
            y = self.implementation(self.x, self.w, *self.args)
        torch.autograd.grad(y, (self.x, self.w), torch.ones_like(y))
        return 1  # rate: calls per second


def shape_timings(setup: str, arrays, device: torch.device, batch_size: int, members: int,
                  seconds: float, rounds: int = 2):
    """Each distinct conv of the setup's training step (a fused array of ``members``), its
    forward + backward timed in milliseconds as each implementation of
    hybrid_exp.conv_alternatives that computes it, alternating between them, on tensors of the
    step's dtype and layout (bf16 channels_last on a GPU): a row as each is timed."""
    platform = Platform(setup, arrays[0], arrays[1], device, batch_size, members=members)
    dtype = torch.bfloat16 if platform.precision == "bf16-mixed" else torch.float32  # as the step's convs run
    for shape in conv_alternatives.conv_shapes(platform.module, platform.step, members):
        nhwc = lambda size: torch.randn(size, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        x, w = nhwc(shape["input"]).requires_grad_(), nhwc(shape["weight"]).requires_grad_()
        calls = {name: ConvCall(implementation, shape, x, w, platform.autocast)
                 for name, implementation in conv_alternatives.IMPLEMENTATIONS.items()
                 if conv_alternatives.applies(name, shape)}
        for call in calls.values():
            call.warm_up(1)  # cudnn's autotuning, the allocator
        for _ in range(rounds):
            for call in calls.values():
                call.run(seconds / rounds)
        yield {"setup": setup, **shape, "dtype": str(dtype).removeprefix("torch."),
               "ms": {name: 1e3 / call.rate for name, call in calls.items()}}


def packed_run(setup: str, data_root: str, device: str, seconds: float, threads: int,
               batch_size: int, start, results) -> None:
    """One of several runs sharing a device (a spawned process): the fast path, timed from a
    common start so the runs overlap fully."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    x_train, y_train, _, _ = load_cifar10(data_root)
    pipeline = Platform(setup, x_train, y_train, device, batch_size)
    pipeline.warm_up()
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


def project(results: list[dict]) -> dict[str, dict]:
    """Device-hours of each figure's protocol (``protocol()``: 10 seeds, 190 epochs) in each
    measured mode: training at the measured rate, evaluation (validation every epoch, the test
    subset at the end) at the measured evaluation rate, and each process's warm-up (cudnn
    autotuning, compiling, capture: once per run, or per array)."""
    rates = {r["setup"]: r for r in results}
    eval_images = lambda runs: runs * (EPOCHS * VAL + TEST)
    projections = {}
    for figure, needed in protocol().items():
        covered = [s for s in needed if s in rates]
        projection = projections[figure] = {"setups_measured": len(covered),
                                            "setups_in_protocol": len(needed),
                                            "complete": len(covered) == len(needed)}
        for mode in MODES:
            if not covered or not all(f"{mode}_images_per_s" in rates[s] for s in covered):
                continue
            seconds = 0.0
            for setup in covered:
                r, runs = rates[setup], needed[setup] / (EPOCHS * TRAIN)
                members = r["fuse"] if mode in ARRAY_MODES else 1
                evaluator = r["fused_eval_images_per_s"] if members > 1 else r["fast_eval_images_per_s"]
                seconds += (needed[setup] / r[f"{mode}_images_per_s"] + eval_images(runs) / evaluator
                            + runs / members * r.get(f"{mode}_warmup_seconds", 0.0))
            projection[f"{mode}_device_hours"] = seconds / 3600
    return projections


def e2e(setups: list[str], data_root: str, members: int, epochs: int = 2,
        overrides: tuple[str, ...] = ()) -> list[dict]:
    """A short real grid through ``python -m hybrid_exp`` (fused arrays of ``members`` seeds):
    seconds per epoch per member from each run's ``epoch_seconds`` (the last epoch: the first
    carries the warm-up), to check the projection against the product path."""
    from hybrid_exp.store import Client

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/e2e.db"
        models = ",".join(setups)
        command = [sys.executable, "-m", "hybrid_exp", "-m", "experiment=paper", f"model={models}",
                   f"seed=range({members})", f"trainer.max_epochs={epochs}", f"data.root={data_root}",
                   f"logger.tracking_uri={uri}", "logger.experiment_name=e2e",
                   f"checkpoint_dir={folder}/checkpoints", f"hydra.sweep.dir={folder}/multirun",
                   f"hydra.launcher.max_array_size={members}", *overrides]
        run = subprocess.run(command, capture_output=True, text=True, cwd=folder)
        if run.returncode != 0:
            raise RuntimeError(f"the e2e grid failed: {run.stderr[-2000:]}")
        client = Client(uri)
        experiment = client.get_experiment_by_name("e2e")
        rows = []
        for r in client.search_runs([experiment.experiment_id]):
            history = client.get_metric_history(r.info.run_id, "epoch_seconds")
            last = max(history, key=lambda m: m.step).value
            rows.append({"setup": r.data.tags["setup"], "seed": int(r.data.tags["seed"]),
                         "members": members, "epoch_seconds": last,
                         "seconds_per_epoch_per_member": last / members})
        return sorted(rows, key=lambda row: (row["setup"], row["seed"]))
