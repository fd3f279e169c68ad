"""``python -m hybrid_exp [overrides]`` trains once; ``-m`` launches a grid (Hydra multirun)."""
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hydra_plugins.hybrid_exp_launcher import register
from hydra_plugins.hybrid_exp_launcher.summary import STATUS_FILE  # read by the grid summary


def config_dir() -> str:
    """conf/ of a source checkout, else the copy a wheel installs as hybrid_exp/conf."""
    source = Path(__file__).resolve().parent.parent / "conf"
    return str(source if source.is_dir() else Path(__file__).resolve().parent / "conf")


def task(cfg: DictConfig) -> float | list[float]:
    """One job: train (or skip, or resume); record the outcome beside the job's outputs.

    Returns the objective, ``cfg.objective`` (a metric, or a list of them for several
    objectives; ``test/error`` stands in for ``val/error`` when there is no validation split)."""
    from hybrid_exp.train import train  # imported late: `--help` and config errors stay fast

    status = Path(HydraConfig.get().runtime.output_dir) / STATUS_FILE
    try:
        result = train(cfg)
    except Exception as e:
        import optuna  # already loaded by train
        pruned = isinstance(e, optuna.TrialPruned)
        status.write_text(json.dumps({"status": "pruned" if pruned else "failed",
                                      "error": f"{type(e).__name__}: {e}"}))
        raise
    status.write_text(json.dumps({"status": result.status, "run_id": result.run_id,
                                  "metrics": result.metrics}))
    value = lambda key: result.metrics.get(key, result.metrics["test/error"])
    return value(cfg.objective) if isinstance(cfg.objective, str) else [value(k) for k in cfg.objective]


register()
main = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(task)
