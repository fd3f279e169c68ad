"""Configs a grid need not launch: those with a FINISHED run in the experiment (on the same data)
are decided here, in the launcher's process, before any job starts. A relaunch of a finished
grid then starts no process and claims no slot; its summary reads as if each job had skipped."""
from pathlib import Path
from typing import Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hybrid_exp.job import JobRecord, Result, objective, seed_of


def finished_jobs(config: DictConfig, hydra_context: HydraContext, job_overrides: Sequence[Sequence[str]],
                  initial_job_idx: int) -> dict[int, JobReturn]:
    """{position in ``job_overrides``: the JobReturn of a skipped job} for every job of one seed
    whose config already FINISHED (none with ``rerun=true``)."""
    from hybrid_exp.members import setup_name  # the training side, loaded when a grid starts
    from hybrid_exp.registry import build
    from hybrid_exp.tracking import Experiment

    found, fingerprints, experiments = {}, {}, {}
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
            if not {"data", "logger"} <= set(cfg):  # not hybrid-exp's config
                continue
            data = OmegaConf.to_yaml(cfg.data, resolve=True)
            if data not in fingerprints:
                fingerprints[data] = build(cfg, "data").data_fingerprint()
            store = OmegaConf.to_yaml(cfg.logger, resolve=True)
            if store not in experiments:
                experiments[store] = Experiment.open(cfg.logger)
            run = experiments[store].finished(cfg, fingerprints[data])
            if run is None:
                continue
            output_dir = Path(sweep.hydra.sweep.dir) / f"skipped-{initial_job_idx + i}"  # no job's number
            output_dir.mkdir(parents=True, exist_ok=True)
            metrics = dict(run.data.metrics)
            JobRecord(setup_name(cfg), [Result(cfg.seed, "skipped", metrics, run.info.run_id)]).write(output_dir)
            with read_write(sweep.hydra.runtime):
                sweep.hydra.runtime.output_dir = str(output_dir)
            found[i] = JobReturn(overrides=list(overrides), cfg=cfg, hydra_cfg=sweep, working_dir=str(output_dir),
                                 task_name=sweep.hydra.job.name, status=JobStatus.COMPLETED,
                                 _return_value=objective(cfg, metrics))
    finally:
        if launching is not None:
            HydraConfig.instance().set_config(launching)
    return found
