"""Shared fixtures: composed configs (as Hydra would pass them) and real CIFAR-10 images."""
import os
import tarfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from hybrid_exp import config_dir

REPO = Path(__file__).resolve().parent.parent
TARBALL = Path(os.environ.get("CIFAR10_JPEG_TARBALL", REPO.parent / "shared/data/cifar10-jpeg.tar.gz"))
CACHE = Path(os.environ.get("HYBRID_EXP_TEST_CACHE", Path.home() / ".cache/hybrid-exp-tests"))

# Training settings for seconds-long runs on 2 CPU cores, and a stacked network that still learns.
FAST = ["data.batch_size=64", "optim.warmup_epochs=0", "trainer.max_epochs=2"]
TINY = ["model.width=16", "model.depth=1", *FAST]
PARALLEL = "hydra.launcher.n_jobs=2"  # test grids run two jobs at a time (each its own process)


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
