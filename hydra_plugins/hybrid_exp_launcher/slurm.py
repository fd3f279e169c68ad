"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher plus the grid summary.
Needs ``pip install -e ".[slurm]"``; without it this module defines nothing."""
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hybrid_exp.errors import EndedWithoutResult
from hybrid_exp.redact import CREDENTIALS, hide_in_environment
from hydra_plugins.hybrid_exp_launcher.arrays import launch_grid

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as Submitit
except ImportError:  # the [slurm] extra is not installed
    Submitit = None


def hide_credentials(config: DictConfig, overrides: bool = False, path: str = "") -> None:
    """Every URL password in ``config``'s strings (as written, unresolved) moved into the
    environment, in place (hybrid_exp.redact.hide_in_environment): the config resolves as before.
    The lists under ``hydra.overrides`` hold overrides, with Hydra's escapes."""
    written = OmegaConf.to_container(config, resolve=False)
    for key, value in (enumerate(written) if OmegaConf.is_list(config) else written.items()):
        if OmegaConf.is_missing(config, key):
            continue
        inner = f"{path}.{key}".lstrip(".")
        if isinstance(value, (dict, list)) and not OmegaConf.is_interpolation(config, key):
            hide_credentials(config[key], overrides or inner == "hydra.overrides", inner)
        elif isinstance(value, str) and CREDENTIALS.search(value):
            with read_write(config), open_dict(config):
                config[key] = hide_in_environment(value, override=overrides)


if Submitit is not None:

    @dataclass
    class SlurmArraysConf(SlurmQueueConf):
        """submitit's SLURM settings, plus how seeds fuse into arrays (conf/hydra/launcher/slurm.yaml)."""
        _target_: str = "hydra_plugins.hybrid_exp_launcher.slurm.SlurmLauncher"
        fuse_seeds: bool = True
        max_array_size: int = 10

    ConfigStore.instance().store(group="hydra/launcher", name="submitit_slurm_arrays",
                                 node=SlurmArraysConf, provider="hybrid_exp")

    class SlurmLauncher(Submitit):
        """Submits the grid as a job array, each job a fused array of seeds (``fuse_seeds``,
        ``max_array_size``: as the gpus launcher); waits, then logs the summary. A job preempted
        or timed out is requeued (``max_num_timeout`` times) and resumes from its checkpoint."""

        def __init__(self, fuse_seeds: bool = True, max_array_size: int = 10, **params):
            super().__init__(**params)
            self.array_size = max_array_size if fuse_seeds else 1

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            return launch_grid(self.config, self.hydra_context, self.submit, job_overrides, initial_job_idx, self.array_size)

        def submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
            """hydra-submitit-launcher's ``launch``, but for two things it does not do: what it
            pickles for the jobs (``.submitit/``: this launcher, its config, Hydra's state, the
            overrides) holds no password, the jobs get them through the environment; and a job
            that ends without a result (cancelled, out of memory, out of requeues) is one failed
            job in the summary, not the end of the grid."""
            import submitit

            hide_credentials(self.config)
            if HydraConfig.initialized():  # pickled too, with Hydra's state
                hide_credentials(HydraConfig.instance().cfg)
            job_overrides = [[hide_in_environment(o, override=True) for o in job] for job in job_overrides]
            executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                             slurm_max_num_timeout=self.params["max_num_timeout"])
            queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{key if key in queue_keys else f"slurm_{key}": value
                                          for key, value in self.params.items()
                                          if key not in ("submitit_folder", "max_num_timeout")})
            Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
            numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
            jobs = executor.map_array(self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(numbers),
                                      list(numbers), [f"job_id_for_{n}" for n in numbers],
                                      [Singleton.get_state()] * len(numbers))
            return [result(job, overrides) for job, overrides in zip(jobs, job_overrides)]

    def result(job, overrides: Sequence[str]) -> JobReturn:
        """The job's JobReturn, or a failed one saying how the job ended when it left none."""
        from submitit.core.utils import UncompletedJobError

        try:
            return job.results()[0]
        except UncompletedJobError as e:  # includes FailedJobError: SLURM ended it, not Python
            ended = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            last = next((line for line in reversed(str(e).splitlines()) if line.strip()), "")
            state = job.state.split(" by ")[0]  # "CANCELLED by 0": the uid that cancelled it
            ended._return_value = EndedWithoutResult(f"SLURM job {job.job_id} ended {state} without a result "
                                                     f"({last.strip()[:300]}); its log: {job.paths.stderr}")
            return ended
