"""An installed wheel (not only a source checkout) finds its Hydra configs."""
import os
import subprocess
import sys
import zipfile

from tests.helpers import REPO


def test_wheel_carries_the_configs_and_runs_from_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", tmp_path / "dist", REPO], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("hybrid_exp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("config.yaml", "model/separable.yaml", "model/block/standard.yaml",
                   "experiment/quick.yaml"):
        assert f"hybrid_exp/conf/{config}" in names
    assert "analysis/runs.py" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    job = subprocess.run([sys.executable, "-c", "import hybrid_exp.cli as m; print(m.config_dir())"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert job.stdout.strip() == str(site / "hybrid_exp" / "conf")
    shown = subprocess.run([sys.executable, "-m", "hybrid_exp", "model=standard", "--cfg", "job"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "hybrid_exp.blocks.Standard" in shown.stdout


def test_the_readmes_install_lets_any_hydra_app_find_the_launchers_and_the_sweeper(tmp_path):
    """Hydra finds plugins by scanning the hydra_plugins namespace: an editable install must put
    the checkout on sys.path (pyproject's package-dir), not hide it behind an import hook, as
    setuptools does for packages mapped elsewhere (conf/ as hybrid_exp.conf did)."""
    found = subprocess.run([sys.executable, "-c", (
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.launcher import Launcher\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "print(*(p.__name__ for kind in (Launcher, Sweeper) for p in Plugins.instance().discover(kind)))")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)  # outside the checkout
    assert {"GPULauncher", "OptunaSweeper"} <= set(found.stdout.split()), found.stderr[-2000:]
