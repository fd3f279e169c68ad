"""One LightningModule for every architecture: cross-entropy, SGD, per-epoch metrics."""
import logging
import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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


class Classifier(pl.LightningModule):
    """Wraps ``net``; logs per epoch train/val loss and error (%), lr, epoch time, images/s.

    Sums are accumulated on the device and read once per epoch: no per-step host sync.
    """

    def __init__(self, net: nn.Module, lr: float = 0.1, momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 5e-4, warmup_epochs: float = 2):
        super().__init__()
        self.net = net
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay, self.warmup_epochs = weight_decay, warmup_epochs
        self.sums: dict[str, torch.Tensor] = {}  # stage -> (loss sum, errors) on the device
        self.counts: dict[str, int] = {}  # stage -> images
        self.first_bad_step: torch.Tensor | None = None  # -1 while every loss is finite
        self.val_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def evaluate(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)  # (B, classes)
        loss = F.cross_entropy(logits, y)
        tally = torch.stack([loss.detach() * len(y), (logits.argmax(1) != y).sum().float()])
        self.sums[stage] = self.sums.get(stage, 0) + tally
        self.counts[stage] = self.counts.get(stage, 0) + len(y)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.evaluate(batch, "train")
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, self.global_step, self.first_bad_step)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def summarize(self, stage: str) -> dict[str, float]:
        """Mean loss and error (%) of ``stage`` since the last call; resets its sums."""
        (loss, errors), count = self.sums.pop(stage).tolist(), self.counts.pop(stage)
        return {f"{stage}/loss": loss / count, f"{stage}/error": 100 * errors / count}

    def on_train_epoch_start(self) -> None:
        self.first_bad_step = torch.tensor(-1, device=self.device)
        self.epoch_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        # logged as validation ends, so callbacks there (Optuna pruning) see this epoch's values
        self.val_metrics = self.summarize("val")
        self.log_dict({**self.val_metrics, "step": float(self.current_epoch)})  # step = epoch

    def on_train_epoch_end(self) -> None:
        if (bad_step := int(self.first_bad_step)) >= 0:
            raise Diverged(f"training diverged: non-finite loss at epoch {self.current_epoch}, "
                           f"step {bad_step}; lower optim.lr or check the data")
        images = self.counts["train"]
        seconds = time.perf_counter() - self.epoch_start
        metrics = {**self.summarize("train"), "lr": self.optimizers().param_groups[0]["lr"],
                   "epoch_seconds": seconds, "images_per_second": images / seconds}
        self.log_dict({**metrics, "step": float(self.current_epoch)})  # MLflow step = epoch
        log.info("epoch %d/%d  %s", self.current_epoch + 1, self.trainer.max_epochs, "  ".join(
            f"{k} {v:.4g}" for k, v in {**metrics, **self.val_metrics}.items()))

    def on_test_epoch_end(self) -> None:
        self.log_dict({**self.summarize("test"), "step": float(self.current_epoch)})

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum,
                                    nesterov=self.nesterov, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        warmup = round(self.warmup_epochs * total / self.trainer.max_epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
