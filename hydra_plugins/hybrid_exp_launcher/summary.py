"""The grid summary: finished / skipped / failed, one count per config, naming the failed ones."""
import json
import logging
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus

from hybrid_exp.redact import redact

log = logging.getLogger(__name__)
STATUS_FILE = "job_status.json"  # written by hybrid_exp.cli.task into each job's output dir


def status_file(job: JobReturn) -> dict:
    """What the job's task recorded (``job_status.json`` in its output folder), {} if nothing."""
    output_dir = job.hydra_cfg.hydra.runtime.output_dir if job.hydra_cfg else None
    status = Path(output_dir or "/nonexistent") / STATUS_FILE
    return json.loads(status.read_text()) if status.is_file() else {}


def recorded(job: JobReturn) -> tuple[dict, dict]:
    """(the job's status file, this config's entry in it): an array job's file holds one entry
    per seed, the job's ``seed=`` override picks it; ({}, {}) when there is none."""
    whole = status_file(job)
    if not whole:
        return {}, {}
    if "runs" not in whole:
        return whole, whole
    seed = next((o.removeprefix("seed=") for o in job.overrides or [] if o.startswith("seed=")), None)
    return whole, next((r for r in whole["runs"] if str(r["seed"]) == seed), whole["runs"][0])


def outcome(job: JobReturn) -> tuple[str, str]:
    """('finished' | 'skipped' | 'pruned' | 'failed', reason) of one config's job."""
    _, entry = recorded(job)
    if entry:
        return entry["status"], entry.get("error", "")
    if job.status == JobStatus.COMPLETED:
        return "finished", ""
    return "failed", f"{type(job._return_value).__name__}: {job._return_value}"


def results_table(jobs: Sequence[JobReturn]) -> list[str]:
    """A line per config that finished or was skipped: setup, seed, test error, job minutes."""
    rows = []
    for job in jobs:
        whole, entry = recorded(job)
        if entry.get("status") in ("finished", "skipped") and "test/error" in entry.get("metrics", {}):
            minutes = f"{whole['seconds'] / 60:.1f}" if entry["status"] == "finished" and "seconds" in whole else "-"
            rows.append((whole.get("setup", "?"), str(entry["seed"]), f"{entry['metrics']['test/error']:.2f}",
                         minutes, entry["status"]))
    if not rows:
        return []
    width = max(len(r[0]) for r in rows) + 2
    return ([f"  {'setup':<{width}}{'seed':>5}{'test/error %':>14}{'minutes':>9}"]
            + [f"  {s:<{width}}{seed:>5}{error:>14}{minutes:>9}" + ("  (skipped: done before)" if kind == "skipped" else "")
               for s, seed, error, minutes, kind in sorted(rows)])


def where_to_look(jobs: Sequence[JobReturn]) -> list[str]:
    """The MLflow UI's training view of the grid's experiment, and the analysis command."""
    cfg = next((job.cfg for job in jobs if job.cfg is not None and "logger" in job.cfg), None)
    if cfg is None:
        return []
    from hybrid_exp.store import Client

    from hybrid_exp.tracking import resolve_tracking_uri

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
        whole, _ = recorded(job)
        if whole.get("requeues"):
            counts[job.hydra_cfg.hydra.runtime.output_dir] = (whole.get("setup", "?"), whole["requeues"])
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
