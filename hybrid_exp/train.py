"""One training run: build everything from the config, then skip, resume or train, and test."""
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, Checkpoint, RichProgressBar
from pytorch_lightning.plugins.environments import SLURMEnvironment

from hybrid_exp import tracking
from hybrid_exp.module import Classifier, complexity, prepare_network, resolve_precision
from hybrid_exp.seeding import derive_seed

log = logging.getLogger(__name__)


@dataclass
class Result:
    status: str  # 'finished', or 'skipped' when an equal config had already FINISHED
    metrics: dict[str, float]  # final metrics, errors in %
    run_id: str


class OptunaPruning(Callback):
    """Reports val/error to the job's Optuna trial each epoch (through the study's storage, so
    across processes and machines) and stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def on_validation_end(self, trainer, pl_module) -> None:
        epoch, value = trainer.current_epoch, float(trainer.callback_metrics["val/error"])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned by Optuna at epoch {epoch} (val/error {value:.2f})")


def optuna_trial(cfg: DictConfig) -> optuna.Trial | None:
    """The trial this job runs, when an Optuna sweep launched it."""
    trial = cfg.get("optuna") or {}
    if trial.get("trial_id") is None:
        return None
    pruner = instantiate(json.loads(trial.pruner)) if trial.get("pruner") else None  # the sweep's
    study = optuna.load_study(study_name=trial.study_name, storage=trial.storage, pruner=pruner)
    return optuna.Trial(study, trial.trial_id)


class LastCheckpoint(Checkpoint):
    """Saves ``last.ckpt`` after every epoch, atomically (a kill mid-write leaves the previous
    one). As a Checkpoint it runs after the module's epoch-end hook: the epoch is logged first."""

    def __init__(self, directory: Path):
        self.path = directory / "last.ckpt"

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        partial = self.path.with_suffix(".part")
        trainer.save_checkpoint(partial, weights_only=False)  # optimizer and loops too
        os.replace(partial, self.path)


def train(cfg: DictConfig) -> Result:
    """Train ``cfg`` (composed by Hydra). A config (its hash) with a FINISHED run in the
    experiment is skipped unless ``rerun``; an interrupted one resumes from its last checkpoint
    into the same MLflow run.

    Names come from Hydra's choices: ``model`` (the preset) and ``block`` (``model/block``); the
    ``setup`` is the model's name, or ``<model>+<block>`` when the unit is not its namesake.
    """
    choices = HydraConfig.get().runtime.choices
    # Initial weights draw from (trial seed, model config): variants never share them, and
    # equal model configs reproduce them (the data streams derive from the seed alone).
    torch.manual_seed(derive_seed(cfg.seed, "init", OmegaConf.to_yaml(cfg.model, resolve=True)))
    net = instantiate(cfg.model)
    size = complexity(net)  # before compiling: counted on the plain network
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    net = prepare_network(net, trainer_args.pop("channels_last"), trainer_args.pop("compile"))
    trainer_args["precision"] = resolve_precision(trainer_args["precision"], trainer_args["accelerator"])
    data = instantiate(cfg.data, seed=cfg.seed)
    module = Classifier(net, **cfg.optim)
    model, block = choices["model"], choices["model/block"]
    tags = {"model": model, "block": block, "backbone": type(net).__name__.lower(),
            "precision": trainer_args["precision"],
            "setup": model if block == model else f"{model}+{block}", "seed": str(cfg.seed)}
    name = f"{tags['setup']}-seed{cfg.seed}"
    trial = optuna_trial(cfg)
    prunable = trial is not None and len(trial.study.directions) == 1  # Optuna: one objective
    if trial:
        tags.update({"optuna.study_name": trial.study.study_name, "optuna.trial_number": str(trial.number)})
        if cfg.optuna.parent_run_id:
            tags["mlflow.parentRunId"] = cfg.optuna.parent_run_id  # nested under the study's run

    log.info("%s: CUDA_VISIBLE_DEVICES=%r", name, os.environ.get("CUDA_VISIBLE_DEVICES"))
    client, experiment_id = tracking.connect(cfg.logger)
    hash_ = tracking.config_hash(cfg)
    if not cfg.rerun and (done := tracking.finished_run(client, experiment_id, hash_)):
        log.info("%s: skipped, this config already FINISHED as run %s (rerun=true to train "
                 "again)", name, done.info.run_id)
        return Result("skipped", dict(done.data.metrics), done.info.run_id)

    checkpoints = Path(cfg.checkpoint_dir).expanduser().resolve() / hash_
    resume = None if cfg.rerun else tracking.resumable_run(client, checkpoints)
    last = checkpoints / "last.ckpt"
    # the epoch (0-based, = MLflow step) after the checkpointed one: where training picks up
    start = torch.load(last, weights_only=True)["epoch"] + 1 if resume and last.is_file() else None
    checkpoints.mkdir(parents=True, exist_ok=True)
    with tracking.mlflow_run(client, experiment_id, cfg, tags, size, resume) as run_id:
        (checkpoints / "run_id").write_text(run_id)
        if start is not None:
            log.info("%s: resuming run %s from its checkpoint: %d epochs done", name, run_id, start)
            tracking.retrying(client.set_tag, run_id, "resumed_from_epoch", str(start))
        tty = sys.stdout.isatty()  # a live bar on a terminal; else one log line per epoch
        # on SLURM, submitit requeues a preempted or timed-out job: Lightning must not as well
        slurm = {"plugins": [SLURMEnvironment(auto_requeue=False)]} if "SLURM_JOB_ID" in os.environ else {}
        trainer = instantiate(
            trainer_args, logger=tracking.MLflowLogger(client, run_id, resumed=bool(resume)),
            enable_progress_bar=tty,
            callbacks=[LastCheckpoint(checkpoints), *([RichProgressBar()] if tty else []),
                       *([OptunaPruning(trial)] if prunable else [])], **slurm)
        trainer.fit(module, datamodule=data, ckpt_path=last if start is not None else None,
                    weights_only=True)
        metrics = dict(trainer.callback_metrics)  # the last epoch's; test() replaces them
        trainer.test(module, datamodule=data, verbose=False, weights_only=True)
        metrics.update(trainer.callback_metrics)
    metrics = {k: float(v) for k, v in metrics.items() if k != "step"}
    log.info("%s: test/error %.2f%%", name, metrics["test/error"])
    return Result("finished", metrics, run_id)
