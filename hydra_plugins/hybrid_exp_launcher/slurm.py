"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher plus the grid summary.
Needs ``pip install -e ".[slurm]"``; without it this module defines nothing."""
from dataclasses import dataclass
from typing import Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn

from hydra_plugins.hybrid_exp_launcher.arrays import launch_grid

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as Submitit
except ImportError:  # the [slurm] extra is not installed
    Submitit = None

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
            return launch_grid(self.config, super().launch, job_overrides, initial_job_idx, self.array_size)
