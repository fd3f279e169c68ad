"""python -m hybrid_exp.copy_runs --from sqlite:///mlflow.db --to http://127.0.0.1:5000

Copies runs from one tracking store into another (typically a laptop's SQLite store onto the
lab's server): params, tags, every metric's full history, status, start and end times, and
artifacts. Nested runs (an Optuna study and its trials) stay nested. The source is only read.
Rerunning copies only what is not there yet: each copy carries the tag ``hybrid_exp.copied_from``
(set last, so a copy cut off halfway is deleted and redone rather than kept half-full).
Runs keep their ``config_hash`` tag, so a grid launched against the server skips finished ones.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid_exp.errors import TrackingUnavailable, UserError, reported
from hybrid_exp.redact import redact

# mlflow and the platform's tracking module are imported where used: --help answers at once
if TYPE_CHECKING:
    from hybrid_exp.store import Client

COPIED_FROM = "hybrid_exp.copied_from"
PARENT = "mlflow.parentRunId"
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def open_store(uri: str) -> Client:
    from hybrid_exp.store import Client, check_server, resolve_tracking_uri

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).expanduser().is_file():
        raise TrackingUnavailable(f"no SQLite store at {uri}: give the file a grid logged to")
    uri, _ = resolve_tracking_uri(uri)
    check_server(uri)
    return Client(uri)


def copy_run(source: Client, target: Client, run, experiment_id: str,
             new_ids: dict[str, str]) -> str:
    """Copy one run; returns the new run's id."""
    from mlflow.entities import Metric, Param, RunTag

    tags = dict(run.data.tags)
    if PARENT in tags:  # point at the parent's copy
        tags[PARENT] = new_ids.get(tags[PARENT], tags[PARENT])
    new = target.create_run(experiment_id, start_time=run.info.start_time, tags=tags,
                            run_name=run.info.run_name).info.run_id
    try:
        params = [Param(k, v) for k, v in run.data.params.items()]
        for i in range(0, len(params), 100):  # MLflow's per-request limits
            target.log_batch(new, params=params[i:i + 100])
        metrics = [Metric(m.key, m.value, m.timestamp, m.step)
                   for key in run.data.metrics for m in source.get_metric_history(run.info.run_id, key)]
        for i in range(0, len(metrics), 1000):
            target.log_batch(new, metrics=metrics[i:i + 1000])
        if source.list_artifacts(run.info.run_id):
            with tempfile.TemporaryDirectory() as tmp:
                target.log_artifacts(new, source.download_artifacts(run.info.run_id, "", tmp))
        target.log_batch(new, tags=[RunTag(COPIED_FROM, run.info.run_id)])
        if run.info.status in TERMINAL:
            target.set_terminated(new, run.info.status, end_time=run.info.end_time)
    except BaseException:
        target.delete_run(new)
        raise
    return new


def copy_runs(source_uri: str, target_uri: str, experiments: list[str] | None = None) -> int:
    """Copy every run of ``experiments`` (default: all) not yet in the target; returns how many."""
    from hybrid_exp import store

    source, target = open_store(source_uri), open_store(target_uri)
    names = experiments or [e.name for e in source.search_experiments()]
    copied = 0
    for name in names:
        found = store.get_experiment(source, name)
        if found is None:
            raise UserError(f"no experiment '{name}' in {redact(source_uri)}")
        runs = source.all_runs(found.experiment_id)
        if not runs:
            continue
        experiment_id = store.experiment_id(target, name)
        new_ids = {r.data.tags[COPIED_FROM]: r.info.run_id
                   for r in target.all_runs(experiment_id, f"tags.`{COPIED_FROM}` != ''")}
        for run in sorted(runs, key=lambda r: PARENT in r.data.tags):  # parents first
            if run.info.run_id not in new_ids:
                new_ids[run.info.run_id] = copy_run(source, target, run, experiment_id, new_ids)
                copied += 1
        print(f"{name}: {len(runs)} runs in the source, all now in {redact(target_uri)}")
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybrid_exp.copy_runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", default="sqlite:///mlflow.db",
                        help="source tracking URI (default: %(default)s)")
    parser.add_argument("--to", dest="target", required=True, help="target tracking URI")
    parser.add_argument("--experiment", action="append",
                        help="experiment name; repeat for several (default: all)")
    args = parser.parse_args(argv)
    from hybrid_exp import process

    process.setup()
    with reported():
        copied = copy_runs(args.source, args.target, args.experiment)
    print(f"copied {copied} runs")


if __name__ == "__main__":
    main()
