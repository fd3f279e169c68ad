"""Every config group composes and instantiates; the config contract holds."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from hybrid_exp import config_dir
from hybrid_exp.schema import config_hash

CONF = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "model/block", "trainer", "optim", "logger",
                                   "experiment", "hparams_search"])
def test_every_option_of_every_group_composes(make_cfg, group):
    assert options(group), f"conf/{group} is empty"
    required = {"data=image_folder": ["data.root=/nonexistent", "data.num_classes=10"]}  # no folder to count
    for option in options(group):
        cfg = make_cfg(f"{group}={option}", *required.get(f"{group}={option}", []))
        if group.startswith("model"):
            net = instantiate(cfg.model)
            assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        if group == "data":
            assert instantiate(cfg.data, seeds=[0]).batch_size == cfg.data.batch_size


def test_block_override_equals_the_matching_preset(make_cfg):
    swapped, preset = make_cfg("model=separable", "model/block=standard"), make_cfg("model=standard")
    assert swapped.model == preset.model
    assert config_hash(swapped) == config_hash(preset)


def test_config_hash_ignores_paths_and_logging_but_not_training_keys(make_cfg):
    base = config_hash(make_cfg())
    assert config_hash(make_cfg("data.root=/elsewhere", "logger.experiment_name=other")) == base
    assert config_hash(make_cfg("trainer.compile=true", "trainer.channels_last=false")) == base
    assert config_hash(make_cfg("trainer.precision=bf16-mixed")) != base
    assert config_hash(make_cfg("optim.lr=0.05")) != base
    assert config_hash(make_cfg("seed=1")) != base
    assert config_hash(make_cfg("rerun=true", "checkpoint_dir=/x", "trainer.cuda_graph=true")) == base


def test_the_hash_holds_the_precision_and_device_a_run_really_trains_on(make_cfg):
    """precision=auto is resolved before hashing: on this machine (no GPU) it is fp32 on the CPU,
    so an fp32 CPU run is never mistaken for a bf16 GPU run of the same config, or the reverse."""
    from hybrid_exp.schema import run_schema

    auto = config_hash(make_cfg())
    explicit = config_hash(make_cfg("trainer.precision=32-true", "trainer.accelerator=cpu"))
    assert (auto == explicit) == (not torch.cuda.is_available())
    schema = run_schema(make_cfg("seed=3"))
    assert schema["setup_hash"] == run_schema(make_cfg("seed=4"))["setup_hash"]  # seeds of one setup
    assert schema["config_hash"] != run_schema(make_cfg("seed=4"))["config_hash"]
    assert "trainer.precision=auto" not in schema["protocol"] and "trainer.accelerator=auto" not in schema["protocol"]
    assert run_schema(make_cfg("model=hybrid"))["protocol_hash"] == schema["protocol_hash"]
    assert run_schema(make_cfg("trainer.max_epochs=2"))["protocol_hash"] != schema["protocol_hash"]


def test_every_lightning_trainer_argument_is_listed_at_lightnings_default(make_cfg):
    """trainer.<name>=value needs no '+': the trainer config lists every Trainer argument."""
    import inspect

    import pytorch_lightning as pl

    ours = {"max_epochs", "accelerator", "devices", "precision", "benchmark", "enable_checkpointing",
            "enable_model_summary", "num_sanity_val_steps"}
    in_code = {"self", "logger", "callbacks", "plugins"}
    trainer = make_cfg().trainer
    for name, parameter in inspect.signature(pl.Trainer.__init__).parameters.items():
        if name not in in_code:
            assert name in trainer, f"conf/trainer/default.yaml lacks Lightning's {name}"
            if name not in ours:
                assert trainer[name] == parameter.default, name
    assert make_cfg("trainer.fast_dev_run=true", "trainer.gradient_clip_val=1.0").trainer.fast_dev_run


def test_defaults_follow_the_paper(make_cfg):
    cfg = make_cfg()
    assert (cfg.seed, cfg.trainer.max_epochs, cfg.data.eval_size) == (0, 190, 6000)
    assert cfg.logger.tracking_uri.startswith("sqlite:///")
    assert make_cfg("experiment=paper").trainer.max_epochs == 190


@pytest.mark.parametrize("override, listed", [("model=nope", "separable"),
                                              ("model/block=nope", "standard"),
                                              ("data=nope", "cifar10")])
def test_unknown_choice_lists_the_valid_ones(override, listed):
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", override], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert "no such option" in run.stderr and "options: " in run.stderr and listed in run.stderr


@pytest.mark.parametrize("environment, expected", [(None, "sqlite:///mlflow.db"),
                                                   ("http://127.0.0.1:5000", "http://127.0.0.1:5000")])
def test_mlflow_tracking_uri_from_the_environment_is_the_default(monkeypatch, environment, expected):
    from hydra import compose, initialize_config_dir
    if environment:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", environment)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with initialize_config_dir(config_dir(), version_base="1.3"):
        assert compose("config").logger.tracking_uri == expected


# Run identity, pinned: a relaunch skips finished configs and pairs runs by these hashes, and
# seed 0's initial weights start every trial. A change here retrains every finished config:
# it must be deliberate, with a migration note (docs/scaling.md, "Run identity").
GOLDEN = {
    "default": ([], "67c9fd9b2fc78f0a", "5a4c2a5b5ff2e23c", "872224cb0de25a1e", 1928.8827840309527),
    "fig4-inception": (["experiment=fig4", "model=inception"], "39912c478f8a93f7", "f3f86f262c1bc2ce",
                       "872224cb0de25a1e", 2721.958628132265),
    "fractalnet": (["model=fractalnet"], "0a3f6f7ab19f395d", "cc4d4b3f60022287", "872224cb0de25a1e",
                   20694.402602259688),
    "quick-seed3": (["experiment=quick", "seed=3"], "0ace8c07f48a3844", "aa01ebe8e22af2ec",
                    "47a7322f559e53ec", 502.75396363867185),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="pinned as a CPU resolves precision=auto")
@pytest.mark.parametrize("name", GOLDEN)
def test_run_identity_and_seed0_weights_are_pinned(name):
    from hydra import compose, initialize_config_dir

    from hybrid_exp.members import build_network, member_config
    from hybrid_exp.schema import run_schema

    overrides, config, setup, protocol, weights = GOLDEN[name]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    schema = run_schema(cfg)
    assert (schema["config_hash"], schema["setup_hash"], schema["protocol_hash"]) == (config, setup, protocol)
    state = build_network(member_config(cfg, 0)).state_dict()
    assert sum(float(v.double().sum()) for v in state.values() if v.is_floating_point()) == pytest.approx(
        weights, rel=1e-12)


def test_a_checkouts_commit_says_dirty_and_its_diff_says_how(tmp_path):
    import subprocess

    from hybrid_exp.schema import git_diff, git_sha

    assert (git_sha(tmp_path), git_diff(tmp_path)) == ("unknown", "")  # not a git checkout
    git = lambda *args: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                                       cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "unit.py").write_text("width = 64\n")
    git("add", "unit.py")
    git("commit", "-qm", "a unit")
    head = git_sha(tmp_path)
    assert len(head) == 40 and git_diff(tmp_path) == ""
    (tmp_path / "unit.py").write_text("width = 32\n")
    assert git_sha(tmp_path) == f"{head}+dirty"
    assert "-width = 64\n+width = 32" in git_diff(tmp_path)


def test_the_run_identity_section_names_what_the_code_leaves_out_and_compares_under():
    from hybrid_exp.schema import DEFAULTS_OUT_OF_HASH, PROTOCOL_KEYS, UNHASHED_KEYS

    section = (Path(__file__).resolve().parent.parent / "docs/scaling.md").read_text().split("## Run identity")[1]
    section = section.split("\n## ")[0].replace("\n", " ")
    listed = section.split("What stays out (`UNHASHED_KEYS`)")[1].split("(a test keeps")[0]
    assert sorted(re.findall(r"`([^`]+)`", listed)) == sorted(UNHASHED_KEYS)
    assert all(f"`{key}`" in section for key in PROTOCOL_KEYS)
    assert all(f"`{key}: null`" in section or key in section for key in DEFAULTS_OUT_OF_HASH)

