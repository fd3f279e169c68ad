"""The zoo from the command line: the card's command, the experiment presets, the docs table."""
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis import load_runs
from hybrid_exp import config_dir, variants_table
from hybrid_exp.train import train
from tests.helpers import FAST, PARALLEL, TINY

SYNTHETIC_DATA = ["data=synthetic", "data.train_subset=256", "data.val_size=64", "data.eval_size=128"]
SYNTHETIC = [*SYNTHETIC_DATA, *TINY, "trainer.max_epochs=1"]


def hybrid_exp(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hybrid_exp", *args, PARALLEL], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_cards_command_runs_on_real_cifar10(tmp_path, cifar10_root):
    run = hybrid_exp("-m", "model=inception,resnext,hybrid", "seed=range(1)", "experiment=quick",
                     f"data.root={cifar10_root}", "data.train_subset=2000", "data.val_size=200",
                     "data.eval_size=500", *TINY, "trainer.max_epochs=3", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(runs.run_name) == ["hybrid-seed0", "inception-seed0", "resnext-seed0"]
    assert (runs.status == "FINISHED").all() and (runs["test/error"] < 85).all(), runs


FIG4 = ["separable", "inception", "resnext", "reformulated_inception", "equivalent", "hybrid",
        "hybrid_path_init", "separable_path_init", "resnext_depthwise", "extreme_inception",
        "pointwise_depthwise"]


@pytest.mark.slow
def test_fig4_preset_runs_the_six_setups_and_the_controls_into_its_own_experiment(tmp_path):
    run = hybrid_exp("-m", "experiment=fig4", "seed=0", *SYNTHETIC, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = load_runs("fig4", f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(runs.model) == sorted(FIG4)
    assert (runs.status == "FINISHED").all()
    assert runs.config_hash.nunique() == 11  # eleven distinct setups, all on the paper's protocol
    assert set(runs.block) == set(runs.model)


def test_fig4_matched_arms_are_within_15_percent_of_separables_size(make_cfg):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hybrid_exp.module import complexity

    size = lambda model: complexity(instantiate(make_cfg(f"model={model}").model))
    with initialize_config_dir(config_dir(), version_base="1.3"):
        preset = compose("config", overrides=["experiment=fig4_matched"], return_hydra_config=True)
    models = str(preset.hydra.sweeper.params.model).split(",")
    base = size("separable")
    assert "separable" in models and len(models) == 9
    for model in models:
        measured = size(model)
        for key in ("params", "mult_adds"):
            assert abs(measured[key] / base[key] - 1) <= 0.15, (model, key, measured[key], base[key])
    assert size("inception")["params"] > 2.5 * base["params"]  # what the matching corrects


@pytest.mark.slow
def test_cardinality_and_nonlinearity_presets_sweep_their_setups(tmp_path):
    run = hybrid_exp("-m", "experiment=cardinality", "model.block.channels_per_group=1,16", "seed=0",
                     *SYNTHETIC, cwd=tmp_path)  # the command line narrows the preset's sweep
    assert run.returncode == 0, run.stderr[-3000:]
    runs = load_runs("cardinality", f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 2 and runs.params.nunique() == 2 and set(runs.model) == {"grouped"}

    run = hybrid_exp("experiment=nonlinearity", "seed=0", *SYNTHETIC, cwd=tmp_path)  # a grid without -m
    assert run.returncode == 0, run.stderr[-3000:]
    runs = load_runs("nonlinearity", f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(runs.model) == ["separable", "separable_act", "separable_bn", "separable_elu"]


@pytest.mark.slow
def test_fig5_and_fig6_presets_run_their_backbone_with_and_without_separable_units(tmp_path):
    small = {"fig5": ("fractalnet", ["model.columns=2", "model.widths=[8,8,8,8,8]"]),
             "fig6": ("darknet", ["model.layers='8 16 M 16 M 32 M 32 m 32'"])}
    for experiment, (model, sizes) in small.items():
        run = hybrid_exp("-m", f"experiment={experiment}", "seed=0", *SYNTHETIC_DATA, *FAST,
                         "trainer.max_epochs=1", *sizes, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        runs = load_runs(experiment, f"sqlite:///{tmp_path}/mlflow.db")
        assert sorted(runs.run_name) == [f"{model}+separable-seed0", f"{model}+standard-seed0"]
        assert set(runs.backbone) == {model} and (runs.status == "FINISHED").all()
        assert runs.set_index("block").params["standard"] > runs.set_index("block").params["separable"]


def test_impossible_shape_fails_in_one_sentence_before_any_run(tmp_path):
    run = hybrid_exp("model=grouped", "model.block.groups=3", *SYNTHETIC, cwd=tmp_path)
    assert run.returncode != 0
    assert "groups=3 does not divide C_in=16 (choose a divisor of model.width)" in run.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started, nothing is RUNNING


def test_docs_table_is_generated_from_the_code():
    text = variants_table.DOC.read_text()
    assert variants_table.render(text) == text, "docs/variants.md is stale: run python -m hybrid_exp.variants_table"
    for name in variants_table.presets():
        assert f"| `{name}` |" in text
    for backbone in ("fractalnet", "darknet", "darknet19"):  # Figs. 5-6: both units listed
        assert f"| `{backbone}` | {backbone.rstrip('19')} | `separable` |" in text


DEBUG = sorted(p.stem for p in (Path(config_dir()) / "debug").glob("*.yaml"))


@pytest.mark.parametrize("debug", DEBUG)
def test_every_debug_preset_trains_into_the_debug_experiment_with_the_users_tags(make_cfg, debug):
    cfg = make_cfg(f"debug={debug}", *SYNTHETIC_DATA, "model.width=8", "model.depth=1",
                   "trainer.max_epochs=1", "tags=[smoke,check]")
    (result,) = train(cfg)
    assert result.status == "finished" and "test/error" in result.metrics
    runs = load_runs("debug", cfg.logger.tracking_uri)
    assert len(runs) == 1 and runs.status.iloc[0] == "FINISHED"
    assert MlflowClient(cfg.logger.tracking_uri).get_run(result.run_id).data.tags["tags"] == "smoke, check"


@pytest.mark.slow
def test_debug_limit_scores_every_evaluation_image_not_the_first_batches_of_a_sorted_test_set(make_cfg):
    """Its first test batches alone can be one class (an image folder is stored class by class)."""
    import numpy as np

    cfg = make_cfg("debug=limit", *SYNTHETIC_DATA, "data.eval_size=512", "model.width=8", "model.depth=1",
                   "trainer.max_epochs=1")
    (result,) = train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    with np.load(client.download_artifacts(result.run_id, "test_predictions.npz")) as saved:
        assert len(saved["indices"]) == len(saved["predicted"]) == 512  # every image of the subset, scored


def test_a_grid_preset_shows_what_it_sweeps_in_the_job_config():
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", "experiment=fig4", "--cfg", "job"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0
    assert "grid:\n  model: separable,inception,resnext,reformulated_inception,equivalent,hybrid" in run.stdout


def test_the_readme_says_how_many_setups_each_figure_preset_sweeps():
    """What a user reads before launching 190-epoch grids: the preset's own count, not the paper's."""
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for line in re.findall(r"python -m hybrid_exp -m experiment=(\w+) seed=.*# .*?(\d+) setups", readme):
        preset = yaml.safe_load((Path(config_dir()) / "experiment" / f"{line[0]}.yaml").read_text())
        assert len(preset["grid"]["model"].split(",")) == int(line[1]), line
    assert re.search(r"experiment=fig4 seed=.*# Fig. 4: 11 setups", readme)


@pytest.mark.slow
def test_the_add_your_own_unit_guide_works_as_written(tmp_path):
    """docs/variants.md, 'Add your own unit', followed block by block in a copy of the package:
    the class and the YAML go where their first lines say, the grid and the analysis run as
    shown (small: synthetic data, 2 seeds, 1 epoch); then the class joined with torch.cat is
    refused before anything exists."""
    import os
    import re
    import shlex
    import shutil

    repo = Path(__file__).resolve().parent.parent
    guide = (repo / "docs/variants.md").read_text().split("## Add your own unit")[1].split("\n## ")[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", guide, flags=re.S)
    source = tmp_path / "source"
    shutil.copytree(repo / "hybrid_exp", source / "hybrid_exp", ignore=shutil.ignore_patterns("__pycache__"))
    for language, text in blocks:
        target = re.match(r"# (\S+)( \(appended\))?\n", text)
        if language in ("python", "yaml") and target:
            path = source / target.group(1)
            path.write_text((path.read_text() + "\n\n" if target.group(2) else "") + text)
    commands = [shlex.split(line) for language, text in blocks if language == "bash" for line in text.splitlines()]
    assert [c[:3] for c in commands] == [["python", "-m", "hybrid_exp"], ["python", "-m", "analysis"]]
    small = ["data=synthetic", "model.width=8", "model.depth=1", "trainer.max_epochs=1"]
    grid = [*commands[0][1:], *small]
    grid[grid.index("seed=range(10)")] = "seed=range(2)"
    run = lambda args: subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                                      timeout=900, env={**os.environ, "PYTHONPATH": str(source)})
    trained = run(grid)
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = run(commands[1][1:])
    assert report.returncode == 0, report.stderr[-3000:]
    assert "separable+two_path" in (tmp_path / "analysis/reports/hybrid-exp/report.md").read_text()

    blocks_py = source / "hybrid_exp/blocks.py"
    blocks_py.write_text(blocks_py.read_text().replace(
        "return cat_channels([path(x) for path in self.paths], self.members)",
        "return torch.cat([path(x) for path in self.paths], dim=1)"))
    (tmp_path / "again").mkdir()
    refused = subprocess.run([sys.executable, *grid], cwd=tmp_path / "again", capture_output=True, text=True,
                             timeout=900, env={**os.environ, "PYTHONPATH": str(source)})
    assert refused.returncode != 0 and refused.stderr.strip().startswith(
        "model/block=two_path (TwoPath) breaks the fusion contract: fused, each member's output differs"), \
        refused.stderr[-2000:]
    assert not list((tmp_path / "again").iterdir())

