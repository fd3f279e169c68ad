"""Fused seed arrays as users run them: one MLflow run per member, failures isolated, resume, grids."""
import os
import signal
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from analysis import load_runs
from hybrid_exp.batches import Batches
from hybrid_exp.fusion import member_state
from hybrid_exp.train import train
from hydra_plugins.hybrid_exp_launcher.arrays import array_overrides, group_seeds
from tests.helpers import TINY, start

TIMING = ("epoch_seconds", "images_per_second")  # the only metrics that may differ between runs


def real(cifar10_root, *overrides):
    return [f"data.root={cifar10_root}", "data.train_subset=320", "data.val_size=100",
            "data.eval_size=200", *TINY, "data.batch_size=32", *overrides]


def learned(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def checkpoint_state(folder) -> dict:
    (path,) = folder.glob("*/last.ckpt")
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_an_array_gives_each_member_its_own_run_equal_to_the_unfused_run(make_cfg, cifar10_root, tmp_path):
    fused = train(make_cfg(*real(cifar10_root, "seed=[2,0,1]")))
    assert [r.seed for r in fused] == [2, 0, 1] and {r.status for r in fused} == {"finished"}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = load_runs("hybrid-exp", uri).set_index("seed").sort_index()
    assert list(runs.run_name) == ["separable-seed0", "separable-seed1", "separable-seed2"]
    assert (runs.status == "FINISHED").all() and runs.config_hash.nunique() == 3
    client = MlflowClient(uri)
    for run_id in runs.run_id:
        run = client.get_run(run_id)
        assert run.data.tags["array"] == "3 seeds fused: 0 1 2"
        assert [m.step for m in client.get_metric_history(run_id, "val/error")] == [1, 2]

    alone_uri = f"sqlite:///{tmp_path}/alone.db"
    train(make_cfg(*real(cifar10_root, "seed=1"), f"logger.tracking_uri={alone_uri}"))
    first_epoch = lambda uri, run_id: [m.value for m in MlflowClient(uri).get_metric_history(run_id, "train/loss")][0]
    alone_run = load_runs("hybrid-exp", alone_uri).run_id[0]
    # the same run, up to float32 rounding (grouped kernels sum in another order; test_fusion
    # shows the members exact in float64), which training then amplifies epoch by epoch
    assert first_epoch(uri, runs.loc[1, "run_id"]) == pytest.approx(first_epoch(alone_uri, alone_run), rel=1e-4)
    again = train(make_cfg(*real(cifar10_root, "seed=1")))[0]  # the unfused config: same hash
    assert again.status == "skipped" and again.run_id == fused[2].run_id


def test_a_diverged_member_fails_alone_and_the_others_stay_bit_identical(make_cfg, cifar10_root, tmp_path,
                                                                          monkeypatch):
    array = real(cifar10_root, "seed=[0,1,2]")
    clean = train(make_cfg(*array, f"logger.tracking_uri=sqlite:///{tmp_path}/clean.db",
                           f"checkpoint_dir={tmp_path}/clean"))

    plain_batches = Batches.__iter__

    def poisoned(self):  # member 1's images become NaN at step 3 of the first epoch
        for step, (x, y) in enumerate(plain_batches(self)):
            if self.augment_seeds is not None and self.epoch() == 0 and step == 3:
                x = x.clone()
                x[:, 3:6] = float("nan")
            yield x, y

    monkeypatch.setattr(Batches, "__iter__", poisoned)
    hurt = train(make_cfg(*array))
    assert [r.status for r in hurt] == ["finished", "failed", "finished"]
    assert "non-finite loss at epoch 1, step 3" in hurt[1].error
    for m in (0, 2):
        assert learned(hurt[m].metrics) == learned(clean[m].metrics)  # exactly
    before, after = checkpoint_state(tmp_path / "clean"), checkpoint_state(tmp_path / "checkpoints")
    for m in (0, 2):
        for key, value in member_state(before, m, 3).items():
            assert torch.equal(member_state(after, m, 3)[key], value), key
    frozen = member_state(after, 1, 3)
    assert all((v == 0).all() for k, v in frozen.items() if v.is_floating_point() and "running_var" not in k)

    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db").set_index("seed")
    assert runs.loc[1, "status"] == "FAILED" and "non-finite loss at epoch 1, step 3" in runs.loc[1, "error"]
    assert (runs.drop(index=1).status == "FINISHED").all()


def run(command, cwd):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_killed_array_resumes_every_member_into_its_own_run(tmp_path, cifar10_root):
    command = [sys.executable, "-m", "hybrid_exp", *real(cifar10_root, "trainer.max_epochs=4", "seed=[0,1,2]")]
    job = start(command, cwd=tmp_path)
    for line in job.stdout:  # part-way: the second epoch has ended
        if "epoch 2/4" in line:
            break
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    killed = load_runs("hybrid-exp", uri)
    assert len(killed) == 3 and (killed.status == "RUNNING").all()

    relaunch = run(command, tmp_path)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    runs = load_runs("hybrid-exp", uri)
    assert len(runs) == 3 and (runs.status == "FINISHED").all()
    assert set(runs.run_id) == set(killed.run_id)  # the same runs, continued
    client = MlflowClient(uri)
    for run_id in runs.run_id:
        assert int(client.get_run(run_id).data.tags["resumed_from_epoch"]) >= 1
        for key in ("val/error", "train/loss", "lr"):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3, 4]

    uninterrupted = run([*command, f"logger.tracking_uri=sqlite:///{tmp_path}/whole.db",
                         f"checkpoint_dir={tmp_path}/whole"], tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    whole = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/whole.db").set_index("seed")
    resumed = runs.set_index("seed")
    for seed in (0, 1, 2):  # the data stream is a function of (seed, epoch): resume continues it
        assert resumed.loc[seed, "test/error"] == pytest.approx(whole.loc[seed, "test/error"])


def test_the_launcher_fuses_only_jobs_that_differ_in_their_seed():
    jobs = [["model=a", "seed=0"], ["model=b", "seed=0"], ["model=a", "seed=1"], ["model=b", "seed=1"],
            ["model=a", "seed=2"], ["model=a"], ["model=a", "seed=3", "++optuna.trial_id=7"]]
    assert group_seeds(jobs, max_size=2) == [[0, 2], [1, 3], [4], [5], [6]]
    assert group_seeds(jobs, max_size=1) == [[i] for i in range(7)]
    assert array_overrides([jobs[0], jobs[2]]) == ["model=a", "seed=[0,1]"]
    assert array_overrides([jobs[5]]) == ["model=a"]


@pytest.mark.slow
def test_a_grid_trains_fused_then_an_unfused_relaunch_skips_every_config(tmp_path, cifar10_root):
    grid = [sys.executable, "-m", "hybrid_exp", "-m", "experiment=quick", f"data.root={cifar10_root}",
            "data.train_subset=1000", "data.val_size=500", "data.eval_size=500", "trainer.max_epochs=2",
            "model=separable,hybrid", "seed=range(4)", "hydra.launcher.n_jobs=2"]
    fused = run(grid, tmp_path)
    assert fused.returncode == 0, fused.stderr[-3000:]
    log = fused.stdout + fused.stderr
    assert "Launching 2 jobs" in log and "Grid summary: 8 finished, 0 skipped, 0 failed (of 8 configs)" in log
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 8 and (runs.status == "FINISHED").all()
    # the ending shows what finished, where to look and how to analyse it
    table = [line.split() for line in log.splitlines() if line.startswith("  hybrid ") or line.startswith("  separable ")]
    assert sorted((r[0], int(r[1])) for r in table) == [(m, s) for m in ("hybrid", "separable") for s in range(4)]
    errors = runs.set_index("run_name")["test/error"]
    assert all(float(r[2]) == pytest.approx(errors[f"{r[0]}-seed{r[1]}"], abs=0.005) for r in table)
    assert "#/experiments/1?workflowType=machine_learning" in log
    assert "Analysis: python -m analysis --experiment hybrid-exp" in log
    assert sorted(runs.run_name) == sorted(f"{m}-seed{s}" for m in ("separable", "hybrid") for s in range(4))

    unfused = run([*grid, "hydra.launcher.fuse_seeds=false"], tmp_path)
    assert unfused.returncode == 0, unfused.stderr[-3000:]
    log = unfused.stdout + unfused.stderr
    assert "8 of 8 configs FINISHED before: skipped without a job" in log and "Launching" not in log
    assert "Grid summary: 0 finished, 8 skipped, 0 failed (of 8 configs)" in log
