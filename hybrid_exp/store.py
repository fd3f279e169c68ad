"""The MLflow client as every part of the platform uses it: each call retried while the store
is busy, and a search that returns every page. Light (MLflow only): the analysis uses it too."""
import random
import time

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hybrid_exp.redact import redact


# What MLflow reports as "temporarily unavailable" but no retry mends: the store's file or disk.
LASTING = ("readonly database", "disk I/O error", "unable to open database file",
           "database or disk is full", "disk image is malformed")


class StoreFailed(RuntimeError):
    """The tracking store cannot be written or read now: its message is the one sentence the
    user sees. Nothing trained is lost: each epoch's checkpoint stays, and the runs resume."""


def retrying(call, *args, attempts: int = 8, store: str = "the tracking store", **kwargs):
    """``call(*args, **kwargs)``, retried with backoff while the store is busy (a locked SQLite
    file under many parallel writers outlasting MLflow's own 20 s busy timeout); a store that
    no retry mends (read-only, a disk error, a full disk), or one still busy after every retry,
    is ``StoreFailed`` at once."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except MlflowException as e:
            if e.error_code != "TEMPORARILY_UNAVAILABLE":
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else "unavailable"
            lasting = any(kind in reason for kind in LASTING)
            if lasting or attempt == attempts - 1:
                mend = ("make it writable (its file, its folder, disk space)" if lasting else
                        f"it stayed busy through {attempts} tries: fewer parallel writers, or a "
                        f"server store (docs/tracking.md)")
                raise StoreFailed(f"{store} failed ({reason[:300]}): {mend}, and run the same command "
                                  f"again: finished runs are kept and interrupted ones resume from "
                                  f"their last checkpoint") from None
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
        store = f"the tracking store {redact(self.mlflow.tracking_uri)}"
        return lambda *args, **kwargs: retrying(attribute, *args, store=store, **kwargs)

    def all_runs(self, experiment_id: str, query: str = "", page_size: int = 1000) -> list:
        """Every run of the experiment matching ``query``, page after page."""
        runs, token = [], None
        while True:
            page = self.search_runs([experiment_id], query, max_results=page_size, page_token=token)
            runs += page
            if not (token := page.token):
                return runs
