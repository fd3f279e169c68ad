"""The MLflow client every part uses (hybrid_exp.store), on a real SQLite store."""
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from hybrid_exp import store
from hybrid_exp.errors import StoreFailed


def test_every_page_of_a_search_comes_back(tmp_path):
    client = store.Client(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("pages")
    made = {client.create_run(experiment, tags={"odd": str(i % 2)}).info.run_id for i in range(5)}
    assert {r.info.run_id for r in client.all_runs(experiment, page_size=2)} == made
    assert len(client.all_runs(experiment, "tags.odd = '1'", page_size=1)) == 2


def test_a_busy_store_is_retried_and_any_other_error_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda seconds: None)
    client = store.Client(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("busy")
    run_id = client.create_run(experiment).info.run_id
    real, calls = client.mlflow.get_run, []

    def busy_twice(*args):
        calls.append(args)
        if len(calls) <= 2:
            raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)
        return real(*args)

    monkeypatch.setattr(client.mlflow, "get_run", busy_twice)
    assert client.get_run(run_id).info.run_id == run_id and len(calls) == 3
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found"):
        client.get_run("0" * 32)  # not busy: raised at once
    assert len(calls) == 4
    assert client.tracking_uri.endswith("mlflow.db")  # attributes pass through


def test_a_store_error_no_retry_mends_is_one_sentence_at_once():
    calls = []

    def broken():
        calls.append(1)
        raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: ...]",
                              error_code=TEMPORARILY_UNAVAILABLE)

    with pytest.raises(StoreFailed, match=r"^the store failed \(readonly database\): it cannot be written: make "
                                          r"its file and folder writable, and run the same command again"):
        store.retrying(broken, store="the store")
    assert len(calls) == 1  # no retry: it would only repeat the error for a minute


def test_a_store_busy_through_every_retry_says_so(monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda seconds: None)

    def locked():
        raise MlflowException("(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE)

    with pytest.raises(StoreFailed, match=r"^the store failed \(database is locked\): it stayed busy "
                                                r"through 8 tries: fewer parallel writers"):
        store.retrying(locked, store="the store")


def test_system_metrics_are_logged_into_the_run_while_it_trains_and_stop_with_it(tmp_path):
    """MLflow's own monitor (the UI's System metrics tab): samples at its interval, then stops."""
    import time

    from hybrid_exp.store import Client
    from hybrid_exp.tracking import system_metrics

    client = Client(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("sys")).info.run_id
    with system_metrics(client, run_id, resumed=False, seconds=0.2):
        deadline = time.monotonic() + 120  # until its first sample is stored, however loaded the machine
        while "system/cpu_utilization_percentage" not in client.get_run(run_id).data.metrics:
            assert time.monotonic() < deadline, "no system metric within 2 minutes"
            time.sleep(0.1)
    logged = client.get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(logged)
    points = len(client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
    time.sleep(0.6)  # three intervals later: nothing more, the monitor stopped with the block
    assert len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) == points


def test_a_server_that_stopped_answering_through_mlflows_retries_is_one_sentence():
    def down():
        raise MlflowException("API request to http://alice:pw@127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed "
                              "with exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded")

    with pytest.raises(StoreFailed, match=r"^the store stopped answering \(HTTPConnectionPool\(host='127.0.0.1', "
                                          r"port=9\): Max retries exceeded\): start it again"):
        store.retrying(down, store="the store")


def test_a_store_deleted_while_in_use_is_named_so(tmp_path):
    client = store.Client(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("gone")).info.run_id
    (tmp_path / "mlflow.db").unlink()
    with pytest.raises(StoreFailed, match=rf"its file {tmp_path}/mlflow.db was deleted while in use"):
        for step in range(20):
            client.log_metric(run_id, "val/error", 1.0, step=step)


def test_a_full_disk_under_the_store_is_named_so(small_disk):
    client = store.Client(f"sqlite:///{small_disk}/mlflow.db")
    run_id = client.create_run(client.create_experiment("full")).info.run_id
    with open(small_disk / "filler", "wb") as filler:
        with pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
    with pytest.raises(StoreFailed, match=r"failed \(database or disk is full\): the disk under it is full: free space"):
        for step in range(200):
            client.log_metric(run_id, f"m{step}", 1.0, step=step)

