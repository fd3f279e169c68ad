"""The MLflow client as every part of the platform uses it: each call retried while the store
is busy, and a search that returns every page. Light (MLflow only): the analysis uses it too."""
import random
import time

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


def retrying(call, *args, attempts: int = 8, **kwargs):
    """``call(*args, **kwargs)``, retried with backoff while the store is busy (a locked SQLite
    file under many parallel writers outlasting MLflow's own 20 s busy timeout)."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except MlflowException as e:
            if e.error_code != "TEMPORARILY_UNAVAILABLE" or attempt == attempts - 1:
                raise
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
        return lambda *args, **kwargs: retrying(attribute, *args, **kwargs)

    def all_runs(self, experiment_id: str, query: str = "", page_size: int = 1000) -> list:
        """Every run of the experiment matching ``query``, page after page."""
        runs, token = [], None
        while True:
            page = self.search_runs([experiment_id], query, max_results=page_size, page_token=token)
            runs += page
            if not (token := page.token):
                return runs
