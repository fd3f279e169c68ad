"""An installed wheel (not only a source checkout) finds its Hydra configs."""
import os
import subprocess
import sys
import zipfile

from tests.conftest import REPO


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
