"""One LightningModule for every architecture, one run or a fused seed array: cross-entropy,
SGD, per-epoch metrics per member."""
import logging
import math
import time

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hybrid_exp.fusion import member_slices, per_member_cross_entropy

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def complexity(net: nn.Module) -> dict[str, int]:
    """Parameter count and multiply-adds of one forward pass on a 32x32 image."""
    was_training = net.training
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(torch.zeros(1, 3, 32, 32, device=next(net.parameters()).device))
    net.train(was_training)
    return {"params": sum(p.numel() for p in net.parameters()),
            "mult_adds": counter.get_total_flops() // 2}  # one multiply-add = 2 FLOPs


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning precision for ``auto``: bf16 autocast when training on a GPU that has bf16,
    fp32 otherwise (CPUs)."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


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

    Logs per member and epoch train/val loss and error (%), lr, epoch time, images/s, through
    ``reporter``. Sums are accumulated on the device and read once per epoch: no per-step host
    sync. A member whose loss becomes non-finite is failed (``reporter.fail``) at the end of that
    epoch and frozen: its weights, momentum and BN statistics are zeroed and its loss weighted 0,
    so it stays exactly at zero while the others train on, unaffected (every member computes in
    its own channels). One run, or every member, diverged: ``Diverged`` is raised.
    """

    def __init__(self, net: nn.Module, lr: float = 0.1, momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 5e-4, warmup_epochs: float = 2,
                 members: int = 1, reporter: Reporter | None = None):
        super().__init__()
        self.net, self.members, self.reporter = net, members, reporter or Reporter()
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay, self.warmup_epochs = weight_decay, warmup_epochs
        self.sums: dict[str, torch.Tensor] = {}  # stage -> (M, 2): loss sum, errors, on the device
        self.counts: dict[str, int] = {}  # stage -> images per member
        self.first_bad_step: torch.Tensor | None = None  # (M,), -1 while every loss is finite
        self.failures: dict[int, str] = {}  # member -> why it failed
        self.register_buffer("loss_weights", torch.ones(members), persistent=False)  # 0: frozen
        self.val_metrics: list[dict[str, float]] = [{} for _ in range(members)]
        self.metrics: list[dict[str, float]] = [{} for _ in range(members)]  # each member's latest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def evaluate(self, batch, stage: str) -> torch.Tensor:
        """Each member's mean loss on ``batch`` (M,); tallies loss and errors for ``stage``."""
        x, y = batch
        y = y.view(len(y), -1)  # (B, M)
        logits = self(x)  # (B, M*K)
        losses = per_member_cross_entropy(logits, y)  # (M,)
        errors = (logits.view(*y.shape, -1).argmax(2) != y).sum(0)  # (M,)
        tally = torch.stack([losses.detach() * len(y), errors.float()], 1)  # (M, 2)
        self.sums[stage] = self.sums.get(stage, 0) + tally
        self.counts[stage] = self.counts.get(stage, 0) + len(y)
        return losses

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        losses = self.evaluate(batch, "train")
        bad = ~torch.isfinite(losses.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, self.global_step, self.first_bad_step)
        return (losses * self.loss_weights).sum()

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def summarize(self, stage: str) -> list[dict[str, float]]:
        """Each member's mean loss and error (%) of ``stage`` since the last call; resets its sums."""
        sums, count = self.sums.pop(stage).tolist(), self.counts.pop(stage)
        return [{f"{stage}/loss": loss / count, f"{stage}/error": 100 * errors / count}
                for loss, errors in sums]

    def report(self, metrics: list[dict[str, float]]) -> None:
        """Log each living member's metrics at this epoch (= MLflow step)."""
        for member, values in enumerate(metrics):
            if member not in self.failures:
                self.metrics[member].update(values)
                self.reporter.log(member, values, self.current_epoch)

    def on_train_epoch_start(self) -> None:
        self.first_bad_step = torch.full((self.members,), -1, device=self.device)
        self.epoch_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        # logged as validation ends, so callbacks there (Optuna pruning) see this epoch's values
        self.val_metrics = self.summarize("val")
        self.report(self.val_metrics)

    def on_train_epoch_end(self) -> None:
        for member, step in enumerate(self.first_bad_step.tolist()):
            if step >= 0 and member not in self.failures:
                self.fail(member, f"training diverged: non-finite loss at epoch "
                                  f"{self.current_epoch}, step {step}; lower optim.lr or check the data")
        if len(self.failures) == self.members:
            raise Diverged(self.failures[0] if self.members == 1 else
                           f"every member of the array diverged: {self.failures}")
        images = self.counts["train"]
        seconds = time.perf_counter() - self.epoch_start
        common = {"lr": self.optimizers().param_groups[0]["lr"], "epoch_seconds": seconds,
                  "images_per_second": images / seconds}  # per member
        self.report([{**train, **common} for train in self.summarize("train")])
        alive = next(m for m in range(self.members) if m not in self.failures)
        log.info("epoch %d/%d  %s", self.current_epoch + 1, self.trainer.max_epochs, "  ".join(
            f"{k} {v:.4g}" for k, v in self.metrics[alive].items()) + (
            f"  (member {alive} of {self.members})" if self.members > 1 else ""))

    def on_test_epoch_end(self) -> None:
        self.report(self.summarize("test"))

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
        # fused: one kernel for every parameter's update, where this torch has it for the device
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum,
                                    nesterov=self.nesterov, weight_decay=self.weight_decay,
                                    fused=True)
        total = self.trainer.estimated_stepping_batches
        warmup = round(self.warmup_epochs * total / self.trainer.max_epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
