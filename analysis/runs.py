"""Runs of an experiment from MLflow: one DataFrame row per run, then cleaned for statistics."""
from dataclasses import dataclass, field

import tempfile

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

# The run schema training writes (hybrid_exp.tracking.run_schema and the run's tags): a run's
# identity is its config_hash; its setup (the same config over seeds) its setup_hash; what it is
# compared under its protocol (data, optimiser, epochs, precision, device) and protocol_hash.
TAGS = ("setup", "model", "block", "backbone", "seed", "precision", "config_hash", "setup_hash",
        "protocol", "protocol_hash", "git_sha", "error")
KIND_TAG = "hybrid_exp.kind"  # 'analysis' on the runs this package logs; training runs lack it
UNKNOWN_PROTOCOL = "unknown (logged before runs recorded their protocol)"
PREDICTIONS = "test_predictions.npz"  # per-image evidence every run logs


class AnalysisError(ValueError):
    """Input the analysis cannot work with; the message says what is there instead."""


def client_and_experiment(experiment: str, tracking_uri: str) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no experiment '{experiment}' in {tracking_uri}; "
                            f"existing: {', '.join(names) or 'none'}")
    return client, found.experiment_id


def load_runs(experiment: str, tracking_uri: str = "sqlite:///mlflow.db") -> pd.DataFrame:
    """One row per training run: run_id, run_name, status, start_time, train_seconds, the tags
    above, ``params`` and ``mult_adds``, the final value of every metric (``test/error``, ...),
    and ``config``, the run's logged params as a dict."""
    client, experiment_id = client_and_experiment(experiment, tracking_uri)
    runs, token = [], None
    while True:  # every page
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += [r for r in page if KIND_TAG not in r.data.tags]
        if not (token := page.token):
            break
    rows = [{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
             "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
             "train_seconds": (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else None,
             **{t: r.data.tags.get(t) for t in TAGS},
             **{p: r.data.params.get(p) for p in ("params", "mult_adds")},
             **r.data.metrics, "config": dict(r.data.params)} for r in runs]
    frame = pd.DataFrame(rows)
    if not frame.empty:
        for column in ("params", "mult_adds", "train_seconds"):
            frame[column] = pd.to_numeric(frame[column])
        frame["seed"] = pd.to_numeric(frame.seed, errors="coerce")
        frame["setup"] = frame.setup.fillna(frame.model)  # runs logged before the setup tag
        # runs logged before the schema tags: one setup per tag, an unknown protocol
        frame["setup_hash"] = frame.setup_hash.fillna("setup:" + frame.setup.astype(str))
        frame["protocol"] = frame.protocol.fillna(UNKNOWN_PROTOCOL)
        frame["protocol_hash"] = frame.protocol_hash.fillna("unknown")
    return frame


def load_predictions(tracking_uri: str, run_ids) -> dict[str, dict[str, np.ndarray]]:
    """Each run's ``test_predictions.npz`` (indices, labels, predicted), where it has one."""
    client, found = MlflowClient(tracking_uri), {}
    with tempfile.TemporaryDirectory() as folder:
        for run_id in run_ids:
            if PREDICTIONS not in {a.path for a in client.list_artifacts(run_id)}:
                continue
            with np.load(client.download_artifacts(run_id, PREDICTIONS, folder)) as saved:
                found[run_id] = {k: saved[k] for k in ("indices", "labels", "predicted") if k in saved}
    return found


def load_history(tracking_uri: str, run_ids, metric: str = "val/error") -> pd.DataFrame:
    """Per-epoch values of ``metric`` (MLflow step = epoch): columns run_id, epoch, value."""
    client = MlflowClient(tracking_uri)
    rows = [{"run_id": run_id, "epoch": m.step, "value": m.value}
            for run_id in run_ids for m in client.get_metric_history(run_id, metric)]
    return pd.DataFrame(rows, columns=["run_id", "epoch", "value"])


@dataclass
class Runs:
    """The runs that count (``finished``) and those set aside, with why."""

    finished: pd.DataFrame
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # older reruns, dropped
    not_finished: pd.DataFrame = field(default_factory=pd.DataFrame)  # FAILED, KILLED, RUNNING


def clean(frame: pd.DataFrame, metric: str = "test/error") -> Runs:
    """Keep one FINISHED run per config (its hash: seed included), the newest; label setups
    whose configs differ."""
    done = (frame.status.eq("FINISHED") & frame.setup.notna() & frame.seed.notna()
            & (frame[metric].notna() if metric in frame else False))
    finished = frame[done].sort_values("start_time", ascending=False)
    newest = ~finished.duplicated(["config_hash", "seed"])
    kept = label_setups(finished[newest].sort_values(["setup", "seed"]))
    return Runs(kept.reset_index(drop=True), finished[~newest].reset_index(drop=True),
                frame[~done].reset_index(drop=True))


def label_setups(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of one setup tag that are different setups (their ``setup_hash`` differs: a sweep
    over model.block.groups, say) are told apart by the params that differ between them and are
    constant within each: ``grouped[groups=4]``. Runs of one setup_hash stay one setup, whatever
    else (paths, execution switches) they logged."""
    frame = frame.copy()
    for setup, group in frame.groupby("setup"):
        if group.setup_hash.nunique() < 2:
            continue
        params = pd.DataFrame(list(group.config), index=group.index).astype(str)
        within = params.groupby(group.setup_hash).nunique().max() <= 1  # constant in each setup
        knobs = [k for k in params if within[k] and params[k].nunique() > 1]
        for i in group.index:
            frame.loc[i, "setup"] = setup + "[" + ",".join(
                f"{k.rsplit('.', 1)[-1]}={params.loc[i, k]}" for k in knobs) + "]"
    return frame
