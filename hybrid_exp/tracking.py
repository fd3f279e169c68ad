"""MLflow bookkeeping: one run per training, its identity (config hash), resume and status."""
import contextlib
import hashlib
import logging
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


from filelock import FileLock
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from hybrid_exp.redact import redact, redact_tree
from hybrid_exp.schema import DEFAULTS_OUT_OF_HASH, UNHASHED_KEYS, protocol_text, short_hash
from hybrid_exp.store import Client, StoreFailed

log = logging.getLogger(__name__)
# A quiet terminal: MLflow announces each store migration (a new store: a dozen lines), and logs a
# traceback for each failed attempt at a store error (store.retrying says it once, in a sentence)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("mlflow.store.db.utils").addFilter(
    lambda record: not record.getMessage().startswith("SQLAlchemy database error"))

WEIGHTS = "model.pt"  # each FINISHED run's trained weights (python -m hybrid_exp.evaluate reads them)


def identity(cfg: DictConfig) -> DictConfig:
    """What a run trains: the resolved config without ``UNHASHED_KEYS``, with the precision and
    the device type it really trains on (``auto`` resolved: a bf16 GPU run is not an fp32 CPU
    run of the same config)."""
    from hybrid_exp.module import resolve_precision, trains_on_gpu  # training side, imported when used

    kept = [k for k in cfg.keys() if k not in UNHASHED_KEYS]  # names read Hydra's runtime: not needed
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.masked_copy(cfg, kept), resolve=True))
    for key in UNHASHED_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node:
            del node[leaf]
    for key, default in DEFAULTS_OUT_OF_HASH.items():  # a new key at its default: hash unchanged
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if node is not None and leaf in node and node[leaf] == default:
            del node[leaf]
    if cfg.get("callbacks"):  # a callback left out (null) trains as one never listed
        cfg.callbacks = {name: c for name, c in cfg.callbacks.items() if c is not None}
    if "trainer" in cfg:
        accelerator = cfg.trainer.get("accelerator", "auto")
        on_gpu = trains_on_gpu(accelerator)
        cfg.trainer.precision = resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
        cfg.trainer.accelerator = "cuda" if on_gpu else accelerator if accelerator != "auto" else "cpu"
    return cfg


def digest(cfg: DictConfig) -> str:
    return hashlib.sha256(OmegaConf.to_yaml(cfg, sort_keys=True).encode()).hexdigest()[:16]


def config_hash(cfg: DictConfig) -> str:
    """Hash of what a run trains (``identity``): equal configs, equal hash."""
    return digest(identity(cfg))


def run_schema(cfg: DictConfig) -> dict[str, str]:
    """The identity tags of a run, which training and analysis both read: ``config_hash`` (what
    it trains), ``setup_hash`` (the same without the seed: the runs of one setup over seeds),
    ``protocol`` (the data, optimiser, epochs, precision and device it is compared under) and
    ``protocol_hash``."""
    trained = identity(cfg)
    setup = OmegaConf.masked_copy(trained, [k for k in trained if k != "seed"])
    text = protocol_text(flatten(OmegaConf.to_container(trained)))
    return {"config_hash": digest(trained), "setup_hash": digest(setup), "protocol": text,
            "protocol_hash": short_hash(text)}


def flatten(node, prefix: str = "") -> dict[str, str]:
    """{'optim.lr': '0.1', ...} for a resolved config; list items are keyed by their index."""
    if isinstance(node, (dict, list)) and node:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        return {k: v for key, value in items for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): str(node)}


def git_sha() -> str:
    """The source checkout's commit, '+dirty' if it has uncommitted changes; 'unknown' outside git."""
    here = Path(__file__).parent
    git = lambda *args: subprocess.run(["git", *args], cwd=here, capture_output=True, text=True)
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


# ---------------------------------------------------------------------------- the store


SCHEMES = ("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql", "databricks")


def resolve_tracking_uri(uri: str) -> tuple[str, str | None]:
    """(absolute tracking URI, artifact location): a SQLite store keeps artifacts beside it.
    A URI MLflow cannot use as a tracking store, or a SQLite file where we cannot write, is
    refused in one sentence."""
    uri = str(uri)
    if not uri.startswith(SCHEMES):
        raise TrackingUnavailable(
            f"logger.tracking_uri={uri} is no tracking store: use sqlite:///path/mlflow.db (a "
            f"local file), http(s)://host:port (a server, docs/tracking.md) or a database URL "
            f"(postgresql://..., mysql://...)")
    if not uri.startswith("sqlite:///"):
        return uri, None  # a server decides where artifacts go
    db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingUnavailable(f"cannot create {db.parent} for the tracking store ({e.strerror}): "
                                  f"choose a writable place with logger.tracking_uri=sqlite:///...") from None
    for path in (db.parent, db.parent / "mlartifacts", db):  # SQLite writes a journal beside it
        if path.exists() and not os.access(path, os.W_OK):
            raise TrackingUnavailable(f"{path} is not writable, and the tracking store "
                                      f"{db.name} needs it: choose a writable place with "
                                      f"logger.tracking_uri=sqlite:///...")
    return f"sqlite:///{db}", (db.parent / "mlartifacts").as_uri()


@contextlib.contextmanager
def store_lock(uri: str):
    """Held while a SQLite store is created and migrated: processes that open a fresh store at
    once would each run MLflow's schema migrations on it and break it."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with FileLock(uri.removeprefix("sqlite:///") + ".lock"):  # an flock, released however we end
        yield


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be used: not reachable, or it refuses our credentials."""


LOCAL_HINT = "or log locally with logger.tracking_uri=sqlite:///mlflow.db"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail at once, in one sentence, when a tracking server or database is down. Mid-run,
    MLflow's client retries for minutes (a server restart loses nothing); at start that would
    only hide a typo."""
    if uri.startswith(("postgresql", "mysql")):
        check_database(uri, timeout)
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import urllib.parse

    # http://user:password@host works with MLflow's client; urllib wants the host alone and
    # the credentials as a header
    parts = urllib.parse.urlsplit(uri)
    host = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    request = urllib.request.Request(f"{urllib.parse.urlunsplit(host).rstrip('/')}/health")
    if parts.username is not None:
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise TrackingUnavailable(f"MLflow tracking server {redact(uri)} is unreachable ({redact(str(reason))}): "
                                  f"start it (docker compose up -d, see docs/tracking.md) {LOCAL_HINT}") from None


def check_database(uri: str, timeout: float) -> None:
    """One connection to a database tracking store, given ``timeout`` seconds."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, round(timeout))})
        with engine.connect():
            pass
    except Exception as e:  # the driver's own error: refused, unknown host, bad password, no driver
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise TrackingUnavailable(f"the tracking database {redact(uri)} cannot be used ({redact(reason[0] if reason else type(e).__name__)}): "
                                  f"start it, check its address and login (docs/tracking.md) {LOCAL_HINT}") from None


def get_experiment(client: Client, name: str):
    """The experiment called ``name`` or None; a server that wants a login says so plainly."""
    try:
        return client.get_experiment_by_name(name)
    except MlflowException as e:
        if e.error_code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise
        raise TrackingUnavailable(
            f"MLflow tracking server {client.tracking_uri} refused access ({e.error_code}): export "
            f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (see docs/tracking.md) "
            f"{LOCAL_HINT}") from None


# MLflow 3's UI opens an experiment in its GenAI view (traces, evaluation runs) unless it says
# it holds model training: every experiment the platform creates says so.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: Client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (or its UI kind set) if needed."""
    found = get_experiment(client, name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                            tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by a job started outside a multirun
            found = client.get_experiment_by_name(name)
    for key, value in EXPERIMENT_KIND.items():
        if found.tags.get(key) != value:  # created before the platform set it
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def connect(logger_cfg: DictConfig) -> tuple[Client, str]:
    """(client, experiment id), creating the store and the experiment if needed."""
    uri, artifact_location = resolve_tracking_uri(logger_cfg.tracking_uri)
    check_server(uri)
    with store_lock(uri):  # the first client creates and migrates a SQLite store
        client = Client(uri)
        return client, experiment_id(client, logger_cfg.experiment_name, artifact_location)


def finished_run(client: Client, experiment_id: str, hash_: str, fingerprint: str) -> Run | None:
    """The newest FINISHED run of this config on the same data (``data_fingerprint``), if any.
    A run logged before runs recorded their data counts as on the same data: an upgrade does
    not retrain what finished."""
    runs = client.search_runs([experiment_id],
                    f"tags.config_hash = '{hash_}' and attributes.status = 'FINISHED'",
                    max_results=100, order_by=["attributes.start_time DESC"])
    same = [r for r in runs if r.data.tags.get("data_fingerprint", fingerprint) == fingerprint]
    return same[0] if same else None


def resumable_runs(client: Client, checkpoint_dir: Path) -> list[str] | None:
    """The run ids stored beside a checkpoint (one per member, in order), if any of those runs
    was interrupted (RUNNING after a crash, KILLED after Ctrl-C); a FAILED run stays as the
    record of its failure, and an array whose runs all ended has nothing to resume."""
    stored = checkpoint_dir / "run_id"
    if not stored.is_file():
        return None
    run_ids = stored.read_text().split()
    try:
        runs = [client.get_run(run_id) for run_id in run_ids]
    except MlflowException:  # deleted from the store
        return None
    interrupted = lambda run: run.info.status in ("RUNNING", "KILLED") and "pruned" not in run.data.tags
    return run_ids if any(interrupted(run) for run in runs) else None


def end_orphans(client: Client, experiment_id: str, hash_: str, keep: list[str]) -> None:
    """End KILLED the RUNNING runs of config ``hash_`` other than ``keep``: called by the process
    that holds the config's claim (so no other process trains them) and does not resume them
    (their checkpoint is gone: deleted, or on another machine's disk). Left RUNNING they would
    look alive forever."""
    for run in client.search_runs([experiment_id], f"tags.config_hash = '{hash_}' and "
                                                   f"attributes.status = 'RUNNING'"):
        if run.info.run_id not in keep:
            reason = "interrupted, and its checkpoint is gone: the config trains again in a new run"
            client.set_tag(run.info.run_id, "error", reason)
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("run %s (%s): %s", run.info.run_id, run.info.run_name, reason)


class TrackedRun:
    """One training's MLflow run, as ``mlflow_run`` yields it: log a metric dict per epoch (each
    metric and epoch once, also across a resume), or end it FAILED with a reason (a member of a
    fused array that diverged, while the others go on)."""

    def __init__(self, client: Client, run_id: str, resumed: bool):
        self.client, self.run_id, self.failed, self.resumed = client, run_id, False, resumed
        # A resumed run replays the epoch that was under way when it was killed; points already
        # logged for it are kept, not doubled: one point per metric and epoch.
        self.last_step = {key: max(m.step for m in client.get_metric_history(run_id, key))
                          for key in client.get_run(run_id).data.metrics} if resumed else {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if step > self.last_step.get(k, -1)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_predictions(self, indices, labels, logits) -> None:
        """``test_predictions.npz``: per image of the evaluation subset its position in the
        official test set, its label, the predicted class and the logits (a (N, K) tensor,
        stored as float16)."""
        import numpy as np

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "test_predictions.npz"
            np.savez_compressed(path, indices=np.asarray(indices, dtype=np.int64),
                                labels=np.asarray(labels, dtype=np.int16),
                                predicted=logits.argmax(1).numpy().astype(np.int16),
                                logits=logits.numpy().astype(np.float16))
            self.client.log_artifact(self.run_id, str(path))

    def log_weights(self, state: dict, name: str = WEIGHTS) -> None:
        """``model.pt`` (or ``name``): a state_dict of the network (the unfused layout; load it
        with ``torch.load(..., weights_only=True)``)."""
        import torch

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            torch.save(state, path)
            self.client.log_artifact(self.run_id, str(path))

    def fail(self, reason: str) -> None:
        self.client.set_tag(self.run_id, "error", reason[:5000])
        self.client.set_terminated(self.run_id, "FAILED")
        self.failed = True


def dataset_input(name: str, root: str, fingerprint: str, sizes: dict[str, int]):
    """A run's data as MLflow's own dataset record (the UI's Dataset column): named by the
    dataset and its split sizes (one record per dataset and protocol, shared by their runs),
    its digest the data fingerprint."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    words = ", ".join(f"{n:,} {split}" for split, n in sizes.items())
    return DatasetInput(Dataset(name=f"{name} ({words})", digest=fingerprint, source_type="local",
                                source=json.dumps({"uri": redact(root)}), profile=json.dumps(sizes)),
                        tags=[InputTag("mlflow.data.context", "training")])


@contextlib.contextmanager
def system_metrics(client: Client, run_id: str, resumed: bool, seconds: float = 10):
    """MLflow's own monitor logging the machine's CPU, memory, disk and network use (and each
    GPU's, where nvidia-ml-py is installed) into the run every ``seconds`` while it trains:
    the UI's System metrics tab."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as e:  # psutil missing (an image without the project's requirements)
        log.info("trainer.system_metrics: off, %s (pip install psutil)", e)
        yield None
        return
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # a line per start and stop
    monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, resume_logging=resumed,
                                   tracking_uri=client.tracking_uri)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.finish()


def out_of_requeues(e: BaseException) -> bool:
    """submitit's error in a SLURM job preempted or out of time more often than
    ``max_num_timeout`` allows: its runs are interrupted, not failed (a relaunch resumes them)."""
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:  # the [slurm] extra is not installed
        return False
    return isinstance(e, UncompletedJobError)


@contextlib.contextmanager
def mlflow_run(client: Client, experiment_id: str, cfg: DictConfig, tags: dict[str, str],
               params: dict[str, int], resume: str | None = None):
    """Create the run (params, tags, config artifact), or reopen ``resume``; FINISHED on
    success (unless it was failed meanwhile), else FAILED with the reason (KILLED on Ctrl-C).
    Yields its ``TrackedRun``.

    ``tags`` must hold 'setup' and 'seed'; the run is named '<setup>-seed<seed>' (an Optuna
    trial's '<setup>-trial<number>-seed<seed>')."""
    if resume:
        run_id = resume
        client.update_run(run_id, "RUNNING")
    else:
        trial = f"-trial{tags['optuna.trial_number']}" if "optuna.trial_number" in tags else ""
        run = client.create_run(experiment_id, run_name=f"{tags['setup']}{trial}-seed{tags['seed']}",
                       tags={**tags, **run_schema(cfg), "git_sha": git_sha()})
        run_id = run.info.run_id
    try:
        if not resume:
            resolved = redact_tree(OmegaConf.to_container(cfg, resolve=True))  # no passwords
            all_params = {**flatten(resolved), **{k: str(v) for k, v in params.items()}}
            items = [Param(k, v) for k, v in sorted(all_params.items())]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(run_id, params=items[i:i + 100])
            client.log_text(run_id, OmegaConf.to_yaml(resolved), "config.yaml")
        tracked = TrackedRun(client, run_id, resumed=bool(resume))
        yield tracked
    except StoreFailed:  # nothing can be recorded now: the run stays as it is, to be resumed
        raise
    except BaseException as e:  # Lightning turns Ctrl-C into SystemExit: both are KILLED
        import optuna

        pruned = isinstance(e, optuna.TrialPruned)  # stopped early by the Optuna pruner
        requeues_spent = out_of_requeues(e)
        failed = isinstance(e, Exception) and not pruned and not requeues_spent
        reason = f"{type(e).__name__}: {e}"[:5000] if failed else str(e) if pruned else \
            f"interrupted: {e}" if requeues_spent else "interrupted"
        if client.get_run(run_id).info.status != "FAILED":  # else failed by itself before
            client.set_tag(run_id, "pruned" if pruned else "error", reason)
            client.set_terminated(run_id, "FAILED" if failed else "KILLED")
            log.error("run %s-seed%s %s: %s", tags["setup"], tags["seed"],
                      "FAILED" if failed else "KILLED", reason)
        raise
    if not tracked.failed:
        client.set_terminated(run_id, "FINISHED")
