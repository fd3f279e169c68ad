"""One LightningModule for every architecture, one run or a fused seed array: cross-entropy,
SGD, per-epoch metrics per member."""
import logging
import math
import statistics
import time

import pytorch_lightning as pl
import torch
from torch import nn

from hybrid_exp.costs import flop_counter
from hybrid_exp.errors import Diverged
from hybrid_exp.fusion import member_slices, per_member_cross_entropy

log = logging.getLogger(__name__)


def members_summary(metrics: list[dict[str, float]], alive: list[int], keys=None) -> dict[str, str]:
    """Each metric of the epoch as the log line and the progress bar show it: one run's value;
    an array's mean ± sd over its living members (one value where they agree, as the learning
    rate does). ``keys``: those metrics only."""
    values = {k: [metrics[m][k] for m in alive] for k in metrics[alive[0]] if keys is None or k in keys}
    shown = lambda v: f"{v[0]:.4g}" if max(v) == min(v) else f"{statistics.fmean(v):.4g} ± {statistics.stdev(v):.2g}"
    return {k: shown(v) for k, v in values.items()}


def complexity(net: nn.Module) -> dict[str, int]:
    """Parameter count and multiply-adds of one forward pass on a 32x32 image."""
    was_training = net.training
    with torch.no_grad(), flop_counter() as counter:
        net.eval()(torch.zeros(1, 3, 32, 32, device=next(net.parameters()).device))
    net.train(was_training)
    return {"params": sum(p.numel() for p in net.parameters()),
            "mult_adds": counter.get_total_flops() // 2}  # one multiply-add = 2 FLOPs


def graph_blocker(net: nn.Module, on_gpu: bool) -> str | None:
    """Why a CUDA graph cannot capture ``net``'s training step (None: it can): training and
    the benchmark decide alike."""
    return "it needs a CUDA device" if not on_gpu else getattr(net, "cuda_graph_blocker", None)


def prepare_network(net: nn.Module, channels_last: bool, compile: bool) -> nn.Module:
    """The network in the layout it trains in: NHWC weights (the batches are NHWC in memory),
    compiled in place (state_dict keys unchanged, so checkpoints work either way)."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile:
        net.compile()
    return net


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor: linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Reporter:
    """Where a Classifier's per-member results go (train.py sends them to MLflow runs)."""

    def log(self, member: int, metrics: dict[str, float], epoch: int) -> None:
        pass

    def fail(self, member: int, reason: str) -> None:
        pass


class Classifier(pl.LightningModule):
    """Wraps ``net``, one network or a fused array of ``members`` (hybrid_exp.fusion): logits
    (B, M*K), labels (B, M). Each member's loss is its own mean cross-entropy; training
    minimises their sum, so each member's gradient is exactly what it would get alone.

    The training step is ours (manual optimization): forward, backward and one fused SGD step,
    nothing of Lightning's per-step machinery in between. The learning rate lives in a device
    tensor that the schedule (``warmup_cosine``, stepped every batch) writes in place, so the
    same step can be captured once as a CUDA graph and replayed (``cuda_graph``, see
    ``capture``).

    Logs per member and epoch train/val loss and error (%), lr, epoch time, images/s, through
    ``reporter``. Sums are accumulated on the device and read once per epoch: no per-step host
    sync. A member whose loss becomes non-finite is failed (``reporter.fail``) at the end of that
    epoch and frozen: its weights, momentum and BN statistics are zeroed and its loss weighted 0,
    so it stays exactly at zero while the others train on, unaffected (every member computes in
    its own channels). One run, or every member, diverged: ``Diverged`` is raised.
    """

    GRAPH_WARMUP = 3  # eager steps (on a side stream) before the capture, as CUDA graphs need

    def __init__(self, net: nn.Module, lr: float = 0.1, momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 5e-4, warmup_epochs: float = 2,
                 depthwise_weight_decay: float | None = None, members: int = 1, reporter: Reporter | None = None, cuda_graph: bool = False):
        super().__init__()
        self.automatic_optimization = False
        self.net, self.members, self.reporter = net, members, reporter or Reporter()
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay, self.warmup_epochs = weight_decay, warmup_epochs
        self.depthwise_weight_decay = depthwise_weight_decay
        self.cuda_graph, self.graph, self.eager_steps = cuda_graph, None, 0
        self.sums: dict[str, torch.Tensor] = {}  # eval stage -> (M, 2): loss sum, errors
        self.counts: dict[str, int] = {}  # stage -> images per member
        self.failures: dict[int, str] = {}  # member -> why it failed
        self.kept_logits: list[torch.Tensor] = []  # the evaluation subset's, batch by batch
        self.eval_subset = torch.zeros(0, dtype=torch.bool)  # which test images it holds, set by test
        self.val_metrics: list[dict[str, float]] = [{} for _ in range(members)]
        self.metrics: list[dict[str, float]] = [{} for _ in range(members)]  # each member's latest
        # The training step's state lives in device tensors updated in place: a captured graph
        # sees the same memory at every replay.
        buffer = lambda name, value: self.register_buffer(name, value, persistent=False)
        buffer("loss_weights", torch.ones(members))  # 0: a frozen member
        buffer("lr_now", torch.tensor(float(lr)))  # the optimizer's lr, set by the schedule
        buffer("step_now", torch.tensor(0))  # this step's index
        buffer("train_sums", torch.zeros(members, 2))  # loss sum, errors, this epoch
        buffer("first_bad_step", torch.full((members,), -1))  # -1 while every loss is finite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def evaluate(self, batch, sums: torch.Tensor) -> torch.Tensor:
        """Each member's mean loss on ``batch`` (M,); adds loss and errors to ``sums`` in place."""
        x, y = batch
        return self.score(self(x), y, sums)

    @staticmethod
    def score(logits: torch.Tensor, y: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
        """Each member's mean loss of ``logits`` (B, M*K) against ``y`` (M,); adds loss and
        errors to ``sums`` in place."""
        y = y.view(len(y), -1)  # (B, M)
        losses = per_member_cross_entropy(logits, y)  # (M,)
        errors = (logits.view(*y.shape, -1).argmax(2) != y).sum(0)  # (M,)
        sums.add_(torch.stack([losses.detach() * len(y), errors.float()], 1))  # (M, 2)
        return losses

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, backward and SGD step on one batch; everything it changes is in place."""
        losses = self.evaluate((x, y), self.train_sums)
        bad = ~torch.isfinite(losses.detach()) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(bad, self.step_now, self.first_bad_step))
        (losses * self.loss_weights).sum().backward()
        self.optimizer.step()

    def training_step(self, batch, batch_idx: int) -> None:
        self.fit_step(batch, self.current_epoch * self.trainer.num_training_batches + batch_idx)

    def prepare_fit(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> None:
        """Bind ``optimizer`` to the lr tensor and size the schedule (also for the benchmark,
        which drives ``fit_step`` without a Trainer)."""
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["lr"] = self.lr_now
        self.total_steps = epochs * steps_per_epoch
        self.warmup_steps = round(self.warmup_epochs * steps_per_epoch)
        if self.cuda_graph:
            self.side_stream = torch.cuda.Stream()

    def fit_step(self, batch, step: int) -> None:
        """Training step number ``step`` (from 0, over all epochs) on ``batch``."""
        self.lr_now.fill_(self.lr * warmup_cosine(step, self.warmup_steps, self.total_steps))
        self.step_now.fill_(step)
        self.counts["train"] = self.counts.get("train", 0) + len(batch[1])
        if self.graph is not None:
            self.static_x.copy_(batch[0])
            self.static_y.copy_(batch[1])
            self.graph.replay()
        elif self.cuda_graph and self.eager_steps == self.GRAPH_WARMUP:
            self.capture(*batch)
        elif self.cuda_graph:  # a warm-up step, on a side stream that waits for the batch
            self.side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side_stream):
                self.eager_step(*batch)
            torch.cuda.current_stream().wait_stream(self.side_stream)
        else:
            self.eager_step(*batch)

    def eager_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.train_step(x, y)
        self.eager_steps += 1

    def capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the whole training step as a CUDA graph, then replay it for this batch.

        After ``GRAPH_WARMUP`` eager steps on a side stream (momentum buffers and cuBLAS/cuDNN
        workspaces exist by then); autocast's weight cache is off inside the capture (a cached
        cast would outlive the graph's memory), grads are left to the graph's own memory."""
        self.static_x, self.static_y = x.clone(), y.clone()
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)
        with torch.cuda.graph(self.graph), autocast:
            self.train_step(self.static_x, self.static_y)
        self.graph.replay()
        log.info("training step captured as a CUDA graph after %d eager steps", self.eager_steps)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, self.eval_sums("val", len(batch[1])))

    def on_test_start(self) -> None:
        self.eval_subset = self.trainer.datamodule.in_eval_subset()  # (N,) bool, the whole set's order
        self.kept_logits = []

    def test_step(self, batch, batch_idx: int) -> None:
        """The whole test set, in order, each image once: the evaluation subset's images among
        this batch are scored (and their logits kept) from the same forward pass."""
        x, y = batch
        seen = self.counts.get("test_full", 0)
        logits = self(x)  # (B, M*K)
        self.score(logits, y, self.eval_sums("test_full", len(y)))
        subset = self.eval_subset[seen:seen + len(y)]  # (B,)
        if count := int(subset.sum()):  # a batch with none of them: a mean over no image is NaN
            self.kept_logits.append(logits[subset].detach())
            self.score(logits[subset], y[subset], self.eval_sums("test", count))

    def test_logits(self) -> torch.Tensor:
        """(N, M, K) logits of the evaluation subset, in its order, on the CPU."""
        logits = torch.cat(self.kept_logits)
        return logits.view(len(logits), self.members, -1).float().cpu()

    def eval_sums(self, stage: str, images: int) -> torch.Tensor:
        """The (M, 2) sums of an evaluation stage, counting ``images`` more."""
        self.counts[stage] = self.counts.get(stage, 0) + images
        return self.sums.setdefault(stage, torch.zeros(self.members, 2, device=self.device))

    def summarize(self, stage: str) -> list[dict[str, float]]:
        """Each member's mean loss and error (%) of ``stage`` since the last call; resets its sums."""
        sums = self.train_sums if stage == "train" else self.sums.pop(stage)
        count = self.counts.pop(stage)
        return [{f"{stage}/loss": loss / count, f"{stage}/error": 100 * errors / count}
                for loss, errors in sums.tolist()]

    def report(self, metrics: list[dict[str, float]], epoch: int | None = None) -> None:
        """Log each living member's metrics at ``epoch``, counted from 1 as the log prints it
        (= the MLflow step): by default the epoch under way."""
        for member, values in enumerate(metrics):
            if member not in self.failures:
                self.metrics[member].update(values)
                self.reporter.log(member, values, self.current_epoch + 1 if epoch is None else epoch)

    def on_train_start(self) -> None:  # after a checkpoint is restored, which replaces the lr
        self.prepare_fit(self.optimizers().optimizer, self.trainer.num_training_batches,
                         self.trainer.max_epochs)

    def on_train_epoch_start(self) -> None:
        self.train_sums.zero_()
        self.first_bad_step.fill_(-1)
        self.epoch_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        # logged as validation ends, so callbacks there (Optuna pruning) see this epoch's values
        self.val_metrics = self.summarize("val")
        self.fail_diverged_training()  # validation runs before the epoch's end: say why first
        self.fail_non_finite(self.val_metrics, "validation")
        self.report(self.val_metrics)
        alive = self.living_members()
        self.log_dict({k: sum(self.val_metrics[m][k] for m in alive) / len(alive)  # for callbacks
                       for k in ("val/loss", "val/error")})

    def living_members(self) -> list[int]:
        """The members that have not failed ([0] once all have: something to show and log)."""
        return [m for m in range(self.members) if m not in self.failures] or [0]

    def fail_diverged_training(self) -> None:
        """Fail each member whose training loss went non-finite this epoch."""
        for member, step in enumerate(self.first_bad_step.tolist()):
            if step >= 0 and member not in self.failures:
                self.fail(member, f"training diverged: non-finite loss at epoch "
                                  f"{self.current_epoch + 1}, step {step}; lower optim.lr or check the data")
        if len(self.failures) == self.members:
            raise Diverged(self.failures[0] if self.members == 1 else
                           f"every member of the array diverged: {self.failures}")

    def on_train_epoch_end(self) -> None:
        self.fail_diverged_training()
        images = self.counts["train"]
        seconds = time.perf_counter() - self.epoch_start
        common = {"lr": self.lr_now.item(), "epoch_seconds": seconds,
                  "images_per_second": images / seconds}  # per member
        self.report([{**train, **common} for train in self.summarize("train")])
        log.info("epoch %d/%d  %s", self.current_epoch + 1, self.trainer.max_epochs, self.epoch_line())

    def epoch_line(self) -> str:
        """The epoch's metrics (``members_summary``), and how many members live."""
        alive = self.living_members()
        line = "  ".join(f"{k} {v}" for k, v in members_summary(self.metrics, alive).items())
        if self.members == 1:
            return line
        failed = f", {len(self.failures)} failed" if self.failures else ""
        return f"{line}  (mean ± sd over {len(alive)} members{failed})"

    def on_test_epoch_end(self) -> None:
        metrics = [{**subset, **full} for subset, full in zip(self.summarize("test"), self.summarize("test_full"))]
        self.fail_non_finite(metrics, "test")
        self.report(metrics, epoch=self.current_epoch)  # after the last epoch: its number

    def fail_non_finite(self, metrics: list[dict[str, float]], stage: str) -> None:
        """A member whose evaluation loss is not finite diverged (its training loss can still
        be finite): it fails, as a non-finite training loss makes it fail."""
        for member, values in enumerate(metrics):
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad and member not in self.failures:
                self.fail(member, f"diverged: non-finite {stage} metric ({', '.join(bad)}) at epoch "
                                  f"{self.current_epoch + 1 if stage != 'test' else self.current_epoch}; lower optim.lr or check the data")
        if len(self.failures) == self.members:
            raise Diverged(self.failures[0] if self.members == 1 else
                           f"every member of the array diverged: {self.failures}")

    def fail(self, member: int, reason: str) -> None:
        """Freeze ``member`` at zero (see the class docstring) and report its failure."""
        self.failures[member] = reason
        self.loss_weights[member] = 0
        optimizer = self.trainer.optimizers[0] if self.trainer else None
        with torch.no_grad():
            for tensor in [*self.net.parameters(), *self.net.buffers(),
                           *(state for p in self.net.parameters() if optimizer
                             for state in optimizer.state.get(p, {}).values())]:
                if tensor.dim() > 0 and tensor.is_floating_point():  # 0-d: shared by all members
                    member_slices(tensor, self.members)[member].zero_()
        if self.members > 1:
            log.error("member %d of %d FAILED: %s", member, self.members, reason)
        self.reporter.fail(member, reason)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["failures"] = self.failures

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.failures = {int(m): reason for m, reason in checkpoint.get("failures", {}).items()}
        for member in self.failures:
            self.loss_weights[member] = 0

    def configure_optimizers(self):
        # fused: one kernel for every parameter's update; lr a tensor (see the class docstring)
        groups = [{"params": list(self.parameters())}]
        if self.depthwise_weight_decay is not None:  # MobileNet: little or none on depthwise filters
            depthwise = [p for p in self.parameters() if is_depthwise(p)]
            groups = [{"params": [p for p in self.parameters() if not is_depthwise(p)]},
                      {"params": depthwise, "weight_decay": self.depthwise_weight_decay}]
        return torch.optim.SGD(groups, lr=self.lr_now, momentum=self.momentum,
                               nesterov=self.nesterov, weight_decay=self.weight_decay, fused=True)


def is_depthwise(weight: torch.Tensor) -> bool:
    """A depthwise filter bank: a 4-D conv weight with one input channel per group and a
    spatial kernel (a depthwise conv's, fused or not, and ``Equivalent``'s towers)."""
    return weight.dim() == 4 and weight.shape[1] == 1 and weight.shape[2] * weight.shape[3] > 1
