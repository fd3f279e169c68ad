"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher plus the grid summary.
Needs ``pip install -e ".[slurm]"``; without it this module defines nothing."""
from typing import Sequence

from hydra.core.utils import JobReturn

from hydra_plugins.hybrid_exp_launcher.summary import log_summary

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as Submitit
except ImportError:  # the [slurm] extra is not installed
    Submitit = None

if Submitit is not None:

    class SlurmLauncher(Submitit):
        """Submits the grid as a job array; waits, then logs the summary. A job preempted or
        timed out is requeued (``max_num_timeout`` times) and resumes from its checkpoint."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            jobs = super().launch(job_overrides, initial_job_idx)
            log_summary(jobs)
            return jobs
