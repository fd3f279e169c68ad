"""The grid summary: finished / skipped / failed, one count per config, naming the failed ones."""
import logging
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus

from hybrid_exp.job import JobRecord, Result, seed_of
from hybrid_exp.redact import redact

log = logging.getLogger(__name__)


def recorded(job: JobReturn) -> tuple[JobRecord | None, Result | None]:
    """(the job's record, this config's Result in it): an array job's record holds one Result
    per seed, the job's ``seed=`` override picks it; (None, None) when the job left none."""
    record = JobRecord.of(job)
    return (record, record.run(seed_of(job.overrides or []))) if record else (None, None)


def outcome(job: JobReturn) -> tuple[str, str]:
    """('finished' | 'skipped' | 'pruned' | 'failed', reason) of one config's job."""
    _, result = recorded(job)
    if result:
        return result.status, result.error
    if job.status == JobStatus.COMPLETED:
        return "finished", ""
    return "failed", f"{type(job._return_value).__name__}: {job._return_value}"


def results_table(jobs: Sequence[JobReturn]) -> list[str]:
    """A line per config that finished or was skipped: setup, seed, test error, job minutes, and
    the objective the job returned where it is another metric (a sweep's val/error: as its trial
    and best lines say it)."""
    rows = []
    for job in jobs:
        record, result = recorded(job)
        if result and result.status in ("finished", "skipped") and "test/error" in result.metrics:
            minutes = f"{record.seconds / 60:.1f}" if result.status == "finished" and record.seconds else "-"
            objective = job.cfg.get("objective") if job.cfg is not None else None
            value = result.metrics.get(objective) if isinstance(objective, str) and objective != "test/error" else None
            rows.append((record.setup, str(result.seed), f"{result.metrics['test/error']:.2f}", minutes,
                         result.status, objective if value is not None else None,
                         f"{value:.4g}" if value is not None else ""))
    if not rows:
        return []
    width = max(len(r[0]) for r in rows) + 2
    named = sorted({r[5] for r in rows if r[5]})
    extra = f"{named[0]:>12}" if len(named) == 1 else ""  # one objective, one column
    return ([f"  {'setup':<{width}}{'seed':>5}{'test/error %':>14}{'minutes':>9}{extra}"]
            + [f"  {s:<{width}}{seed:>5}{error:>14}{minutes:>9}" + (f"{value or '-':>12}" if extra else "")
               + ("  (skipped: done before)" if kind == "skipped" else "")
               for s, seed, error, minutes, kind, _, value in sorted(rows)])


def where_to_look(jobs: Sequence[JobReturn]) -> list[str]:
    """The MLflow UI's training view of the grid's experiment, and the analysis command."""
    cfg = next((job.cfg for job in jobs if job.cfg is not None and "logger" in job.cfg), None)
    if cfg is None:
        return []
    from hybrid_exp.store import Client, resolve_tracking_uri  # MLflow: loaded when a grid ends

    uri, name = resolve_tracking_uri(cfg.logger.tracking_uri)[0], cfg.logger.experiment_name
    try:
        found = Client(uri).get_experiment_by_name(name)
    except Exception:  # a store that is gone: the summary still says what it knows
        found = None
    if found is None:
        return []
    view = f"#/experiments/{found.experiment_id}?workflowType=machine_learning"
    ui = (f"{redact(uri).rstrip('/')}/{view}" if uri.startswith("http") else
          f"mlflow ui --backend-store-uri {redact(uri)}, then http://127.0.0.1:5000/{view}")
    store = "" if uri.endswith("/mlflow.db") and Path(uri.removeprefix("sqlite:///")) == Path("mlflow.db").resolve() \
        else f" --tracking-uri {redact(uri)}"
    return [f"  MLflow: {ui}", f"  Analysis: python -m analysis --experiment {name}{store}"]


def requeued(jobs: Sequence[JobReturn]) -> list[str]:
    """A line per SLURM job that was requeued (preempted, or out of time) before it ended."""
    counts = {}
    for job in jobs:
        record, _ = recorded(job)
        if record and record.requeues:
            counts[job.hydra_cfg.hydra.runtime.output_dir] = (record.setup, record.requeues)
    return [f"  {setup}: requeued {n} time{'s' * (n != 1)} by SLURM (preempted or out of time), "
            f"resumed from its checkpoint each time" for setup, n in counts.values()]


def log_summary(jobs: Sequence[JobReturn]) -> dict[str, int]:
    outcomes = [outcome(job) for job in jobs]
    kinds = ("finished", "skipped", "pruned", "failed")
    counts = {kind: sum(o == kind for o, _ in outcomes) for kind in kinds}
    log.info("Grid summary: %d finished, %d skipped, %s%d failed (of %d configs)", counts["finished"],
             counts["skipped"], f"{counts['pruned']} pruned, " if counts["pruned"] else "",
             counts["failed"], len(jobs))
    lines = results_table(jobs) + requeued(jobs) + where_to_look(jobs)
    if lines:
        log.info("\n".join(lines))
    for job, (kind, reason) in zip(jobs, outcomes):
        if kind == "failed":
            log.error("  FAILED %s: %s", redact(" ".join(job.overrides or [])), redact(reason))
    return counts
