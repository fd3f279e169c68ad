"""Configs a grid need not launch: those with a FINISHED run in the experiment (on the same data)
are decided here, in the launcher's process, before any job starts. A relaunch of a finished
grid then starts no process and claims no slot; its summary reads as if each job had skipped."""
import json
from pathlib import Path
from typing import Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.hybrid_exp_launcher.arrays import seed_of
from hydra_plugins.hybrid_exp_launcher.summary import STATUS_FILE


def finished_jobs(config: DictConfig, hydra_context: HydraContext, job_overrides: Sequence[Sequence[str]],
                  initial_job_idx: int) -> dict[int, JobReturn]:
    """{position in ``job_overrides``: the JobReturn of a skipped job} for every job of one seed
    whose config already FINISHED (none with ``rerun=true``)."""
    from hybrid_exp import tracking
    from hybrid_exp.cli import objective
    from hybrid_exp.members import setup_name
    from hybrid_exp.registry import build

    found, fingerprints, stores = {}, {}, {}
    launching = HydraConfig.instance().cfg
    try:
        for i, overrides in enumerate(job_overrides):
            if seed_of(overrides) is None:
                continue
            sweep = hydra_context.config_loader.load_sweep_config(config, list(overrides))
            with open_dict(sweep):
                sweep.hydra.job.num = initial_job_idx + i
            HydraConfig.instance().set_config(sweep)  # what the job's interpolations read
            cfg = OmegaConf.masked_copy(sweep, [k for k in sweep if k != "hydra"])
            if cfg.get("rerun") or not {"data", "logger"} <= set(cfg):  # rerun, or not hybrid-exp's
                continue
            data = OmegaConf.to_yaml(cfg.data, resolve=True)
            if data not in fingerprints:
                fingerprints[data] = build(cfg, "data").data_fingerprint()
            store = OmegaConf.to_yaml(cfg.logger, resolve=True)
            if store not in stores:
                stores[store] = tracking.connect(cfg.logger)
            run = tracking.finished_run(*stores[store], tracking.config_hash(cfg), fingerprints[data])
            if run is None:
                continue
            output_dir = Path(sweep.hydra.sweep.dir) / f"skipped-{initial_job_idx + i}"  # no job's number
            output_dir.mkdir(parents=True, exist_ok=True)
            metrics = dict(run.data.metrics)
            (output_dir / STATUS_FILE).write_text(json.dumps({"setup": setup_name(cfg), "runs": [
                {"seed": cfg.seed, "status": "skipped", "run_id": run.info.run_id, "metrics": metrics,
                 "error": ""}]}))
            with read_write(sweep.hydra.runtime):
                sweep.hydra.runtime.output_dir = str(output_dir)
            found[i] = JobReturn(overrides=list(overrides), cfg=cfg, hydra_cfg=sweep, working_dir=str(output_dir),
                                 task_name=sweep.hydra.job.name, status=JobStatus.COMPLETED,
                                 _return_value=objective(cfg, metrics))
    finally:
        if launching is not None:
            HydraConfig.instance().set_config(launching)
    return found
