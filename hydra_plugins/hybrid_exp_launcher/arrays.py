"""Fused seed arrays in a grid: jobs whose overrides differ only in ``seed=`` become one job with
``seed=[s1,s2,...]`` (trained as one network, hybrid_exp.fusion), and its result is split back
into one JobReturn per original job, so sweepers and the grid summary still see every config."""
import logging
from pathlib import Path
from typing import Callable, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig

from hybrid_exp.job import JobRecord, seed_of
from hybrid_exp.redact import redact_files
from hydra_plugins.hybrid_exp_launcher.done import finished_jobs
from hydra_plugins.hybrid_exp_launcher.summary import log_summary

log = logging.getLogger(__name__)


def group_seeds(job_overrides: Sequence[Sequence[str]], max_size: int) -> list[list[int]]:
    """Indices of the jobs that differ only in their seed, in groups of at most ``max_size``,
    in the grid's order; a job without an integer seed override is a group of its own."""
    groups: dict[tuple, list[list[int]]] = {}
    for i, overrides in enumerate(job_overrides):
        rest = tuple(sorted(o for o in overrides if not o.startswith("seed=")))
        key = rest if seed_of(overrides) is not None else ("job", i)
        chunks = groups.setdefault(key, [[]])
        if len(chunks[-1]) == max_size:
            chunks.append([])
        chunks[-1].append(i)
    return sorted((chunk for chunks in groups.values() for chunk in chunks), key=min)


def array_overrides(members: Sequence[Sequence[str]]) -> list[str]:
    """One job's overrides for ``members`` (overrides equal but for the seed)."""
    if len(members) == 1:
        return list(members[0])
    seeds = ",".join(seed_of(overrides) for overrides in members)
    return [o for o in members[0] if not o.startswith("seed=")] + [f"seed=[{seeds}]"]


def launch_arrays(launch: Callable[[list[list[str]], int], Sequence[JobReturn]],
                  job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                  max_size: int) -> list[JobReturn]:
    """``launch`` (a launcher's own: jobs, first index -> JobReturns) run on the arrays of
    ``job_overrides``; one JobReturn per config, in the grid's order."""
    groups = group_seeds(job_overrides, max_size)
    members = [[job_overrides[i] for i in group] for group in groups]
    jobs = launch([array_overrides(overrides) for overrides in members], initial_job_idx)
    ordered = [None] * len(job_overrides)
    for group, overrides, job in zip(groups, members, jobs):
        for i, member in zip(group, split(job, overrides)):
            ordered[i] = member
    return ordered


def launch_grid(config: DictConfig, hydra_context: HydraContext,
                launch: Callable[[list[list[str]], int], Sequence[JobReturn]],
                job_overrides: Sequence[Sequence[str]], initial_job_idx: int, max_size: int) -> list[JobReturn]:
    """What each of our launchers' ``launch`` does with its own ``launch`` (gpus: processes on
    GPU slots; slurm: submitit jobs): the sweep's saved config redacted, the configs that
    FINISHED before skipped without a job, the others run as fused arrays, and the summary."""
    redact_files(Path(config.hydra.sweep.dir))  # multirun.yaml, as the sweeper saved it
    jobs = finished_jobs(config, hydra_context, job_overrides, initial_job_idx)
    todo = [i for i in range(len(job_overrides)) if i not in jobs]
    if jobs:
        log.info("%d of %d configs FINISHED before: skipped without a job (rerun=true trains them "
                 "again)", len(jobs), len(job_overrides))
    if todo:
        launched = launch_arrays(launch, [job_overrides[i] for i in todo], initial_job_idx, max_size)
        jobs.update(zip(todo, launched))
    jobs = [jobs[i] for i in range(len(job_overrides))]
    log_summary(jobs)
    return jobs


def split(job: JobReturn, members: Sequence[Sequence[str]]) -> list[JobReturn]:
    """The JobReturn of each member of an array job, in order, each with its own overrides and
    its own outcome (the array's list of objectives is one value per member)."""
    if len(members) == 1:
        return [job]
    record = JobRecord.of(job)
    returns = []
    for i, overrides in enumerate(members):
        member = JobReturn(overrides=list(overrides), cfg=job.cfg, hydra_cfg=job.hydra_cfg,
                           working_dir=job.working_dir, task_name=job.task_name)
        if record is None or job.status != JobStatus.COMPLETED:  # the whole job failed
            member.status, member._return_value = JobStatus.FAILED, job._return_value
        elif record.runs[i].status == "failed":
            member.status, member._return_value = JobStatus.FAILED, RuntimeError(record.runs[i].error)
        else:
            member.status, member._return_value = JobStatus.COMPLETED, job.return_value[i]
        returns.append(member)
    return returns
