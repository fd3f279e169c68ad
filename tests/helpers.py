"""What the tests share: settings for seconds-long runs, small networks, and helpers that log
runs or start programs. Imported by the tests (``from tests.helpers import ...``); the fixtures
are in conftest.py. No test module imports another."""
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.table import PAPER_PROTOCOL
from hybrid_exp import config_dir

REPO = Path(__file__).resolve().parent.parent
TARBALL = Path(os.environ.get("CIFAR10_JPEG_TARBALL", REPO.parent / "shared/data/cifar10-jpeg.tar.gz"))
CACHE = Path(os.environ.get("HYBRID_EXP_TEST_CACHE", Path.home() / ".cache/hybrid-exp-tests"))

# Training settings for seconds-long runs on 2 CPU cores, and a stacked network that still learns.
FAST = ["data.batch_size=64", "optim.warmup_epochs=0", "trainer.max_epochs=2"]
TINY = ["model.width=16", "model.depth=1", *FAST]
PARALLEL = "hydra.launcher.n_jobs=2"  # test grids run two jobs at a time (each its own process)
# Synthetic data and a stacked network of width 8: a grid's jobs in seconds, on no real images.
SMALL = ["data=synthetic", "data.train_subset=1024", "data.val_size=128", "data.eval_size=128",
         "model.width=8", "model.depth=1", "data.batch_size=64", "optim.warmup_epochs=0"]
BLOCKS = sorted(p.stem for p in (Path(config_dir()) / "model/block").glob("*.yaml"))  # the registry


def backbone_presets() -> dict[str, str]:
    """{backbone class: a ``model=`` preset that builds it} for every backbone the configs hold
    (read from conf/model/: a preset's own ``_target_``, or the one of a config its defaults
    take): a new backbone is tested by adding its YAML. The paper's baseline where it applies."""
    conf = Path(config_dir())

    def target(path: Path) -> str | None:
        preset = yaml.safe_load(path.read_text())
        taken = (d.split("@")[0] for d in preset.get("defaults", []) if isinstance(d, str) and d != "_self_")
        return preset.get("_target_") or next(filter(None, (
            target(conf / f"{d.lstrip('/')}.yaml" if d.startswith("/") else path.parent / f"{d}.yaml")
            for d in taken)), None)

    found = {}
    for path in sorted((conf / "model").glob("*.yaml"), key=lambda p: (p.stem != "separable", p.stem)):
        found.setdefault(target(path).rsplit(".", 1)[-1], path.stem)
    return found


# Each backbone small, so a step (or a fused array's) takes milliseconds; a backbone not listed
# is tested at its preset's size.
SMALL_SIZES = {"Stacked": ["model.width=8", "model.depth=1"],
               "FractalNet": ["model.columns=2", "model.widths=[8,8,16,16,16]"],
               "DarkNet": ["model.layers='8 8 16 M 16 M 32 M 32 m 64'"]}
BACKBONES = {name.lower(): [f"model={preset}", *SMALL_SIZES.get(name, [])]
             for name, preset in backbone_presets().items()}
SMALL_FRACTAL, SMALL_DARKNET = BACKBONES["fractalnet"], BACKBONES["darknet"]
PASSWORD = "test-only-password"  # the throwaway PostgreSQL's and the servers' (tests only)

# Synthetic runs for the analysis, logged as training logs them.
PAPER = dict(PAPER_PROTOCOL)
BASE = [10.0, 11.0, 12.0, 13.0, 14.0]  # separable, seeds 0-4
# Stores users really have, with known truth (issue: analysis that stays right in them).
PAPER_SIX = {"separable": 0.0, "inception": 1.0, "resnext": 0.6, "reformulated_inception": 0.8,
             "equivalent": 0.05, "hybrid": 0.2}  # true mean delta of each setup


def log_run(client, experiment_id, setup, seed, error, status="FINISHED", start=0, knobs=None,
            backbone="stacked", block=None, protocol=None, predictions=None, full=None):
    """A run as training logs it: schema tags, the config as params, metrics (``full``: its
    error on the whole test set), predictions."""
    protocol = protocol or PAPER
    text = ", ".join(f"{k}={v}" for k, v in sorted(protocol.items()))
    run = client.create_run(experiment_id, run_name=f"{setup}-seed{seed}", start_time=1_000 + start,
                            tags={"setup": setup, "model": setup, "block": block or setup,
                                  "backbone": backbone, "seed": str(seed), "protocol": text,
                                  "protocol_hash": str(abs(hash(text)) % 10**8),
                                  "setup_hash": f"{setup}-{knobs}-{text}",
                                  "config_hash": f"{setup}-{seed}-{knobs}-{text}"})
    run_id = run.info.run_id
    params = {"params": str(1000 * (1 + len(setup))), "mult_adds": str(50_000 * len(setup)),
              "seed": str(seed), "checkpoint_dir": f"/somewhere/{start}", **protocol, **(knobs or {})}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    if error is not None:
        for epoch in range(3):  # a learning curve ending at the final error
            client.log_metric(run_id, "val/error", error + 10 * (2 - epoch), step=epoch)
        client.log_metric(run_id, "test/error", error, step=3)
    if full is not None:
        client.log_metric(run_id, "test_full/error", full, step=3)
    if predictions is not None:
        folder = client.tracking_uri.removeprefix("sqlite:///").rsplit("/", 1)[0]
        path = f"{folder}/test_predictions.npz"
        np.savez(path, **predictions)
        client.log_artifact(run_id, path)
    client.set_terminated(run_id, status, end_time=2_000 + start)
    return run_id


def new_experiment(tmp_path, name: str):
    """(tracking URI, client, experiment id) of a fresh SQLite store holding experiment ``name``."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment(name, artifact_location=(tmp_path / "a").as_uri())


def small_real_grid(tmp_path, cifar10_root) -> None:
    """separable, equivalent and inception, 2 seeds, 1 epoch on real images, into tmp_path."""
    grid = subprocess.run(
        [sys.executable, "-m", "hybrid_exp", "-m", "model=separable,equivalent,inception",
         "seed=0,1", f"data.root={cifar10_root}", "data.train_subset=1000", "data.val_size=200",
         "data.eval_size=500", *TINY, "trainer.max_epochs=1", PARALLEL],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert grid.returncode == 0, grid.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not installed:
        pytest.fail("PostgreSQL not installed: apt-get install postgresql-15 (.ci/run does this)")
    return installed[-1].parent


def sgd_steps(net, members: int, data, steps: int = 4):
    """The Classifier after ``steps`` training steps of the platform's module and optimizer settings, in the net's dtype."""
    from hybrid_exp.module import Classifier  # torch: loaded by the tests that train

    module = Classifier(net, lr=0.05, members=members)
    module.prepare_fit(module.configure_optimizers(), steps_per_epoch=steps, epochs=2)
    module.on_train_epoch_start()
    for step, (x, y) in zip(range(steps), data.train_dataloader()):
        module.fit_step((x.to(next(net.parameters()).dtype), y), step)  # the training step itself
    return module


def write_image_folder(root: Path, classes=("a", "b"), per_class=(24, 8), seed: int = 0) -> Path:
    """<root>/{train,test}/<class>/*.png: random 32x32 images, ``per_class`` (train, test) each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


STARTED: list[subprocess.Popen] = []  # what start() started: conftest kills what a test leaves running


def sigint_as_on_a_terminal() -> None:
    """In a child, before its program runs: SIGINT's default action. A test runner started from
    a process that ignores SIGINT (nohup, ``&`` in a script, some CI runners) hands that on to
    every child, and a test's Ctrl-C would never land."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(command: list[str], **kwargs) -> subprocess.Popen:
    """A program a test signals or kills: in a process group of its own (``os.killpg`` reaches
    its children too), SIGINT as on a terminal, output piped as text; killed with its group
    when the test ends, however it ends."""
    process = subprocess.Popen(command, preexec_fn=sigint_as_on_a_terminal, **{
        "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "start_new_session": True, **kwargs})
    STARTED.append(process)
    return process


def kill_what_is_left() -> None:
    """Every process group ``start`` made whose leader still runs, SIGKILLed and reaped."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

