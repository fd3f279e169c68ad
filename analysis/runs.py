"""Runs of an experiment from MLflow: one DataFrame row per run, then cleaned for statistics."""
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# The run schema training writes (hybrid_exp.schema: the analysis imports nothing else of the
# training side but the store, hybrid_exp.store, and the errors): a run's identity is its
# config_hash; its setup (the same config over seeds) its setup_hash; what it is compared under
# its protocol (data, optimiser, epochs, precision, device) and protocol_hash; the pixels it saw
# its data_fingerprint.
from hybrid_exp.errors import AnalysisError
from hybrid_exp.redact import redact
from hybrid_exp.schema import TAGS, hashed, protocol_text, short_hash
from hybrid_exp.store import Client, shared_client

KIND_TAG = "hybrid_exp.kind"  # 'analysis' on the runs this package logs; training runs lack it
PREDICTIONS = "test_predictions.npz"  # per-image evidence every run logs
SIZE_PARAMS = ("params", "mult_adds")  # counted from the network, logged beside the config


def client_and_experiment(experiment: str, tracking_uri: str) -> tuple[Client, str]:
    client = shared_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no experiment '{experiment}' in {redact(tracking_uri)}; "
                            f"existing: {', '.join(names) or 'none'}")
    return client, found.experiment_id


def load_runs(experiment: str, tracking_uri: str = "sqlite:///mlflow.db") -> pd.DataFrame:
    """One row per training run: run_id, run_name, status, start_time, train_seconds, the tags
    of the run schema (rebuilt from the params where a run lacks them: ``rebuild_identity``),
    ``params`` and ``mult_adds``, the final value of every metric (``test/error``, ...), and
    ``config``, the run's logged params as a dict."""
    return prepare(fetch_runs(experiment, tracking_uri))


def fetch_runs(experiment: str, tracking_uri: str) -> pd.DataFrame:
    """The training runs of ``experiment`` as MLflow holds them (``load_runs`` before
    ``prepare``: what a results bundle stores)."""
    client, experiment_id = client_and_experiment(experiment, tracking_uri)
    runs = [r for r in client.all_runs(experiment_id) if KIND_TAG not in r.data.tags]
    rows = [{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
             "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
             "train_seconds": (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else None,
             **{t: r.data.tags.get(t) for t in TAGS},
             **{p: r.data.params.get(p) for p in SIZE_PARAMS},
             **r.data.metrics, "config": dict(r.data.params)} for r in runs]
    return pd.DataFrame(rows)


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as numbers, and every run's identity (``rebuild_identity``)."""
    if not frame.empty:
        for column in ("params", "mult_adds", "train_seconds"):
            frame[column] = pd.to_numeric(frame[column])
        frame["seed"] = pd.to_numeric(frame.seed, errors="coerce")
        frame = frame.apply(rebuild_identity, axis=1)
    return frame


def rebuild_identity(run: pd.Series) -> pd.Series:
    """A run logged before the schema tags (an older version, runs copied in) gets them back
    from its params: its protocol from the protocol keys (with the precision it ran in, where
    tagged), its setup and config from every param that is part of what it trains. Runs of
    different setups or epochs are then never merged or paired. Then the data it saw joins its
    protocol: runs of one config on other pixels (official files, a JPEG copy) are apart."""
    run = run.copy()
    config = {k: v for k, v in run.config.items() if k not in SIZE_PARAMS}
    if pd.isna(run.setup):  # runs logged before the setup tag
        run["setup"] = run.model
    if pd.isna(run.seed) and "seed" in config:
        run["seed"] = pd.to_numeric(config["seed"], errors="coerce")
    if pd.isna(run.protocol) and config:
        flat = {**config, **({"trainer.precision": run.precision} if isinstance(run.precision, str) else {})}
        run["protocol"] = protocol_text(flat) or "no protocol keys logged"
        run["protocol_hash"] = short_hash(run.protocol)
    trained = sorted((k, v) for k, v in config.items() if hashed(k) and k != "seed")
    if pd.isna(run.setup_hash) and trained:
        run["setup_hash"] = "params:" + short_hash(repr(trained))
    if pd.isna(run.config_hash) and trained:
        run["config_hash"] = "params:" + short_hash(repr(trained + [("seed", config.get("seed"))]))
    if isinstance(run.data_fingerprint, str) and isinstance(run.protocol, str):
        run["protocol"] = f"{run.protocol}, data fingerprint={run.data_fingerprint}"
        run["protocol_hash"] = short_hash(run.protocol)
    return run


def load_predictions(tracking_uri: str, run_ids) -> dict[str, dict[str, np.ndarray]]:
    """Each run's ``test_predictions.npz`` (indices, labels, predicted), where it has one."""
    client, found = shared_client(tracking_uri), {}
    with tempfile.TemporaryDirectory() as folder:
        for run_id in run_ids:
            if PREDICTIONS not in {a.path for a in client.list_artifacts(run_id)}:
                continue
            with np.load(client.download_artifacts(run_id, PREDICTIONS, folder)) as saved:
                found[run_id] = {k: saved[k] for k in ("indices", "labels", "predicted") if k in saved}
    return found


def load_history(tracking_uri: str, run_ids, metric: str = "val/error") -> pd.DataFrame:
    """Per-epoch values of ``metric`` (MLflow step = epoch): columns run_id, epoch, value."""
    client = shared_client(tracking_uri)
    rows = [{"run_id": run_id, "epoch": m.step, "value": m.value}
            for run_id in run_ids for m in client.get_metric_history(run_id, metric)]
    return epochs_from_one(pd.DataFrame(rows, columns=["run_id", "epoch", "value"]))


def epochs_from_one(history: pd.DataFrame) -> pd.DataFrame:
    """``history`` with its epochs counted from 1, as runs log them now: a run that logged an
    epoch 0 (versions before 0-based steps were dropped, and bundles they published) moves up
    by one."""
    from_zero = history.groupby("run_id").epoch.transform("min") == 0
    return history.assign(epoch=history.epoch + from_zero.astype(int))


@dataclass
class Runs:
    """The runs that count (``finished``) and those set aside, with why."""

    finished: pd.DataFrame
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # older reruns, dropped
    not_finished: pd.DataFrame = field(default_factory=pd.DataFrame)  # FAILED, KILLED, RUNNING
    unplaced: pd.DataFrame = field(default_factory=pd.DataFrame)  # no setup, seed or protocol


IDENTITY = ["protocol_hash", "setup_hash", "seed"]  # one run counts per setup, protocol and seed
LATEST = "the one that ended last is kept (ties: the later start, then the larger run id)"


def clean(frame: pd.DataFrame, metric: str = "test/error") -> Runs:
    """Keep one FINISHED run per setup, protocol (data included) and seed, the latest (``LATEST``);
    label setups within each protocol; set aside runs that cannot be placed."""
    placed = frame.setup.notna() & frame.seed.notna() & frame.protocol_hash.notna() & frame.setup_hash.notna()
    done = frame.status.eq("FINISHED") & (frame[metric].notna() if metric in frame else False)
    finished = frame[done & placed]
    ends = finished.start_time + pd.to_timedelta(finished.train_seconds.fillna(0), unit="s")
    order = finished.assign(end_time=ends).sort_values(["end_time", "start_time", "run_id"], ascending=False)
    finished = finished.loc[order.index]  # one total order: the store's row order never decides
    newest = ~finished.duplicated(IDENTITY)
    kept = label_setups(finished[newest].sort_values(["setup", "seed"]))
    return Runs(kept.reset_index(drop=True), finished[~newest].reset_index(drop=True),
                frame[~done & placed].reset_index(drop=True), frame[~placed].reset_index(drop=True))


def label_setups(frame: pd.DataFrame) -> pd.DataFrame:
    """Within each protocol, runs of one setup tag that are different setups (their
    ``setup_hash`` differs: a sweep over model.block.groups, say) are told apart by the params
    that differ between them and are constant within each: ``grouped[groups=4]``. A setup that
    is one config in its protocol keeps its plain name, whatever other protocols hold (a
    try-out beside the paper's runs, a CPU run beside a GPU one), and whatever else (paths,
    execution switches) its runs logged. ``setup_tag`` keeps the name training gave."""
    frame = frame.assign(setup_tag=frame.setup)
    for _, group in frame.groupby(["protocol_hash", "setup"]):
        if group.setup_hash.nunique() < 2:
            continue
        params = pd.DataFrame(list(group.config), index=group.index).astype(str)
        within = params.groupby(group.setup_hash).nunique().max() <= 1  # constant in each setup
        knobs = [k for k in params if within[k] and params[k].nunique() > 1]
        for i in group.index:
            frame.loc[i, "setup"] = group.setup_tag[i] + "[" + ",".join(
                f"{k.rsplit('.', 1)[-1]}={params.loc[i, k]}" for k in knobs) + "]"
    return frame
