"""A config mistake is one sentence, before the data is read or a run or folder is created."""
import re
import subprocess
import sys

import pytest

from hybrid_exp.checks import check_config, check_values
from hybrid_exp.errors import ConfigError, TrackingUnavailable
from hybrid_exp.store import resolve_tracking_uri
from tests.helpers import write_image_folder


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size must be a whole number >= 1; got 0"),
    ("data.batch_size=-5", "data.batch_size must be a whole number >= 1; got -5"),
    ("data.batch_size=1.5", "data.batch_size must be a whole number >= 1; got 1.5"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be a whole number >= 1; got 0"),
    ("seed=abc", "seed must be a whole number >= 0, or a list of them .*got 'abc'"),
    ("seed=-1", "seed must be a whole number >= 0.*got -1"),
    ("seed=[1,1]", r"seed must be one seed or a list of distinct seeds; got \[1, 1\]"),
    ("data.val_size=-1", "data.val_size must be a whole number >= 0; got -1"),
    ("optim.lr=0", r"optim.lr must be a number in \(0, inf\); got 0"),
    ("optim.momentum=1", r"optim.momentum must be a number in \[0, 1\); got 1"),
    ("tags=notalist", r"tags must be a list of labels, tags=\[notalist\]"),
    ("rerun=banana", "rerun must be true or false; got 'banana'"),
    ("trainer.max_steps=0", r"trainer.max_steps \(-1: no limit\) must be a whole number >= 1; got 0"),
    ("optim.depthwise_weight_decay=-1", r"optim.depthwise_weight_decay must be a number in \[0, inf\); got -1"),
])
def test_values_out_of_range_are_one_sentence(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        check_values(make_cfg(override))


@pytest.mark.parametrize("overrides, message", [
    (["+optim.learning_rate=0.05"], r"optim.learning_rate is not a setting of Classifier: did you mean optim.lr\?"),
    (["+model.widht=32"], r"model.widht is not a setting of Stacked: did you mean model.width\?"),
    (["model=grouped", "+model.block.group=2"], r"model.block.group is not a setting of Grouped: did you mean model.block.groups\?"),
    (["+data.batchsize=64"], r"data.batchsize is not a setting of CIFAR10: did you mean data.batch_size\?"),
    (["+trainer.max_epoch=3"], r"trainer.max_epoch is not a setting of Trainer: did you mean trainer.max_epochs\?"),
    (["callbacks=early_stopping", "+callbacks.early_stopping.patiense=3"],
     r"callbacks.early_stopping.patiense is not a setting of EarlyStopping: did you mean callbacks.early_stopping.patience\?"),
])
def test_a_key_no_component_takes_is_refused_with_the_closest_valid_one(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(make_cfg("data.root=/nonexistent", "data.download=false", *overrides))


@pytest.mark.parametrize("overrides, message", [
    (["data.val_size=50000"], "data.val_size must be a whole number in 0..49999; got 50000"),
    (["data.eval_size=20000"], "data.eval_size must be a whole number in 1..10000; got 20000"),
    (["data.train_subset=5"], r"data.train_subset must be a whole number in 10..45000 \(or null\); got 5"),
    (["model=grouped", "model.block.groups=7"], "groups=7 does not divide C_in=64"),
    (["data.train_subset=100", "data.batch_size=128"],
     "data.batch_size=128 is larger than the 100 training images: choose data.batch_size <= 100"),
])
def test_sizes_and_shapes_are_checked_without_reading_data(make_cfg, overrides, message):
    cfg = make_cfg("data.root=/nonexistent", "data.download=false", *overrides)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_a_good_config_passes(make_cfg):
    check_config(make_cfg("data.root=/nonexistent", "seed=[0,1]"))  # no data needed for the checks
    check_config(make_cfg("data=synthetic", "model=fractalnet"))


def test_tracking_uris_that_cannot_work_are_refused_in_one_sentence():
    with pytest.raises(TrackingUnavailable, match=r"logger.tracking_uri=garbage://x is no tracking "
                       r"store: use sqlite:///path/mlflow.db .*http\(s\)://"):
        resolve_tracking_uri("garbage://x")
    with pytest.raises(TrackingUnavailable, match=r"cannot create /proc/hybrid/x for the tracking store"):
        resolve_tracking_uri("sqlite:////proc/hybrid/x/mlflow.db")


def hybrid_exp(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "hybrid_exp", *args,
                           f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                           f"checkpoint_dir={tmp_path}/checkpoints"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_a_bad_value_stops_a_single_run_with_one_sentence(tmp_path):
    run = hybrid_exp(tmp_path, "data.batch_size=0", "data.root=/nonexistent")
    assert run.returncode == 1
    assert run.stderr.strip() == "data.batch_size must be a whole number >= 1; got 0"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "outputs").exists()  # not even the run's folder
    shape = hybrid_exp(tmp_path, "model=grouped", "model.block.groups=7")
    assert shape.returncode == 1 and "Traceback" not in shape.stderr
    assert shape.stderr.strip().endswith("groups=7 does not divide C_in=64 (choose a divisor of model.width)")
    assert not (tmp_path / "outputs").exists()


def test_a_grid_checks_every_job_before_the_first_starts(tmp_path):
    """groups=8 is valid, groups=7 not: nothing trains, no folder or store is created."""
    run = hybrid_exp(tmp_path, "-m", "model=grouped", "model.block.groups=8,7", "data=synthetic",
                     "trainer.max_epochs=1")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "model.block.groups must divide the unit's input channels; groups=7 does not divide "
        "C_in=64 (choose a divisor of model.width) (job model.block.groups=7)")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_grid_preset_checks_the_setups_it_sweeps(tmp_path):
    run = hybrid_exp(tmp_path, "experiment=fig4", "data.eval_size=20000", "data.root=/nonexistent")
    assert run.returncode == 1
    assert "data.eval_size must be a whole number in 1..10000; got 20000 (job model=" in run.stderr
    assert not (tmp_path / "multirun").exists()


def test_an_unwritable_store_folder_is_named(tmp_path, monkeypatch):
    import os
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path))  # as for a non-root user
    with pytest.raises(TrackingUnavailable, match=rf"{tmp_path} is not writable, and the tracking "
                       r"store mlflow.db needs it: choose a writable place"):
        resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")


def test_a_run_is_checked_once_though_its_callback_and_train_both_ask(make_cfg, monkeypatch):
    from hybrid_exp import checks

    calls = []
    monkeypatch.setattr(checks, "check_values", lambda cfg: calls.append("values"))
    monkeypatch.setattr(checks, "check_code", lambda cfg: calls.append("code"))
    cfg = make_cfg("data=synthetic", "seed=3")
    checks.check_config(cfg)
    checks.check_config(cfg.copy())  # train()'s copy of the same config
    assert calls == ["values", "code"]
    checks.check_config(make_cfg("data=synthetic", "seed=4"))  # another config: checked
    assert calls == ["values", "code"] * 2


def write_folder_of_non_images(root):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            (root / split / name / "notes.txt").write_text("not an image")
    return root


SYNTHETIC_GRID = ["-m", "data=synthetic", "data.train_subset=64", "data.val_size=32", "data.eval_size=32",
                  "trainer.max_epochs=1"]
OPTUNA = ["-m", "hydra/sweeper=optuna", "data=synthetic", "trainer.max_epochs=1"]


# One row per bad input: what the user typed, the one sentence expected (the last line of the
# output, no traceback), and nothing created: no store, no study, no output folder.
@pytest.mark.parametrize("args, sentence", [
    ([*SYNTHETIC_GRID, "seed=range(0)"],
     r"^seed=range\(0\) gives no value, so the grid would have no job: give it at least one"),
    ([*SYNTHETIC_GRID, "seed=[0,0],[1,2]"],
     r"^seed must be one seed or a list of distinct seeds; got \[0, 0\] \(job seed=\[0,0\]\)$"),
    ([*SYNTHETIC_GRID, "seed=0,1", "hydra.launcher.gpus=[5]"],
     r"^hydra.launcher.gpus=\[5\], but this machine shows no GPU: name GPUs it has"),
    ([*OPTUNA, "optim.lr=interval(0.5, 0.1)"], r"^optim.lr=interval\(0.5, 0.1\): .*low"),
    ([*OPTUNA, "optim.lr=tag(log, interval(0, 0.1))"], r"^optim.lr=tag\(log, interval\(0, 0.1\)\): .*log"),
    ([*OPTUNA, "optim.lr=interval(0.01, 0.1)", "hydra.sweeper.n_trials=0"],
     r"^hydra.sweeper.n_trials must be a whole number >= 1; got 0$"),
    ([*OPTUNA, "optim.lr=interval(0.01, 0.1)", "hydra.sweeper.storage=sqlite:///mlflow.db"],
     r"^hydra.sweeper.storage=sqlite:///mlflow.db is the MLflow store \(logger.tracking_uri\): give "
     r"the study a database of its own"),
    ([*OPTUNA, "optim.lr=interval(0.01, 0.1)", "hydra.sweeper.storage=nonsense"],
     r"^hydra.sweeper.storage=nonsense is no database URL: give sqlite:///optuna.db"),
    ([*OPTUNA, "optim.lr=interval(0.01, 0.1)", "hydra.sweeper.storage=postgresql://user:marker-pw@127.0.0.1:9/db"],
     r"^hydra.sweeper.storage: the study storage postgresql://user:\*\*\*@127.0.0.1:9/db cannot be used \(.*\): start it"),
    ([*OPTUNA, "optim.lr=interval(0.01, 0.1)", "hydra/sweeper/sampler=motpe"],
     r"^hydra/sweeper/sampler=motpe: MOTPESampler was removed in Optuna 4"),
    (["data=image_folder", "data.root=/nonexistent"],
     r"^data.root=/nonexistent holds no class folder in /nonexistent/train: lay the images out as"),
    (["-m", "data=image_folder", "data.root=FOLDER", "seed=0,1"],
     r"^FOLDER/train/cat holds no image \(.jpeg, .jpg, .png\): every class needs its images in both splits"),
    (["experiment=quick", "model=darknet", "data=synthetic"],
     r"^model.width is not a setting of DarkNet: .*; it comes from experiment=quick, which sizes the "
     r"models that take model.width: with model=darknet, leave the preset out"),
    (["data.root=/nonexistent", "data.download=false"], r"^no CIFAR-10 found under /nonexistent: expected"),
    (["data=image_folder", "data.root=IMAGES", "data.val_size=0", "data.eval_size=4"],
     r"^data.batch_size=128 is larger than the 6 training images: choose data.batch_size <= 6$"),
    (["trainer.fast_dev_run=true", "data=synthetic"],
     r"^trainer.fast_dev_run=True trains, validates or tests a part of what the config says, so its run "
     r"must not stand as a result: use a debug preset"),
    (["trainer.limit_train_batches=0", "data=synthetic"], r"^trainer.limit_train_batches=0 trains nothing"),
    (["trainer.max_time=00:00:01:00", "data=synthetic"], r"^trainer.max_time=00:00:01:00 trains, validates"),
    (["trainer.overfit_batches=2", "data=synthetic"], r"^trainer.overfit_batches=2 trains, validates"),
    ([*SYNTHETIC_GRID, "seed=0,0"], r"^seed=0,0 gives seed=0 twice: give each value once$"),
    ([*SYNTHETIC_GRID, "seed=0,1", "hydra.launcher.gpus=-1"], r"^hydra.launcher.gpus=-1: give a number of GPUs"),
    (["hydra.job.chdir=true", "data=synthetic"],
     r"^hydra.job.chdir=true runs each job in its own folder, where logger.tracking_uri=sqlite:///mlflow.db "
     r"and checkpoint_dir=checkpoints would be new for every job"),
    ([*SYNTHETIC_GRID, "seed=0,1", "hydra.job.chdir=true"], r"^hydra.job.chdir=true runs each job in its own"),
    ([*OPTUNA, "optim.lr=interval(0.01, 0.1)", "hydra.sweeper.n_jobs=0"],
     r"^hydra.sweeper.n_jobs \(trials at once\) must be a whole number >= 1; got 0$"),
    ([*SYNTHETIC_GRID, "seed=0,1", "hydra/launcher=submitit_local",
      "logger.tracking_uri=postgresql://user:marker-pw@127.0.0.1:9/db"],
     r"^hydra/launcher=submitit_local writes the config, a URL's password included, into .submitit/\*.pkl"),
    (["logger.tracking_uri=postgresql://user:marker-pw@127.0.0.1:9/db", "data=synthetic"],
     r"^the tracking database postgresql://user:\*\*\*@127.0.0.1:9/db cannot be used \(.*\): start it"),
])
def test_bad_input_is_one_sentence_before_anything_is_created(tmp_path, args, sentence):
    folder = write_folder_of_non_images(tmp_path / "folder")
    images = write_image_folder(tmp_path / "folder" / "images", per_class=(3, 2))  # smaller than a batch
    args = [a.replace("FOLDER", str(folder)).replace("IMAGES", str(images)) for a in args]
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and lines, run.stdout[-2000:]
    assert re.search(sentence.replace("FOLDER", re.escape(str(folder))), lines[-1]), run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "marker-pw" not in run.stdout + run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # no store, study, outputs or multirun
