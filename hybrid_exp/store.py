"""The tracking store as every part of the platform uses it: its URI checked and resolved, the
server or database checked at once, a SQLite store created under a lock, the experiment found or
created (``connect``), and the MLflow client whose every call is retried while the store is busy
(``Client``). Light (MLflow only): the analysis uses it too."""
import base64
import contextlib
import functools
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from hybrid_exp.errors import StoreFailed, TrackingUnavailable
from hybrid_exp.redact import redact

# What MLflow reports as "temporarily unavailable" but no retry mends: the store's file or disk,
# each with what it means and what mends it.
LASTING = {"database or disk is full": "the disk under it is full: free space",
           "readonly database": "it cannot be written: make its file and folder writable",
           "disk I/O error": "it could not be written (a read-only or immutable file, a failing disk): make "
                             "its file and folder writable, and check the disk",
           "unable to open database file": "its file cannot be opened: check that it and its folder exist",
           "disk image is malformed": "its file is damaged: restore it from a copy, or log to a new store"}
AGAIN = ("run the same command again: finished runs are kept and interrupted ones resume from their "
         "last checkpoint")


def retrying(call, *args, attempts: int = 8, store: str = "the tracking store", path: Path | None = None,
             **kwargs):
    """``call(*args, **kwargs)``, retried with backoff while the store is busy (a locked SQLite
    file under many parallel writers outlasting MLflow's own 20 s busy timeout); a store that
    no retry mends (its file deleted or read-only, a disk error, a full disk; a server that stopped
    answering through MLflow's own retries), or one still busy after every retry, is
    ``StoreFailed`` at once, named for what it is. ``path``: a SQLite store's file."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except MlflowException as e:
            text = str(e)
            if "API request to" in text and "failed with exception" in text:  # after MLflow's retries
                cause = text.split("failed with exception", 1)[1].strip().splitlines()[0][:200]
                raise StoreFailed(f"{store} stopped answering ({redact(cause)}): start it again "
                                  f"(docs/tracking.md), and {AGAIN}") from None
            if e.error_code != "TEMPORARILY_UNAVAILABLE":
                raise
            if path is not None and not path.exists():
                raise StoreFailed(f"{store} failed: its file {path} was deleted while in use, and the "
                                  f"runs it held with it: run the same command again to train them "
                                  f"into a new store") from None
            lasting = next((kind for kind in LASTING if kind in text), None)  # anywhere: MLflow's
            if lasting or attempt == attempts - 1:  # first line is often SQLAlchemy's autoflush note
                mend = (LASTING[lasting] if lasting else f"it stayed busy through {attempts} tries: "
                        f"fewer parallel writers, or a server store (docs/tracking.md)")
                raise StoreFailed(f"{store} failed ({lasting or 'database is locked'}): {mend}, and "
                                  f"{AGAIN}") from None
            time.sleep(0.2 * 2**attempt * (1 + random.random()))


class Client:
    """An ``MlflowClient`` whose every method call is ``retrying``. A wrapper, not a subclass:
    MLflow's methods call one another, and a retry inside a retry would multiply the waits."""

    def __init__(self, tracking_uri: str):
        self.mlflow = MlflowClient(tracking_uri)

    def __getattr__(self, name: str):
        attribute = getattr(self.mlflow, name)
        if not callable(attribute):
            return attribute
        uri = self.mlflow.tracking_uri
        store = f"the tracking store {redact(uri)}"
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        return lambda *args, **kwargs: retrying(attribute, *args, store=store, path=path, **kwargs)

    def all_runs(self, experiment_id: str, query: str = "", page_size: int = 1000) -> list:
        """Every run of the experiment matching ``query``, page after page."""
        runs, token = [], None
        while True:
            page = self.search_runs([experiment_id], query, max_results=page_size, page_token=token)
            runs += page
            if not (token := page.token):
                return runs


@functools.cache
def shared_client(tracking_uri: str) -> Client:
    """The one Client of a store in this process: the analysis reads a store through several
    functions (runs, predictions, histories), all through it."""
    return Client(tracking_uri)


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


LOCAL_HINT = "or log locally with logger.tracking_uri=sqlite:///mlflow.db"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail at once, in one sentence, when a tracking server or database is down. Mid-run,
    MLflow's client retries for about a minute (a server restart loses nothing; hybrid_exp.process
    sets how long); at start that would only hide a typo."""
    if uri.startswith(("postgresql", "mysql")):
        check_database(uri, timeout)
    if not uri.startswith(("http://", "https://")):
        return
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


def check_database(uri: str, timeout: float, what: str = "the tracking database",
                   otherwise: str = LOCAL_HINT) -> None:
    """One connection to a database (a tracking store, ``what``), given ``timeout`` seconds."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, round(timeout))})
        with engine.connect():
            pass
    except Exception as e:  # the driver's own error: refused, unknown host, bad password, no driver
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise TrackingUnavailable(f"{what} {redact(uri)} cannot be used ({redact(reason[0] if reason else type(e).__name__)}): "
                                  f"start it, check its address and login (docs/tracking.md) {otherwise}") from None


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
