"""The command line as a user runs it: real subprocesses, a real multirun."""
import os
import re
import signal
import subprocess
import sys

import pytest

from analysis import load_runs
from tests.helpers import PARALLEL, TINY, start


def test_multirun_grid_finishes_every_run_in_the_default_store(tmp_path, cifar10_root):
    run = subprocess.run(
        [sys.executable, "-m", "hybrid_exp", "-m", "model=separable,standard", "seed=0,1",
         "experiment=quick", f"data.root={cifar10_root}", "data.train_subset=2000",
         "data.val_size=200", "data.eval_size=500", *TINY, "trainer.max_epochs=3", PARALLEL],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")  # the default store
    assert sorted(runs.run_name) == ["separable-seed0", "separable-seed1",
                                     "standard-seed0", "standard-seed1"]
    assert (runs.status == "FINISHED").all()
    assert (runs["test/error"] < 80).all(), runs[["run_name", "test/error"]]
    assert len(list((tmp_path / "multirun").glob("*/*/[0-3]"))) == 2  # one job per setup: seeds fused
    tree = next((tmp_path / "multirun").glob("*/*/0/config_tree.log")).read_text()
    assert tree.startswith("config") and "├── model" in tree and "max_epochs: 3" in tree
    assert "epoch 3/3" in next((tmp_path / "multirun").glob("*/*/0/hybrid_exp.log")).read_text()
    assert "epoch 3/3" in run.stdout + run.stderr  # one plain progress line per epoch
    assert re.search(r"epoch 3/3  val/loss [\d.]+ ± [\d.e-]+ .*\(mean ± sd over 2 members\)", run.stdout + run.stderr)
    output = run.stdout + run.stderr
    assert re.search(r"job [12] of 2 started \(slot cpu-[01]\): model=separable", output)
    assert "job 2 of 2 done" in output
    assert "Creating initial MLflow database tables" not in output  # the grid's own store too


def test_ctrl_c_marks_the_run_killed_not_running(tmp_path):
    job = start([sys.executable, "-m", "hybrid_exp", "data=synthetic", "data.train_subset=2048", *TINY,
                 "trainer.max_epochs=1000"], cwd=tmp_path)
    for line in job.stdout:  # wait until training is under way
        if "epoch 2/1000" in line:
            break
    job.send_signal(signal.SIGINT)
    output = job.communicate(timeout=120)[0]
    assert job.returncode != 0, output
    run = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db").iloc[0]
    assert (run.status, run.error) == ("KILLED", "interrupted")


def test_a_child_a_test_signals_gets_sigint_even_from_a_runner_that_ignores_it():
    """nohup, ``&`` in a script, some CI runners: SIGINT ignored in the test process, and so, by
    inheritance, in every child it starts, unless the child restores it (helpers.start)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = start([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGINT)
    output = child.communicate(timeout=30)[0]
    assert child.returncode != 0 and "KeyboardInterrupt" in output


@pytest.mark.parametrize("program", ["hybrid_exp.bench", "hybrid_exp.copy_runs", "hybrid_exp.evaluate",
                                     "hybrid_exp.similarity", "analysis"])
def test_help_answers_at_once_naming_the_program(program):
    """--help parses before anything heavy is imported (-X importtime lists every import)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", program, "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and f"python -m {program}" in run.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()}
    assert not imported & {"torch", "mlflow", "pandas", "pytorch_lightning"}


def test_a_grid_without_its_dataset_stops_once_before_any_job_in_one_sentence(tmp_path):
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", "-m", "model=separable,standard",
                          "seed=0,1", f"data.root={tmp_path}/none", "data.download=false"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and output.count("no CIFAR-10 found under") == 1
    assert "set data.download=true to fetch the official archive" in output and "Traceback" not in output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()  # nothing started


@pytest.mark.parametrize("args", [["experiment=quick", "model=inception_matched"],
                                  ["-m", "experiment=quick", "model=separable,inception_matched", "seed=0,1"]])
def test_a_matched_preset_at_another_size_stops_single_or_grid_before_anything_exists(tmp_path, args):
    """The grid checks each job under its own names (in the launcher, ${hydra:...} gives the
    launcher's), so the second job stops the grid before the first starts."""
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", *args, "data=synthetic"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and run.stderr.strip().startswith(
        "model=inception_matched matches the baseline's size at model.width=36 only"), run.stderr[-2000:]
    assert len(run.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())  # nothing created


def test_a_grid_that_would_fuse_seeds_in_16_mixed_stops_before_anything_exists(tmp_path):
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", "-m", "experiment=quick", "seed=0,1",
                          "trainer.precision=16-mixed", "data=synthetic"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and run.stderr.strip().startswith(
        "trainer.precision=16-mixed cannot train a fused seed array"), run.stderr[-2000:]
    assert "(job " in run.stderr and len(run.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_help_names_the_program_its_groups_launchers_and_sweepers():
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("python -m hybrid_exp")
    for listed in ("debug: fdr, limit, overfit, profiler", "hydra/launcher=gpus", "slurm",
                   "hydra/sweeper=optuna", "experiment: cardinality"):
        assert listed in run.stdout, listed


@pytest.mark.parametrize("args, expected", [
    (["model=seperable"], "model=seperable: no such option in conf/model/; did you mean model=separable?"),
    (["-m", "model=separable,hybird", "seed=0,1"], "model=hybird: no such option in conf/model/; did you mean model=hybrid?"),
    (["callbacks=[early_stoping,best_weights]"], "callbacks=early_stoping: no such option in conf/callbacks/; did you mean callbacks=early_stopping?"),
])
def test_a_misspelt_group_option_is_one_sentence_with_the_closest_one(tmp_path, args, expected):
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and run.stderr.strip().startswith(expected)
    assert len(run.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())  # nothing created


def test_a_run_and_its_analysis_keep_the_terminal_quiet(tmp_path):
    """No accelerator inventory, no store-migration lines, no deprecation of Lightning's own
    code, no progress bar per downloaded artifact."""
    train = subprocess.run([sys.executable, "-m", "hybrid_exp", "data=synthetic", "data.train_subset=64",
                            "data.val_size=32", "data.eval_size=32", "model.width=8", "model.depth=1",
                            "trainer.max_epochs=1", "data.batch_size=32"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    out = train.stdout + train.stderr
    assert "test/error" in out
    for noise in ("GPU available", "TPU available", "Creating initial MLflow database tables", "LeafSpec"):
        assert noise not in out, noise
    report = subprocess.run([sys.executable, "-m", "analysis", "--experiment", "hybrid-exp"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]  # the baseline alone: a report all the same
    assert "Downloading artifacts" not in report.stdout + report.stderr


def test_a_run_on_a_terminal_shows_what_differs_from_the_defaults_and_saves_the_whole_config(tmp_path):
    command = ("python -m hybrid_exp data=synthetic data.train_subset=64 data.val_size=32 "
               "data.eval_size=32 model.width=8 model.depth=1 trainer.max_epochs=1 data.batch_size=32")
    terminal = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "COLUMNS": "120"})
    assert terminal.returncode == 0, terminal.stdout[-2000:]
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.stdout)  # the terminal's colours
    shown = out[:out.index("test/error") if "test/error" in out else None]
    assert "what differs from the defaults" in shown
    for changed in ("width: 8", "depth: 1", "max_epochs: 1", "_target_: hybrid_exp.data.Synthetic"):
        assert changed in shown, changed
    for unchanged in ("momentum", "accelerator", "lr: 0.1", "experiment_name"):
        assert unchanged not in shown, unchanged  # the defaults stay in the file
    saved = next(tmp_path.glob("outputs/*/*/config_tree.log")).read_text()
    assert "momentum: 0.9" in saved and "accelerator: auto" in saved and "width: 8" in saved
