"""The shared tracking server: docker-compose.yml, and the same programs run natively (there is
no Docker engine here): a real PostgreSQL, `mlflow server` with the compose file's own arguments,
grids logging over HTTP, runs read back through MLflow's REST API."""
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from hybrid_exp.copy_runs import COPIED_FROM, copy_runs
from hybrid_exp.errors import TrackingUnavailable
from hybrid_exp.store import check_server
from tests.helpers import PARALLEL, PASSWORD, REPO, TINY, free_port, start

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
GUARD = "/usr/local/bin/refuse-placeholders"



def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against ``env``."""
    def one(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} unset: {arg}")
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


# ---------------------------------------------------------------------------- compose file


def test_compose_file_defines_the_services_bound_to_loopback_without_secrets():
    assert set(SERVICES) == {"postgres", "mlflow", "mlflow-auth", "trainer"}
    assert re.fullmatch(r"postgres:\d+", SERVICES["postgres"]["image"])  # pinned major version
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert set(COMPOSE["volumes"]) >= {"pgdata", "mlartifacts"}
    for name in ("postgres", "mlflow", "mlflow-auth"):
        assert SERVICES[name]["healthcheck"]["test"], name
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for key, value in service.get("environment", {}).items():
            if re.search("PASSWORD|SECRET", key) and key != "REQUIRED_SECRETS":  # only from .env
                assert re.fullmatch(r"\$\{\w+:[-?][^}]*\}", value), f"{name}.{key} is a literal"
        uri = service.get("environment", {}).get("MLFLOW_BACKEND_STORE_URI")
        if uri:
            assert re.search(r":\$\{POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/", uri)

    server = SERVICES["mlflow"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    args = server["entrypoint"]
    assert args[:3] == [GUARD, "mlflow", "server"] and "--serve-artifacts" in args
    assert args[args.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert "mlartifacts:/mlartifacts" in server["volumes"]
    assert "--allowed-hosts" in args
    auth = SERVICES["mlflow-auth"]
    assert auth["entrypoint"] == args and auth["command"] == ["--app-name", "basic-auth"]
    assert auth["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_AUTH_ADMIN_PASSWORD:?")
    assert {"open"} == set(server["profiles"]) and {"auth"} == set(auth["profiles"])
    assert SERVICES["postgres"]["entrypoint"][0] == GUARD
    assert f"./docker/refuse-placeholders.sh:{GUARD}:ro" in SERVICES["postgres"]["volumes"]
    for name in ("postgres", "mlflow", "mlflow-auth"):  # the guard checks each secret it is given
        service = SERVICES[name]
        secrets = {k for k, v in service["environment"].items()
                   if re.search("PASSWORD|SECRET_KEY", k) and "${" in str(v) and k != "MLFLOW_BACKEND_STORE_URI"}
        assert secrets <= set(service["environment"]["REQUIRED_SECRETS"].split()), name
    gpus = SERVICES["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpus["capabilities"] == ["gpu"] and SERVICES["trainer"]["profiles"] == ["trainer"]

    dockerfile = (REPO / "docker/mlflow/Dockerfile").read_text()
    version = re.search(r'"mlflow\[auth\]==(\d+)\.(\d+)\.(\d+)"', dockerfile).groups()
    assert tuple(map(int, version)) >= (3, 16, 1)  # basic auth without a default admin password
    assert re.search(r'"psycopg\[binary\]==[\d.]+"', dockerfile)


@pytest.mark.parametrize("value, refusal", [
    ("change-me", "refusing to start: POSTGRES_PASSWORD in .env is the placeholder 'change-me'"),
    ("short", "refusing to start: POSTGRES_PASSWORD in .env has 5 characters; use 12 or more"),
    ("", "refusing to start: POSTGRES_PASSWORD in .env has 0 characters"),
    ("a-real-secret-value", None),
])
def test_services_refuse_to_start_with_a_placeholder_secret(value, refusal):
    guard = subprocess.run([str(REPO / "docker/refuse-placeholders.sh"), "echo", "started"],
                           env={"PATH": os.environ["PATH"], "REQUIRED_SECRETS": "POSTGRES_PASSWORD",
                                "POSTGRES_PASSWORD": value}, capture_output=True, text=True)
    if refusal:
        assert guard.returncode == 1 and guard.stdout == ""
        assert len(guard.stderr.strip().splitlines()) == 1 and guard.stderr.startswith(refusal)
    else:
        assert guard.returncode == 0 and guard.stdout == "started\n"


def test_the_default_profile_logs_in_and_secrets_stay_out_of_images():
    example = (REPO / ".env.example").read_text()
    assert re.search(r"(?m)^COMPOSE_PROFILES=auth$", example)
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored
    for dockerfile in ("docker/trainer/Dockerfile", "docker/mlflow/Dockerfile"):
        users = re.findall(r"(?m)^USER (\S+)", (REPO / dockerfile).read_text())
        assert users and users[-1] not in ("root", "0"), dockerfile


def test_env_example_holds_placeholders_and_env_is_ignored():
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for key, value in example.items():
        if re.search("PASSWORD|SECRET", key):
            assert value in ("", "change-me"), key
    needed = set(re.findall(r"\$\{(\w+):\?", (REPO / "docker-compose.yml").read_text()))
    assert needed <= set(example)  # every required variable is explained there
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env must be git-ignored"


# ---------------------------------------------------------------------------- failing fast


def test_unreachable_server_fails_in_seconds_with_one_sentence(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"is unreachable .*docker compose up -d"):
        check_server(uri)
    assert time.monotonic() - start < 60  # no minutes of retries (a refused connection is immediate)

    job = subprocess.run([sys.executable, "-m", "hybrid_exp", "-m", "model=separable", "seed=0,1",
                          f"logger.tracking_uri={uri}", *TINY], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert job.returncode != 0
    assert f"MLflow tracking server {uri} is unreachable" in job.stderr
    assert not list(tmp_path.rglob("job_status.json"))  # stopped before any job started


# ---------------------------------------------------------------------------- native servers


class MlflowServer:
    """`mlflow server` started natively with the compose service's arguments and environment;
    only the bind address, port and artifact folder differ (a container's are fixed)."""

    def __init__(self, service: str, backend_uri: str, folder: Path, env: dict[str, str] | None = None):
        spec = SERVICES[service]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = folder / "mlartifacts"
        local = {"--host": "127.0.0.1", "--port": str(self.port),
                 "--artifacts-destination": str(self.artifacts)}
        args = [interpolate(a, {}) for a in spec["entrypoint"] + spec.get("command", [])]
        for flag, value in local.items():
            args[args.index(flag) + 1] = value
        assert args[0] == GUARD  # run as in the container: the guard, then the server
        args[:2] = [str(REPO / "docker/refuse-placeholders.sh"), str(Path(sys.executable).parent / "mlflow")]
        self.args = args
        self.env = {**os.environ, "POSTGRES_PASSWORD": PASSWORD, **(env or {}), "MLFLOW_BACKEND_STORE_URI": backend_uri,
                    "REQUIRED_SECRETS": spec["environment"]["REQUIRED_SECRETS"]}
        self.log = folder / "server.log"
        self.process = None

    def start(self) -> "MlflowServer":
        self.process = subprocess.Popen(self.args, env=self.env, start_new_session=True,
                                        stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                check_server(self.url, timeout=2)
                return self
            except TrackingUnavailable:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                time.sleep(0.3)
        raise TimeoutError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:  # SIGTERM: what `docker restart` sends
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def rest(self, method: str, endpoint: str, body: dict | None = None, auth: str | None = None):
        """MLflow's REST API, spoken directly (no MLflow client code involved)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{endpoint}", data=data,
                                         method=method, headers={"Content-Type": "application/json"})
        if auth:
            request.add_header("Authorization", auth)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def runs(self, experiment: str = "hybrid-exp") -> list[dict]:
        try:
            found = self.rest("GET", f"experiments/get-by-name?experiment_name={experiment}")
        except urllib.error.HTTPError as e:
            if e.code == 404:  # not created yet
                return []
            raise
        return self.rest("POST", "runs/search",
                         {"experiment_ids": [found["experiment"]["experiment_id"]]}).get("runs", [])

    def history(self, run_id: str, key: str) -> list[int]:
        points = self.rest("GET", f"metrics/get-history?run_id={run_id}&metric_key={key}")
        return sorted(m["step"] for m in points.get("metrics", []))


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """One server for the tests that leave it running; each logs to its own experiment."""
    started = MlflowServer("mlflow", postgres("shared"), tmp_path_factory.mktemp("server")).start()
    yield started
    started.stop(signal.SIGKILL)


@pytest.fixture
def new_server(postgres, tmp_path):
    """start(service, env) -> a server of this test's own, on a fresh database; killed after."""
    started = []

    def start(service: str = "mlflow", env: dict[str, str] | None = None) -> MlflowServer:
        folder = tmp_path / f"server{len(started)}"
        folder.mkdir()
        database = postgres(f"{tmp_path.name}_{len(started)}".lower())
        started.append(MlflowServer(service, database, folder, env).start())
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


def job(cwd: Path, *overrides: str, env: dict[str, str] | None = None, multirun: bool = True):
    return subprocess.run([sys.executable, "-m", "hybrid_exp", *(["-m"] if multirun else []),
                           *overrides], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=600)


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.mark.slow
def test_grid_logs_over_http_to_postgres_with_artifacts_on_the_server(server, tmp_path, cifar10_root):
    work = tmp_path / "work"
    work.mkdir()
    grid = job(work, "model=separable", "seed=0,1", f"logger.tracking_uri={server.url}",
               f"data.root={cifar10_root}", "data.train_subset=512", "data.val_size=128",
               "data.eval_size=256", *TINY, PARALLEL)
    assert grid.returncode == 0, grid.stderr[-3000:]

    runs = server.runs()
    assert sorted(tags(r)["seed"] for r in runs) == ["0", "1"]
    for run in runs:
        assert run["info"]["status"] == "FINISHED"
        assert server.history(run["info"]["run_id"], "val/error") == [1, 2]  # one point per epoch, from 1
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["model.width"] == "16"
        # the artifacts went through the server into its artifact store, not to a local folder
        listed = server.rest("GET", f"artifacts/list?run_id={run['info']['run_id']}")
        assert [f["path"] for f in listed["files"]] == ["config.yaml", "model.pt", "test_predictions.npz"]
        assert list(server.artifacts.glob(f"*/{run['info']['run_id']}/artifacts/config.yaml"))
    assert not (work / "mlartifacts").exists() and not (work / "mlflow.db").exists()

    again = job(work, "model=separable", "seed=0,1", f"logger.tracking_uri={server.url}",
                f"data.root={cifar10_root}", "data.train_subset=512", "data.val_size=128",
                "data.eval_size=256", *TINY, PARALLEL)
    assert again.returncode == 0 and len(server.runs()) == 2  # finished configs are skipped


@pytest.mark.slow
def test_server_restart_mid_run_loses_no_metric(new_server, tmp_path, cifar10_root):
    server = new_server()
    epochs, log = 8, tmp_path / "train.log"
    training = start(
        [sys.executable, "-m", "hybrid_exp", f"logger.tracking_uri={server.url}",
         f"data.root={cifar10_root}", "data.train_subset=2048", "data.val_size=256",
         "data.eval_size=256", *TINY, f"trainer.max_epochs={epochs}"],
        cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (runs := server.runs()) or not server.history(runs[0]["info"]["run_id"], "val/error"):
        assert training.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    server.stop()  # mid-run: an epoch is logged, more are to come
    while "Retrying" not in log.read_text():  # the client meets the server down, and waits
        assert training.poll() is None and time.monotonic() < deadline + 300, log.read_text()[-3000:]
        time.sleep(0.5)
    server.start()
    assert training.wait(timeout=600) == 0, log.read_text()[-3000:]

    (run,) = server.runs()
    assert run["info"]["status"] == "FINISHED"
    for key in ("val/error", "train/loss", "lr"):
        assert server.history(run["info"]["run_id"], key) == list(range(1, epochs + 1)), key


@pytest.mark.slow
def test_a_server_that_dies_mid_run_is_one_sentence_within_minutes(new_server, tmp_path):
    server = new_server()
    log = tmp_path / "train.log"
    training = start([sys.executable, "-m", "hybrid_exp", f"logger.tracking_uri={server.url}", "data=synthetic",
                      "data.train_subset=2048", "data.val_size=256", "data.eval_size=256", *TINY,
                      "trainer.max_epochs=1000"], cwd=tmp_path, stdout=log.open("w"))
    deadline = time.monotonic() + 300
    while not (runs := server.runs()) or not server.history(runs[0]["info"]["run_id"], "val/error"):
        assert training.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    server.stop(signal.SIGKILL)  # gone for good
    assert training.wait(timeout=300) == 1, log.read_text()[-3000:]  # bounded: MLflow's retries, then a sentence
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"the tracking store {server.url} stopped answering") and "start it again" in last, last


@pytest.mark.slow
def test_auth_profile_requires_a_login(new_server, tmp_path, cifar10_root):
    ini = (REPO / "docker/mlflow/basic_auth.ini").read_text()
    users_db = tmp_path / "basic_auth.db"
    (tmp_path / "basic_auth.ini").write_text(
        re.sub(r"(?m)^database_uri = .*$", f"database_uri = sqlite:///{users_db}", ini))
    server = new_server("mlflow-auth", env={
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key"})
    overrides = [f"logger.tracking_uri={server.url}", f"data.root={cifar10_root}",
                 "data.train_subset=256", "data.val_size=0", "data.eval_size=128",
                 *TINY, "trainer.max_epochs=1"]
    refused = job(tmp_path, *overrides, multirun=False)
    assert refused.returncode != 0
    assert "refused access (UNAUTHENTICATED): export MLFLOW_TRACKING_USERNAME" in refused.stderr

    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    done = job(tmp_path, *overrides, env=login, multirun=False)
    assert done.returncode == 0, done.stderr[-3000:]
    basic = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    found = server.rest("GET", "experiments/get-by-name?experiment_name=hybrid-exp", auth=basic)
    runs = server.rest("POST", "runs/search", {"experiment_ids": [found["experiment"]["experiment_id"]]},
                       auth=basic)["runs"]
    assert [r["info"]["status"] for r in runs] == ["FINISHED"]
    with pytest.raises(urllib.error.HTTPError, match="401"):
        server.rest("GET", "experiments/get-by-name?experiment_name=hybrid-exp")

    # the login in the URL instead: MLflow's "View run ... at <url>" lines, Hydra's saved configs,
    # the grid summary, the claims and checkpoints show no password
    (tmp_path / "grid").mkdir()
    in_url = server.url.replace("http://", f"http://admin:{PASSWORD}@")
    grid = job(tmp_path / "grid", *[o for o in overrides if not o.startswith("logger.")],
               f"logger.tracking_uri={in_url}", "seed=0,1")
    assert grid.returncode == 0, grid.stderr[-3000:]
    assert PASSWORD not in grid.stdout + grid.stderr and "View run" not in grid.stdout + grid.stderr
    assert [p for p in (tmp_path / "grid").rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()] == []


def test_copy_runs_moves_a_local_store_onto_the_server(server, tmp_path):
    local = f"sqlite:///{tmp_path / 'local/mlflow.db'}"
    client = MlflowClient(local)
    experiment = client.create_experiment("copied", artifact_location=(tmp_path / "local/art").as_uri())
    study = client.create_run(experiment, run_name="study", tags={"hybrid_exp.kind": "study"}).info.run_id
    trial = client.create_run(experiment, run_name="separable-seed0",
                              tags={"mlflow.parentRunId": study, "config_hash": "abc", "seed": "0"}).info.run_id
    client.log_param(trial, "optim.lr", "0.1")
    for epoch in range(3):
        client.log_metric(trial, "val/error", 50.0 - epoch, step=epoch)
    client.log_text(trial, "seed: 0\n", "config.yaml")
    client.set_terminated(trial, "FINISHED")
    client.set_terminated(study, "FINISHED")

    assert copy_runs(local, server.url) == 2
    runs = {r["info"]["run_name"]: r for r in server.runs("copied")}
    copied = runs["separable-seed0"]
    assert tags(copied)[COPIED_FROM] == trial and tags(copied)["config_hash"] == "abc"
    assert tags(copied)["mlflow.parentRunId"] == runs["study"]["info"]["run_id"]  # still nested
    assert copied["info"]["status"] == "FINISHED"
    assert server.history(copied["info"]["run_id"], "val/error") == [0, 1, 2]
    assert {p["key"]: p["value"] for p in copied["data"]["params"]} == {"optim.lr": "0.1"}
    remote = MlflowClient(server.url)
    assert Path(remote.download_artifacts(copied["info"]["run_id"], "config.yaml", str(tmp_path))
                ).read_text() == "seed: 0\n"

    assert copy_runs(local, server.url) == 0  # rerun: nothing copied twice
    assert len(server.runs("copied")) == 2
    missing = subprocess.run([sys.executable, "-m", "hybrid_exp.copy_runs", "--from",
                              f"sqlite:///{tmp_path}/nothing.db", "--to", server.url],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no SQLite store at" in missing.stderr


@pytest.mark.slow
def test_optuna_sweep_keeps_its_study_in_postgresql(postgres, server, tmp_path):
    storage = postgres("optuna").replace("postgresql://", "postgresql+psycopg://")
    run = job(tmp_path, "hydra/sweeper=optuna", "hydra.sweeper.n_jobs=2", PARALLEL,
              f"hydra.sweeper.storage='{storage}'", "hydra.sweeper.n_trials=2",
              "hydra.sweeper.sampler.seed=0", "optim.lr=tag(log, interval(0.01, 0.3))",
              "data=synthetic", "data.train_subset=256", "data.val_size=64", "data.eval_size=64",
              *TINY, "trainer.max_epochs=1", f"logger.tracking_uri={server.url}",
              "logger.experiment_name=tuned")
    assert run.returncode == 0, run.stderr[-3000:]
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert len(server.runs("tuned")) == 3  # the study's parent run and its two trials


@pytest.mark.slow
def test_a_storage_password_appears_nowhere_in_runs_logs_or_saved_configs(postgres, tmp_path):
    """An Optuna sweep whose storage URL holds a password (as docs/tracking.md's PostgreSQL
    setup has it) and a tracking URL with one: the marker is in no MLflow param, tag or artifact,
    no file of the outputs, the store's own database file included."""
    storage = postgres("optuna_secret")
    assert PASSWORD in storage
    sweep = job(tmp_path, "hydra/sweeper=optuna", "hparams_search=separable_optuna",
                "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}",
                "data=synthetic", "data.train_subset=256", "data.val_size=64", "data.eval_size=64",
                *TINY, "trainer.max_epochs=1", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert PASSWORD not in sweep.stdout + sweep.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) >= 2
    for run in runs:
        assert PASSWORD not in json.dumps({**run.data.params, **run.data.tags})
    assert "postgresql://hybrid:***@" in json.dumps([r.data.params for r in runs])
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "optimization_results.yaml" for p in files)
    assert any(p.name == "overrides.yaml" for p in files)
    for path in files:  # artifacts, .hydra/*.yaml, multirun.yaml, logs, mlflow.db itself
        assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_the_grid_summary_names_a_database_store_without_its_password(postgres):
    from hydra.core.utils import JobReturn
    from omegaconf import OmegaConf

    from hydra_plugins.hybrid_exp_launcher.summary import where_to_look

    uri = postgres("summary_secret").replace("postgresql://", "postgresql+psycopg://")
    MlflowClient(uri).create_experiment("grid")
    job = JobReturn(cfg=OmegaConf.create({"logger": {"tracking_uri": uri, "experiment_name": "grid"}}))
    lines = where_to_look([job])
    assert len(lines) == 2 and "mlflow ui --backend-store-uri postgresql+psycopg://hybrid:***@" in lines[0]
    assert PASSWORD not in "".join(lines)


def test_a_tracking_uri_with_credentials_is_checked_at_its_host_and_never_shown(tmp_path):
    """http://user:password@host: the health check logs in as MLflow's client would, and a
    server that is down is named without the password."""
    import base64
    import http.server
    import threading

    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_server(f"http://alice:s3%2Fcr3t@127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert seen == [("/health", "Basic " + base64.b64encode(b"alice:s3/cr3t").decode())]
    with pytest.raises(TrackingUnavailable) as down:
        check_server(f"http://alice:s3cr3tMarker@127.0.0.1:{free_port()}")
    assert "s3cr3tMarker" not in str(down.value) and "alice:***@127.0.0.1" in str(down.value)


@pytest.mark.slow
def test_copy_runs_and_the_analysis_name_a_database_store_without_its_password(postgres, tmp_path):
    """Their success and error lines quote the store: never its password."""
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(local)
    run = client.create_run(client.create_experiment("copied", artifact_location=(tmp_path / "a").as_uri()))
    client.set_terminated(run.info.run_id, "FINISHED")
    database = postgres("copy_secret").replace("postgresql://", "postgresql+psycopg://")
    command = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, capture_output=True,
                                           text=True, timeout=300)
    copied = command("hybrid_exp.copy_runs", "--from", local, "--to", database)
    assert copied.returncode == 0 and "copied 1 runs" in copied.stdout, copied.stderr[-2000:]
    missing = command("hybrid_exp.copy_runs", "--from", database, "--to", local, "--experiment", "nope")
    assert missing.returncode == 1 and "no experiment 'nope' in postgresql+psycopg://hybrid:***@" in missing.stderr
    analysis = command("analysis", "--experiment", "nope", "--tracking-uri", database)
    assert analysis.returncode == 2 and "no experiment 'nope' in postgresql+psycopg://hybrid:***@" in analysis.stderr
    for done in (copied, missing, analysis):
        assert PASSWORD not in done.stdout + done.stderr
