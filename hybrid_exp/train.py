"""One training run: build everything from the config, fit, test, record in MLflow."""
import logging
import sys

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.loggers import MLFlowLogger

from hybrid_exp.module import Classifier, complexity
from hybrid_exp.seeding import derive_seed
from hybrid_exp.tracking import mlflow_run

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train ``cfg`` (composed by Hydra) and return its final metrics (errors in %).

    Names come from Hydra's choices: ``model`` (the preset) and ``block`` (``model/block``); the
    ``setup`` is the model's name, or ``<model>+<block>`` when the unit is not its namesake.
    """
    choices = HydraConfig.get().runtime.choices
    # Initial weights draw from (trial seed, model config): variants never share them, and
    # equal model configs reproduce them (the data streams derive from the seed alone).
    torch.manual_seed(derive_seed(cfg.seed, "init", OmegaConf.to_yaml(cfg.model, resolve=True)))
    net = instantiate(cfg.model)
    data = instantiate(cfg.data, seed=cfg.seed)
    module = Classifier(net, **cfg.optim)
    model, block = choices["model"], choices["model/block"]
    tags = {"model": model, "block": block, "backbone": type(net).__name__.lower(),
            "setup": model if block == model else f"{model}+{block}", "seed": str(cfg.seed)}

    with mlflow_run(cfg, tags, complexity(net)) as (client, run_id):
        tty = sys.stdout.isatty()  # a live bar on a terminal; else one log line per epoch
        trainer = instantiate(
            cfg.trainer, logger=MLFlowLogger(tracking_uri=client.tracking_uri, run_id=run_id),
            callbacks=[RichProgressBar()] if tty else [], enable_progress_bar=tty)
        trainer.fit(module, datamodule=data)
        metrics = dict(trainer.callback_metrics)  # the last epoch's; test() replaces them
        trainer.test(module, datamodule=data, verbose=False)
        metrics.update(trainer.callback_metrics)
    metrics = {k: float(v) for k, v in metrics.items() if k != "step"}
    log.info("%s-seed%s: test/error %.2f%%", tags["setup"], cfg.seed, metrics["test/error"])
    return metrics
