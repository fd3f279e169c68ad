"""Shared fixtures: composed configs (as Hydra would pass them) and real CIFAR-10 images."""
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from hybrid_exp import config_dir, process
from tests.helpers import CACHE, PASSWORD, TARBALL, free_port, kill_what_is_left, postgres_bin


def pytest_configure(config):
    process.setup()  # as every entry point does: the resolvers the configs use, a quiet terminal


@pytest.fixture(autouse=True)
def nothing_left_running():
    """A program a test started (helpers.start) never outlives it, whatever the test's end."""
    yield
    kill_what_is_left()


def pytest_collection_modifyitems(config, items):
    """Markers a newcomer can select by: ``gpu`` tests need a CUDA device, ``needs_cifar`` ones
    (every test that reads the real images) the JPEG copy; without it they are skipped with one
    line saying where to put it (CI checks that it is there before running them)."""
    import torch

    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    no_cifar = pytest.mark.skip(reason=f"needs the CIFAR-10 JPEG copy at {TARBALL} "
                                       f"(or CIFAR10_JPEG_TARBALL=/path/to/cifar10-jpeg.tar.gz)")
    have_cifar = TARBALL.is_file() or (CACHE / "cifar10-jpeg").is_dir()
    for item in items:
        if "cifar10_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_cifar)
            if not have_cifar:
                item.add_marker(no_cifar)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The shared JPEG copy of CIFAR-10, extracted once into a cache directory."""
    root = CACHE / "cifar10-jpeg"
    if not root.is_dir():
        if not TARBALL.is_file():
            pytest.fail(f"{TARBALL} not found: set CIFAR10_JPEG_TARBALL to cifar10-jpeg.tar.gz")
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = CACHE / f".extract-{os.getpid()}"
        with tarfile.open(TARBALL) as tar:
            tar.extractall(partial, filter="data")
        (partial / "cifar10-jpeg").rename(root)
        partial.rmdir()
    return root


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) -> the config Hydra would hand to the task, tracked in tmp_path."""

    def make(*overrides: str):
        with initialize_config_dir(config_dir(), version_base="1.3"):
            cfg = compose("config", return_hydra_config=True, overrides=[
                f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                f"checkpoint_dir={tmp_path}/checkpoints", "trainer.system_metrics=false", *overrides])
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)  # where a job writes its status
        HydraConfig.instance().set_config(cfg)  # what train() reads its choices from
        with open_dict(cfg):
            del cfg.hydra
        return cfg

    return make


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL on a free loopback port; yields a function that creates a database
    and returns its SQLAlchemy URI. As root, the server runs as an unprivileged user."""
    bin_dir = postgres_bin()
    as_user = []
    root = Path(tempfile.mkdtemp(prefix="hybrid-exp-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = "postgres" if "postgres" in {u.pw_name for u in pwd.getpwall()} else "nobody"
        as_user = ["runuser", "-u", user, "--"]
        shutil.chown(root, user)
    (root / "pw").write_text(PASSWORD)
    if as_user:
        shutil.chown(root / "pw", as_user[2])
    port = free_port()
    run = lambda *args: subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True)
    run(bin_dir / "initdb", "-D", root / "data", "-U", "hybrid", "--auth=scram-sha-256",
        f"--pwfile={root / 'pw'}", "-E", "UTF8", "--no-sync")
    run(bin_dir / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "start", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off")
    base = f"postgresql://hybrid:{PASSWORD}@127.0.0.1:{port}"

    def database(name: str) -> str:
        import psycopg  # the driver the compose image installs
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{base}/{name}"

    yield database
    run(bin_dir / "pg_ctl", "-D", root / "data", "-m", "immediate", "stop")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: a disk that fills up (mounting needs root)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield folder
    subprocess.run(["umount", "-l", str(folder)])
