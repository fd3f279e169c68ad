"""The Lightning callbacks of a training: the resume checkpoint, each member's best weights, the
Optuna pruner's report, the live progress bar, and the reporter that sends each member's
metrics to its MLflow run."""
import logging
import math
import os
import sys
from pathlib import Path

import optuna
from pytorch_lightning.callbacks import Callback, Checkpoint, RichProgressBar

from hybrid_exp import tracking
from hybrid_exp.fusion import member_state
from hybrid_exp.module import Reporter, members_summary


class OptunaPruning(Callback):
    """Reports val/error to the job's Optuna trial each epoch (through the study's storage, so
    across processes and machines) and stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def on_validation_end(self, trainer, pl_module) -> None:
        epoch, value = trainer.current_epoch + 1, pl_module.val_metrics[0]["val/error"]  # from 1
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned by Optuna at epoch {epoch} (val/error {value:.2f})")


class EpochBar(RichProgressBar):
    """Lightning's live bar with epochs counted from 1 and the last epoch's loss and errors (an
    array's mean ± sd over its living members, as the log line), read once per epoch; no version
    number. Public hooks but one: no public hook names the epoch before the bar first draws it
    (a public update after it would flash Lightning's 0-based 'Epoch 0/0' first); a test pins it."""

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's own: 0-based
        description = f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"
        return f"{description:{len(self.validation_description)}}"  # no flicker beside it

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        """As the epoch's log line says them: an array's mean ± sd over its living members."""
        alive = pl_module.living_members()
        shown = members_summary(pl_module.metrics, alive, ("train/loss", "train/error", "val/loss", "val/error"))
        return {**shown, "members": f"mean ± sd over {len(alive)}"} if pl_module.members > 1 and shown else shown

    # While the bar is live, rich prints what goes to sys.stdout/sys.stderr above it; logging
    # handlers keep the stream they were made with and would write over the bar: for as long
    # as the trainer runs, the console handlers write to whatever sys.stdout/sys.stderr is now.
    moved: list[tuple[logging.StreamHandler, object]] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        current = {id(stream): CurrentStream(name) for name in ("stdout", "stderr")
                   for stream in (getattr(sys, f"__{name}__"), getattr(sys, name))}  # (process.setup wraps them)
        self.moved = [(h, h.setStream(current[id(h.stream)])) for h in logging.getLogger().handlers
                      if type(h) is logging.StreamHandler and id(h.stream) in current]

    def teardown(self, trainer, pl_module, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self.give_streams_back()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)  # a failed fit skips the teardown
        self.give_streams_back()

    def give_streams_back(self) -> None:
        for handler, stream in self.moved:
            handler.setStream(stream)
        self.moved = []


class CurrentStream:
    """Writes to ``sys.<name>`` as it is at each write (rich's proxy while its bar is live)."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text: str) -> int:
        return getattr(sys, self.name).write(text)

    def flush(self) -> None:
        getattr(sys, self.name).flush()


class LastCheckpoint(Checkpoint):
    """Saves ``last.ckpt`` after every epoch, atomically (a kill mid-write leaves the previous
    one). As a Checkpoint it runs after the module's epoch-end hook: the epoch is logged first."""

    def __init__(self, directory: Path):
        self.path = directory / "last.ckpt"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        partial = self.path.with_suffix(".part")
        try:
            trainer.save_checkpoint(partial, weights_only=False)  # optimizer and loops too
        except OSError as e:
            partial.unlink(missing_ok=True)  # half written: the previous checkpoint stands
            raise OSError(e.errno, e.strerror, str(partial)) from e  # torch names no file
        os.replace(partial, self.path)


class BestWeights(Checkpoint):
    """Keeps each member's weights from the epoch of its best ``monitor`` (a validation metric:
    ``val/error`` or ``val/loss``), which every FINISHED run then stores as ``best.pt`` beside the
    final ``model.pt``, with ``best/epoch`` and ``best/<monitor>``. Training is unchanged by it.
    The kept weights travel in the resume checkpoint (``state_dict``): a resumed run keeps them.
    As a Checkpoint it runs after the module's epoch-end hook, when the epoch's metrics are in."""

    FILE = "best.pt"

    def __init__(self, monitor: str = "val/error", mode: str = "min"):  # checks.check_callbacks
        self.monitor, self.sign = monitor, 1 if mode == "min" else -1
        self.best: dict[int, dict] = {}  # member -> {"epoch", "value", "state"}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        state = None
        for m in range(pl_module.members):
            value = pl_module.val_metrics[m].get(self.monitor)
            if m in pl_module.failures or value is None or not math.isfinite(value):
                continue
            if m not in self.best or self.sign * value < self.sign * self.best[m]["value"]:
                state = state or {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}
                member = member_state(state, m, pl_module.members) if pl_module.members > 1 else state
                self.best[m] = {"epoch": trainer.current_epoch + 1, "value": value, "state": member}

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict["best"]

    def store(self, member: int, run: tracking.TrackedRun) -> None:  # not "log": Lightning sets that
        if member in self.best:
            best = self.best[member]
            run.log_weights(best["state"], self.FILE)
            run.log({"best/epoch": best["epoch"], f"best/{self.monitor}": best["value"]}, best["epoch"])


class MemberRuns(Reporter):
    """The MLflow run of each member of an array (None: a member that had failed before a resume)."""

    def __init__(self, runs: list[tracking.TrackedRun | None]):
        self.runs = runs

    def log(self, member: int, metrics: dict[str, float], epoch: int) -> None:
        if self.runs[member]:
            self.runs[member].log(metrics, epoch)

    def fail(self, member: int, reason: str) -> None:
        if self.runs[member] and not self.runs[member].failed:
            self.runs[member].fail(reason)
