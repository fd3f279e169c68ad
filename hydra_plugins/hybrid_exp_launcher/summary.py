"""The grid summary: finished / skipped / failed, one count per config, naming the failed ones."""
import json
import logging
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus

from hybrid_exp.redact import redact

log = logging.getLogger(__name__)
STATUS_FILE = "job_status.json"  # written by hybrid_exp.cli.task into each job's output dir


def outcome(job: JobReturn) -> tuple[str, str]:
    """('finished' | 'skipped' | 'pruned' | 'failed', reason) of one config's job (an array job's
    status file holds one entry per seed: the job's ``seed=`` override picks it)."""
    output_dir = job.hydra_cfg.hydra.runtime.output_dir if job.hydra_cfg else None
    status = Path(output_dir or "/nonexistent") / STATUS_FILE
    if status.is_file():
        recorded = json.loads(status.read_text())
        if "runs" in recorded:
            seed = next((o.removeprefix("seed=") for o in job.overrides or [] if o.startswith("seed=")), None)
            recorded = next((r for r in recorded["runs"] if str(r["seed"]) == seed), recorded["runs"][0])
        return recorded["status"], recorded.get("error", "")
    if job.status == JobStatus.COMPLETED:
        return "finished", ""
    return "failed", f"{type(job._return_value).__name__}: {job._return_value}"


def log_summary(jobs: Sequence[JobReturn]) -> dict[str, int]:
    outcomes = [outcome(job) for job in jobs]
    kinds = ("finished", "skipped", "pruned", "failed")
    counts = {kind: sum(o == kind for o, _ in outcomes) for kind in kinds}
    log.info("Grid summary: %d finished, %d skipped, %s%d failed (of %d configs)", counts["finished"],
             counts["skipped"], f"{counts['pruned']} pruned, " if counts["pruned"] else "",
             counts["failed"], len(jobs))
    for job, (kind, reason) in zip(jobs, outcomes):
        if kind == "failed":
            log.error("  FAILED %s: %s", redact(" ".join(job.overrides or [])), redact(reason))
    return counts
