"""Stored text never chooses code: every crafted config.yaml artifact and every crafted config
is refused in one sentence naming the key, and nothing it names runs (a marker file never
appears). Nothing deletes what it did not write: the dataset's extraction, download and cache."""
import os
import subprocess
import sys
import tarfile

import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf

from hybrid_exp.errors import ConfigError
from hybrid_exp.registry import build, registry


class Payload:
    """A pickle that runs a shell command when loaded: what a hostile torch.load would run."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real SQLite MLflow store with one experiment, shared by the crafted runs."""
    folder = tmp_path_factory.mktemp("store")
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    return client, client.create_experiment("x", artifact_location=(folder / "a").as_uri()), folder


def crafted_run(store, tmp_path, config_text: str) -> str:
    """A FINISHED-looking run whose config.yaml artifact is ``config_text``, with weights."""
    client, experiment, _ = store
    run_id = client.create_run(experiment).info.run_id
    (tmp_path / "config.yaml").write_text(config_text)
    torch.save({}, tmp_path / "model.pt")
    client.log_artifact(run_id, str(tmp_path / "config.yaml"))
    client.log_artifact(run_id, str(tmp_path / "model.pt"))
    return run_id


SYNTHETIC = "  _target_: hybrid_exp.data.Synthetic\n  batch_size: 8\n"
STACKED = ("model:\n  _target_: hybrid_exp.backbones.Stacked\n  width: 8\n  depth: 1\n"
           "  block:\n    _target_: hybrid_exp.blocks.Separable\n    _partial_: true\n")
# (a crafted config.yaml, with {run} for the marker's shell command, the key the sentence names)
CRAFTED = {
    "interpolation to a foreign node": (
        "seed: 0\n" + STACKED + "data:\n" + SYNTHETIC + "  flip: ${pwn.loaded}\n"
        "pwn:\n  loaded:\n    _target_: torch.load\n    f: {pickle}\n    weights_only: false\n",
        "the interpolation '\\$\\{pwn.loaded\\}' at data.flip"),
    "environment resolver": ("seed: 0\n" + STACKED + "data:\n" + SYNTHETIC + "  root: ${oc.env:HOME}\n",
                             "at data.root"),
    "the project's own resolver": (
        "seed: 0\n" + STACKED + "data:\n" + SYNTHETIC + "  num_classes: ${class_folders:/}\n",
        "at data.num_classes"),
    "escaped interpolation": ("seed: 0\n" + STACKED + "data:\n" + SYNTHETIC + "  root: '\\${oc.env:HOME}'\n",
                              "at data.root"),
    "foreign target in a list": (
        "seed: 0\n" + STACKED + "  extra:\n    - _target_: os.system\n      command: {run}\ndata:\n" + SYNTHETIC,
        "_target_ 'os.system' at model.extra\\[0\\]"),
    "foreign target in _args_": (
        "seed: 0\n" + STACKED + "data:\n" + SYNTHETIC + "  _args_:\n    - _target_: subprocess.run\n"
        "      args: {run}\n      shell: true\n", "data._args_|'subprocess.run' at data._args_\\[0\\]"),
    "torch.load of a pickle": (
        "seed: 0\nmodel:\n  _target_: torch.load\n  f: {pickle}\n  weights_only: false\ndata:\n" + SYNTHETIC,
        "_target_ 'torch.load' at model"),
    "pickle.loads": ("seed: 0\nmodel:\n  _target_: pickle.loads\n  _args_: ['{pickle}']\ndata:\n" + SYNTHETIC,
                     "_target_ 'pickle.loads' at model"),
    "os.system": ("seed: 0\nmodel:\n  _target_: os.system\n  command: {run}\ndata:\n" + SYNTHETIC,
                  "_target_ 'os.system' at model"),
    "a project module's import": (
        "seed: 0\nmodel:\n  _target_: hybrid_exp.data.os.system\n  command: {run}\ndata:\n" + SYNTHETIC,
        "_target_ 'hybrid_exp.data.os.system' at model"),
    "relative import": ("seed: 0\nmodel:\n  _target_: .os.system\n  command: {run}\ndata:\n" + SYNTHETIC,
                        "_target_ '.os.system' at model"),
    "_recursive_ flag": ("seed: 0\n" + STACKED + "data:\n" + SYNTHETIC + "  _recursive_: false\n",
                         "data._recursive_"),
    "_convert_ flag": ("seed: 0\n" + STACKED + "  _convert_: all\ndata:\n" + SYNTHETIC, "model._convert_"),
    "_partial_ on a dataset": ("seed: 0\n" + STACKED + "data:\n" + SYNTHETIC + "  _partial_: true\n",
                               "data._partial_"),
    "no YAML": ("seed: [0\nmodel: {run}\n", "cannot be read"),
    "foreign target as the seed": (
        "seed:\n  _target_: os.system\n  command: {run}\n" + STACKED + "data:\n" + SYNTHETIC,
        "_target_ 'os.system' at data.seeds\\[0\\]"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_stored_config_runs_nothing_and_is_refused_naming_its_key(store, tmp_path, case):
    from hybrid_exp.evaluate import evaluate

    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pkl"
    torch.save(Payload(f"touch {marker}"), payload)  # torch.load(weights_only=False) would run it
    text, key = CRAFTED[case]
    run_id = crafted_run(store, tmp_path, text.replace("{run}", f"'touch {marker}'").replace("{pickle}", str(payload)))
    with pytest.raises(ConfigError, match=f"run {run_id}'s config.yaml .*({key}).*refusing"):
        evaluate(run_id, store[0])
    assert not marker.exists()


def test_evaluate_on_a_crafted_store_says_one_sentence_and_runs_nothing(store, tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pkl"
    torch.save(Payload(f"touch {marker}"), payload)  # torch.load(weights_only=False) would run it
    text, _ = CRAFTED["interpolation to a foreign node"]
    run_id = crafted_run(store, tmp_path, text.replace("{pickle}", str(payload)))
    done = subprocess.run([sys.executable, "-m", "hybrid_exp.evaluate", run_id, "--tracking-uri",
                           f"sqlite:///{store[2]}/mlflow.db"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().count("\n") == 0 and "edited after the run; refusing to build" in done.stderr
    assert "evaluate/" not in done.stdout and not marker.exists()


@pytest.mark.parametrize("case, sentence", [
    ("no config.yaml", "has no config.yaml to rebuild its network from"),
    ("a quote in the name", "no run is named separable-seed0' or '1'='1: hybrid-exp names runs"),
])
def test_evaluate_of_a_run_it_cannot_rebuild_is_one_sentence(store, case, sentence):
    client, experiment, folder = store
    run = client.create_run(experiment).info.run_id  # no artifacts at all
    name = run if case == "no config.yaml" else "separable-seed0' or '1'='1"
    done = subprocess.run([sys.executable, "-m", "hybrid_exp.evaluate", name, "--experiment", "x",
                           "--tracking-uri", f"sqlite:///{folder}/mlflow.db"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().count("\n") == 0 and sentence in done.stderr


BASE = {"seed": 0, "model": {"_target_": "hybrid_exp.backbones.Stacked", "width": 8},
        "data": {"_target_": "hybrid_exp.data.Synthetic", "batch_size": 8}}
# (a config as Hydra composes one, with its interpolations, the part built, the sentence's key)
COMPOSED = {
    "interpolation to a foreign node": ({**BASE, "data": {**BASE["data"], "flip": "${pwn}"},
                                         "pwn": {"_target_": "os.system", "command": "{run}"}},
                                        "data", "'os.system' at data.flip"),
    "foreign target in a nested node": ({**BASE, "model": {**BASE["model"], "block": {
        "_target_": "subprocess.run", "args": "{run}", "shell": True}}}, "model", "'subprocess.run' at model.block"),
    "a target that is no name": ({**BASE, "model": {"_target_": {"a": 1}}}, "model", "\\{'a': 1\\} at model"),
    "_args_ beside a project class": ({**BASE, "data": {**BASE["data"], "_args_": [1]}}, "data", "data._args_"),
}


@pytest.mark.parametrize("case", COMPOSED)
def test_a_composed_config_builds_only_the_projects_classes(tmp_path, case):
    marker = tmp_path / "pwned"
    tree, part, key = COMPOSED[case]
    cfg = OmegaConf.create(OmegaConf.to_yaml(tree).replace("'{run}'", f"'touch {marker}'"))
    with pytest.raises(ConfigError, match=f"{key}.*refusing"):
        build(cfg, part)
    assert not marker.exists()


def test_only_model_and_data_are_built_and_every_project_unit_is_registered():
    cfg = OmegaConf.create({**BASE, "optim": {"_target_": "hybrid_exp.data.Synthetic"}})
    with pytest.raises(ValueError, match="only model and data are built"):
        build(cfg, "optim")
    assert {"hybrid_exp.backbones.Stacked", "hybrid_exp.blocks.Separable", "hybrid_exp.data.CIFAR10",
            "hybrid_exp.backbones.FractalNet", "hybrid_exp.blocks.ResNeXt"} <= set(registry())
    assert registry()["hybrid_exp.blocks.Separable"] == {"_partial_"}  # the blocks' own use
    assert build(OmegaConf.create(BASE), "data", seeds=[3]).seeds == [3]


# ------------------------------------------------------------ nothing deleted it did not write


def test_extracting_never_replaces_a_folder_that_is_not_the_datasets(tmp_path):
    from hybrid_exp.dataset_files import extract
    from hybrid_exp.errors import DataError

    (tmp_path / "src" / "batches").mkdir(parents=True)
    (tmp_path / "src" / "batches" / "data_batch_1").write_text("new")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "batches", arcname="batches")
    mine = tmp_path / "batches" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("mine")
    with pytest.raises(DataError, match="batches is in the way of the extracted dataset.*move it away"):
        extract(tmp_path / "a.tar.gz", "batches")
    assert mine.read_text() == "mine" and not (tmp_path / "batches" / "data_batch_1").exists()
    mine.unlink()  # an empty folder of that name is taken
    extract(tmp_path / "a.tar.gz", "batches")
    assert (tmp_path / "batches" / "data_batch_1").read_text() == "new"


def test_a_failed_download_deletes_only_its_own_partial_file(tmp_path):
    from hybrid_exp.dataset_files import fetch
    from hybrid_exp.errors import DataError

    mine = tmp_path / "archive.tar.gz.part"  # a file of the user's, named as the old partial was
    mine.write_text("mine")
    with pytest.raises(DataError, match="could not download"):
        fetch((tmp_path / "absent").as_uri(), tmp_path / "archive.tar.gz", "0" * 32, "x", "a folder")
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.gz.part"]


def test_the_cache_is_written_through_a_file_of_its_own(tmp_path):
    import numpy as np

    from hybrid_exp.dataset_files import save_atomically

    mine = tmp_path / f".cache.npz.{os.getpid()}.part"  # the old partial file's name
    mine.write_text("mine")
    save_atomically(tmp_path / "cache.npz", {"x": np.arange(3)}, "source")
    assert mine.read_text() == "mine" and oct((tmp_path / "cache.npz").stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "cache.npz"]
