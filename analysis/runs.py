"""Runs of an experiment from MLflow: one DataFrame row per run, then cleaned for statistics."""
from dataclasses import dataclass, field

import pandas as pd
from mlflow.tracking import MlflowClient

TAGS = ("setup", "model", "block", "backbone", "seed", "config_hash", "git_sha", "error")
KIND_TAG = "hybrid_exp.kind"  # 'analysis' on the runs this package logs; training runs lack it
# Params that say where or how a run was logged, or follow from the rest: never a setup's knob.
NOT_KNOBS = ("seed", "data.root", "data.download", "params", "mult_adds")


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
        for column in ("seed", "params", "mult_adds", "train_seconds"):
            frame[column] = pd.to_numeric(frame[column])
        frame["setup"] = frame.setup.fillna(frame.model)  # runs logged before the setup tag
    return frame


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
    """Keep one FINISHED run per (config, seed), the newest; label setups whose knobs vary."""
    done = (frame.status.eq("FINISHED") & frame.setup.notna()
            & (frame[metric].notna() if metric in frame else False))
    finished = frame[done].sort_values("start_time", ascending=False)
    newest = ~finished.duplicated(["config_hash", "seed"])
    kept = label_setups(finished[newest].sort_values(["setup", "seed"]))
    return Runs(kept.reset_index(drop=True), finished[~newest].reset_index(drop=True),
                frame[~done].reset_index(drop=True))


def label_setups(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of one setup tag with different knobs (a sweep over model.block.groups, say) become
    separate setups, labelled by what varies: ``grouped[groups=4]``."""
    frame = frame.copy()
    for setup, group in frame.groupby("setup"):
        knobs = pd.DataFrame([{k: v for k, v in c.items() if k not in NOT_KNOBS
                               and not k.startswith("logger.")} for c in group.config],
                             index=group.index)
        varying = [k for k in knobs if knobs[k].nunique(dropna=False) > 1]
        for i in group.index:
            if varying:
                frame.loc[i, "setup"] = setup + "[" + ",".join(
                    f"{k.rsplit('.', 1)[-1]}={knobs.loc[i, k]}" for k in varying) + "]"
    return frame
