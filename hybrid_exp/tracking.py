"""MLflow bookkeeping: one run per training, its identity (config hash) and final status."""
import contextlib
import hashlib
import logging
import subprocess
from pathlib import Path

from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Keys that say where things are or how they are logged, not what is trained.
UNHASHED_KEYS = ("logger", "data.root", "data.download")


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config without paths and logging keys: equal configs, equal hash."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in UNHASHED_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node:
            del node[leaf]
    canonical = OmegaConf.to_yaml(cfg, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flatten(node, prefix: str = "") -> dict[str, str]:
    """{'optim.lr': '0.1', ...} for a resolved config; list items are keyed by their index."""
    if isinstance(node, (dict, list)) and node:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        return {k: v for key, value in items for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): str(node)}


def resolve_tracking_uri(uri: str) -> tuple[str, str | None]:
    """(absolute tracking URI, artifact location): a SQLite store keeps artifacts beside it."""
    if not uri.startswith("sqlite:///"):
        return uri, None  # a server decides where artifacts go
    db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}", (db.parent / "mlartifacts").as_uri()


def git_sha() -> str:
    """The source checkout's commit, '+dirty' if it has uncommitted changes; 'unknown' outside git."""
    here = Path(__file__).parent
    git = lambda *args: subprocess.run(["git", *args], cwd=here, capture_output=True, text=True)
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it if needed (tolerates a concurrent creator)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextlib.contextmanager
def mlflow_run(cfg: DictConfig, tags: dict[str, str], params: dict[str, int]):
    """Create the run (params, tags, config artifact); FINISHED on success, else FAILED + reason.

    Yields (client, run_id). ``tags`` must hold 'setup' and 'seed'; the run is '<setup>-seed<seed>'.
    """
    uri, artifact_location = resolve_tracking_uri(cfg.logger.tracking_uri)
    client = MlflowClient(uri)
    exp_id = experiment_id(client, cfg.logger.experiment_name, artifact_location)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run = client.create_run(exp_id, run_name=f"{tags['setup']}-seed{tags['seed']}", tags={
        **tags, "config_hash": config_hash(cfg), "git_sha": git_sha()})
    run_id = run.info.run_id
    try:
        all_params = {**flatten(resolved), **{k: str(v) for k, v in params.items()}}
        items = [Param(k, v) for k, v in sorted(all_params.items())]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=items[i:i + 100])
        client.log_text(run_id, OmegaConf.to_yaml(resolved), "config.yaml")
        yield client, run_id
    except BaseException as e:  # Lightning turns Ctrl-C into SystemExit: both are KILLED
        failed = isinstance(e, Exception)
        reason = f"{type(e).__name__}: {e}"[:5000] if failed else "interrupted"
        client.set_tag(run_id, "error", reason)
        status = "FAILED" if failed else "KILLED"
        client.set_terminated(run_id, status)
        log.error("run %s %s: %s", run.info.run_name, status, reason)
        raise
    client.set_terminated(run_id, "FINISHED")
