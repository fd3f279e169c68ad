"""Grids that survive crashes and never run twice: launcher, resume, idempotency, concurrency."""
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from analysis import load_runs
from hybrid_exp import store, tracking
from hybrid_exp.schema import config_hash
from hybrid_exp.train import train
from hydra_plugins.hybrid_exp_launcher.gpus import claim, default_lock_dir, make_slots, private_dir
from tests.helpers import SMALL, start


def grid(*args, cwd, **kwargs):
    return subprocess.run([sys.executable, "-m", "hybrid_exp", "-m", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900, **kwargs)


@pytest.mark.slow
def test_killed_grid_relaunched_finishes_each_config_once_resuming_from_checkpoints(tmp_path):
    command = [sys.executable, "-m", "hybrid_exp", "-m", *SMALL, "trainer.max_epochs=6",
               "seed=range(6)", "hydra.launcher.n_jobs=2"]
    job = start(command, cwd=tmp_path)
    for line in job.stdout:  # part-way: the first jobs are in their third epoch
        if "epoch 3/6" in line:
            break
    os.killpg(job.pid, signal.SIGKILL)  # the whole process group: launcher and its jobs
    job.wait()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    interrupted = load_runs("hybrid-exp", uri)
    assert (interrupted.status == "RUNNING").sum() >= 1  # killed mid-training

    relaunch = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    runs = load_runs("hybrid-exp", uri)
    assert len(runs) == 6 and (runs.status == "FINISHED").all()  # one run per config, no duplicate
    assert runs.config_hash.nunique() == 6
    client = MlflowClient(uri)
    resumed = [client.get_run(r) for r in runs.run_id]
    resumed = [r for r in resumed if "resumed_from_epoch" in r.data.tags]
    assert resumed, "a run killed after its first epoch resumes from its checkpoint"
    for run in resumed:
        resumed_at = int(run.data.tags["resumed_from_epoch"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/error")]
        assert 1 <= resumed_at < 6 and sorted(steps) == list(range(1, 7))  # continuous, in the same run
        assert run.info.run_id in interrupted.run_id.values
    assert "Grid summary:" in relaunch.stderr + relaunch.stdout


def test_a_resumed_run_logs_each_epoch_once(tmp_path):
    """Killed after logging epoch 2 but before its checkpoint: the replayed epoch 2 is not doubled."""
    client, experiment_id = store.connect(OmegaConf.create(
        {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment_name": "resume"}))
    run_id = client.create_run(experiment_id).info.run_id
    first = tracking.TrackedRun(client, run_id, resumed=False)
    for epoch in range(3):
        first.log({"val/error": 50.0 - epoch}, step=epoch)
    resumed = tracking.TrackedRun(client, run_id, resumed=True)  # from the checkpoint of epoch 1
    for epoch in range(2, 5):
        resumed.log({"val/error": 50.0 - epoch, "train/loss": 1.0}, step=epoch)
    history = client.get_metric_history(run_id, "val/error")
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [2, 3, 4]


def test_relaunch_skips_finished_configs_and_rerun_trains_again(make_cfg):
    cfg = make_cfg(*SMALL, "trainer.max_epochs=1")
    first = train(cfg)[0]
    again = train(cfg)[0]
    assert (first.status, again.status) == ("finished", "skipped")
    assert again.run_id == first.run_id and again.metrics["test/error"] == first.metrics["test/error"]
    forced = train(make_cfg(*SMALL, "trainer.max_epochs=1", "rerun=true"))[0]
    assert forced.status == "finished" and forced.run_id != first.run_id
    assert len(load_runs("hybrid-exp", cfg.logger.tracking_uri)) == 2


@pytest.mark.slow
def test_failing_job_among_good_ones_gives_the_summary_and_exit_status(tmp_path):
    run = grid(*SMALL, "trainer.max_epochs=1", "optim.lr=0.1,1e30", "hydra.launcher.n_jobs=2",
               cwd=tmp_path)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "Grid summary: 1 finished, 0 skipped, 1 failed (of 2 configs)" in output
    assert "FAILED" in output and "optim.lr=1e+30: Diverged" in output and "non-finite loss" in output
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db").set_index("status")
    assert sorted(runs.index) == ["FAILED", "FINISHED"]


def writer(uri: str, experiment_id: str, index: int, steps: int) -> None:
    """One of many parallel jobs writing a run, params and metrics to one SQLite store."""
    client = MlflowClient(uri)
    cfg = OmegaConf.create({"seed": index, "logger": {"tracking_uri": uri},
                            "knobs": {f"k{i}": i for i in range(30)}})
    with tracking.Experiment(client, experiment_id).open_run(cfg, {"setup": "w", "seed": str(index)},
                                                             {"params": index}) as run:
        for step in range(steps):
            run.log({f"m{j}": step * j for j in range(5)}, step=step)


@pytest.mark.slow
def test_eight_parallel_writers_lose_nothing_in_the_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client, experiment_id = store.connect(OmegaConf.create(
        {"tracking_uri": uri, "experiment_name": "load"}))  # created once, before the jobs
    spawn = multiprocessing.get_context("spawn")
    jobs = [spawn.Process(target=writer, args=(uri, experiment_id, i, 25)) for i in range(8)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=600)
    assert [job.exitcode for job in jobs] == [0] * 8
    runs = client.search_runs([experiment_id])
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert len(run.data.params) == 1 + 1 + 30 + 1  # seed, tracking_uri, knobs, params
        for j in range(5):
            history = client.get_metric_history(run.info.run_id, f"m{j}")
            assert sorted((m.step, m.value) for m in history) == [(s, s * j) for s in range(25)]


def test_a_crashed_job_cannot_leak_its_slot(tmp_path):
    slots = [("cpu-0", ""), ("cpu-1", "")]
    holder = start([sys.executable, "-c", (
        "import sys, time; from pathlib import Path\n"
        "from hydra_plugins.hybrid_exp_launcher.gpus import claim\n"
        f"claim([('cpu-0', '')], Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)")])
    assert holder.stdout.readline().strip() == "held"
    fd, _ = claim(slots, tmp_path)  # cpu-0 is taken: we get cpu-1
    assert os.readlink(f"/proc/self/fd/{fd}").endswith("cpu-1.lock")
    os.close(fd)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    fd, _ = claim([("cpu-0", "")], tmp_path)  # the kernel released the dead job's lock (else: waits)
    assert os.readlink(f"/proc/self/fd/{fd}").endswith("cpu-0.lock")
    os.close(fd)


def test_slots_pin_gpus_and_split_runs_per_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert make_slots(None, 2, 1) == [("gpu2-0", "2"), ("gpu2-1", "2"), ("gpu3-0", "3"), ("gpu3-1", "3")]
    assert make_slots(1, 1, 1) == [("gpu2-0", "2")]
    assert make_slots([3], 1, 1) == [("gpu3-0", "3")]
    with pytest.raises(ValueError, match=r"^hydra.launcher.gpus=\[5\], but this machine shows GPU\(s\) 2, 3 "
                                         r"\(CUDA_VISIBLE_DEVICES\): name GPUs it has"):
        make_slots([5], 1, 1)  # else its jobs would train on the CPU
    with pytest.raises(ValueError, match=r"gpus=3, but this machine shows GPU\(s\) 2, 3"):
        make_slots(3, 1, 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert make_slots(None, 1, 3) == [("cpu-0", ""), ("cpu-1", ""), ("cpu-2", "")]
    with pytest.raises(ValueError, match=r"gpus=\[0\], but this machine shows no GPU"):
        make_slots([0], 1, 1)


@pytest.mark.slow
def test_each_job_sees_only_its_gpu(tmp_path):
    run = grid(*SMALL, "trainer.max_epochs=1", "trainer.accelerator=cpu", "seed=0,1",
               "hydra.launcher.gpus=[0,1]", f"hydra.launcher.lock_dir={tmp_path}/locks",
               "hydra.launcher.fuse_seeds=false", cwd=tmp_path,  # two jobs, not one array
               env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"})  # as if it had them: jobs on the CPU
    assert run.returncode == 0, run.stderr[-3000:]
    logs = "".join(p.read_text() for p in tmp_path.glob("multirun/*/*/*/*.log"))
    logs += run.stdout + run.stderr
    assert "separable-seed0: CUDA_VISIBLE_DEVICES=" in logs
    assert {"'0'", "'1'"} == {line.rsplit("=", 1)[1].strip() for line in logs.splitlines()
                              if ": CUDA_VISIBLE_DEVICES=" in line}


@pytest.mark.slow
def test_submitit_local_grid_of_two(tmp_path):
    run = grid(*SMALL, "trainer.max_epochs=1", "seed=0,1", "hydra/launcher=submitit_local",
               "hydra.launcher.timeout_min=10", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(runs.run_name) == ["separable-seed0", "separable-seed1"]
    assert (runs.status == "FINISHED").all()


def test_slurm_preset_asks_for_one_gpu_per_job_and_requeues(make_cfg):
    from hydra import compose, initialize_config_dir

    from hybrid_exp import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.account=lab"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hybrid_exp_launcher.slurm.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (1, 1)
    assert (launcher.partition, launcher.account) == ("gpu", "lab")
    assert launcher.max_num_timeout > 0 and launcher.array_parallelism > 0 and launcher.timeout_min > 0


@pytest.mark.slow
def test_ctrl_c_of_a_grid_ends_with_its_summary_and_no_traceback(tmp_path):
    command = [sys.executable, "-m", "hybrid_exp", "-m", *SMALL, "trainer.max_epochs=50",
               "model=separable,standard,hybrid", "seed=0"]
    job = start(command, cwd=tmp_path)
    lines = []
    for line in job.stdout:  # the first job is training
        lines.append(line)
        if "epoch 2/50" in line:
            break
    os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C does: the launcher and its jobs get SIGINT
    output = "".join(lines) + job.communicate(timeout=300)[0]
    assert job.returncode == 130, output[-3000:]
    assert "Grid interrupted: 0 of 3 jobs had finished" in output and "Traceback" not in output
    assert "model=standard seed=0" in output.split("Grid interrupted")[1]  # named: it will resume
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert (runs.status == "KILLED").all() and len(runs) >= 1


def test_slot_locks_live_in_a_private_directory(tmp_path, monkeypatch):
    """Another user must not be able to pre-create the lock directory and hold our slots."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert default_lock_dir().name == f"hybrid_exp-slots-{os.getuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_lock_dir() == tmp_path / "hybrid_exp-slots"
    fresh = private_dir(tmp_path / "fresh")
    assert fresh.stat().st_mode & 0o777 == 0o700
    fd, _ = claim([("cpu-0", "")], fresh)
    assert os.fstat(fd).st_mode & 0o777 == 0o600
    os.close(fd)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # as a pre-created folder in /tmp would be
    with pytest.raises(PermissionError, match=r"slot lock directory .*shared is not a private "
                       r"directory of this user .*hydra.launcher.lock_dir="):
        private_dir(shared)
    (tmp_path / "link").symlink_to(fresh)
    with pytest.raises(PermissionError, match="not a private directory"):
        private_dir(tmp_path / "link")
    monkeypatch.setattr(os, "getuid", lambda: os.stat(fresh).st_uid + 1)  # someone else's
    with pytest.raises(PermissionError, match="owner uid"):
        private_dir(fresh)


@pytest.mark.slow
def test_single_runs_started_at_once_on_a_fresh_store_all_finish(tmp_path):
    """Six runs started together in one folder with no mlflow.db yet: the store is created and
    migrated once (under its lock), every run finishes, and each run has its own folder."""
    runs = [start([sys.executable, "-m", "hybrid_exp", *SMALL, "trainer.max_epochs=1", f"seed={seed}"],
                  cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for seed in range(6)]
    errors = [run.communicate(timeout=900)[1] for run in runs]
    assert [run.returncode for run in runs] == [0] * 6, "\n".join(e[-1500:] for e in errors)
    finished = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(finished.seed) == list(range(6)) and set(finished.status) == {"FINISHED"}
    folders = {p.parent.parent for p in tmp_path.glob("outputs/*/*/.hydra/config.yaml")}
    assert len(folders) == 6  # none overwrote another's config and log


def test_a_corrupt_checkpoint_is_kept_aside_and_its_config_restarts_cleanly(make_cfg, caplog):
    """A crash left a run RUNNING and its last.ckpt damaged: the relaunch names the file, keeps
    it renamed, ends the old run FAILED with the reason, and trains the config in a new run."""
    cfg = make_cfg(*SMALL, "trainer.max_epochs=1")
    first = train(cfg)[0]
    client = MlflowClient(cfg.logger.tracking_uri)
    client.update_run(first.run_id, "RUNNING")  # as a SIGKILL mid-run leaves it
    (checkpoint,) = Path(cfg.checkpoint_dir).glob("*/last.ckpt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    again = train(cfg)[0]
    assert again.status == "finished" and again.run_id != first.run_id
    old = client.get_run(first.run_id)
    assert old.info.status == "FAILED"
    assert f"{checkpoint} is unreadable" in old.data.tags["error"]
    kept = list(checkpoint.parent.glob("last.ckpt.corrupt-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == 1000
    assert f"{checkpoint} is unreadable" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["mid-epoch 1", "after epoch 2 is logged, before its checkpoint"])
def test_a_run_interrupted_and_resumed_matches_the_uninterrupted_run_epoch_by_epoch(
        make_cfg, monkeypatch, kill):
    """Ctrl-C (the run is KILLED, resumable) at two points; the relaunch resumes from the last
    checkpoint and every epoch's metrics equal those of a run never interrupted: the data
    stream, the augmentation and the optimizer continue exactly."""
    import hybrid_exp.train as train_module

    common = [*SMALL, "trainer.max_epochs=4", "seed=[0,1]"]
    whole = train(make_cfg(*common, "logger.experiment_name=whole"))
    cfg = make_cfg(*common)

    if kill.startswith("mid-epoch"):
        def interrupt(self, trainer, *args):
            if trainer.current_epoch == 1 and trainer.fit_loop.epoch_loop.batch_progress.current.completed == 3:
                raise KeyboardInterrupt
        monkeypatch.setattr(train_module.LastCheckpoint, "on_train_batch_end", interrupt, raising=False)
    else:
        real_save = train_module.LastCheckpoint.on_train_epoch_end

        def interrupt(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise KeyboardInterrupt
            real_save(self, trainer, pl_module)
        monkeypatch.setattr(train_module.LastCheckpoint, "on_train_epoch_end", interrupt)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(cfg)
    monkeypatch.undo()
    client = MlflowClient(cfg.logger.tracking_uri)
    killed = load_runs("hybrid-exp", cfg.logger.tracking_uri)
    assert set(killed.status) == {"KILLED"}
    resumed = train(cfg)
    for a, b in zip(whole, resumed):
        assert b.status == "finished" and b.run_id in set(killed.run_id)  # the same runs continue
        for key in ("train/loss", "val/error", "val/loss", "lr", "test/error"):
            expected = [(m.step, m.value) for m in sorted(client.get_metric_history(a.run_id, key), key=lambda m: m.step)]
            got = [(m.step, m.value) for m in sorted(client.get_metric_history(b.run_id, key), key=lambda m: m.step)]
            assert [s for s, _ in got] == [s for s, _ in expected], key  # each epoch once
            assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5), key


def hold_slot(lock_dir: Path) -> subprocess.Popen:
    """Another process holding slot cpu-0 of ``lock_dir`` (for five minutes, or until killed)."""
    holder = start([sys.executable, "-c", (
        "import time; from pathlib import Path\n"
        "from hydra_plugins.hybrid_exp_launcher.gpus import claim\n"
        f"claim([('cpu-0', '')], Path({str(lock_dir)!r}), 'python -m hybrid_exp model=hybrid')\n"
        "print('held', flush=True); time.sleep(300)")])
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_job_waiting_for_a_slot_names_its_holder_and_how_to_run_beside_it(tmp_path, caplog):
    import threading

    holder = hold_slot(tmp_path)
    claimed = []
    with caplog.at_level("WARNING"):
        waiter = threading.Thread(target=lambda: claimed.append(claim([("cpu-0", "")], tmp_path, report_every=0)))
        waiter.start()
        deadline = time.monotonic() + 120  # a loaded machine: generous, never the assertion itself
        while "waiting for a free slot" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        holder.kill()
        holder.wait()
        waiter.join(120)
    assert f"cpu-0 by pid {holder.pid}: python -m hybrid_exp model=hybrid" in caplog.text
    assert "hydra.launcher.lock_dir=DIR" in caplog.text
    assert claimed, "the slot is ours once its holder is gone"
    os.close(claimed[0][0])


def test_a_grid_says_started_only_once_its_job_holds_a_slot(tmp_path):
    locks = tmp_path / "locks"
    holder = hold_slot(locks)
    job = start([sys.executable, "-m", "hybrid_exp", "-m", *SMALL, "trainer.max_epochs=1",
                 "seed=0", f"hydra.launcher.lock_dir={locks}"], cwd=tmp_path)
    before = []
    for line in job.stdout:  # the job waits for the slot the holder has
        before.append(line)
        if "waiting for a free slot" in line:
            break
    holder.kill()
    holder.wait()
    after, _ = job.communicate(timeout=600)
    assert job.returncode == 0, after[-3000:]
    assert not any("started" in line for line in before), before
    assert f"cpu-0 by pid {holder.pid}: python -m hybrid_exp model=hybrid" in before[-1]
    assert "job 1 of 1 started (slot cpu-0): data=synthetic" in after
    assert after.index("started (slot cpu-0)") < after.index("Grid summary: 1 finished")


@pytest.mark.slow
def test_a_relaunch_decides_its_skips_before_starting_any_job(tmp_path):
    first = grid(*SMALL, "trainer.max_epochs=1", "seed=0,1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = grid(*SMALL, "trainer.max_epochs=1", "seed=0,1,2", cwd=tmp_path)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "2 of 3 configs FINISHED before: skipped without a job" in out
    assert "job 1 of 1 started" in out and "job 2 of" not in out  # one job: seed 2 alone
    assert "Grid summary: 1 finished, 2 skipped, 0 failed (of 3 configs)" in out
    assert out.count("(skipped: done before)") == 2
    done = grid(*SMALL, "trainer.max_epochs=1", "seed=0,1,2", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Launching" not in out and " started" not in out, out[-3000:]
    assert "Grid summary: 0 finished, 3 skipped, 0 failed (of 3 configs)" in out
    assert len(load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")) == 3


def test_a_run_left_running_without_its_checkpoint_ends_killed_when_its_config_trains_again(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL, "trainer.max_epochs=1")
    client, experiment_id = store.connect(cfg.logger)
    orphan = client.create_run(experiment_id, run_name="separable-seed0",  # a trainer killed, then
                               tags={"config_hash": config_hash(cfg)}).info.run_id  # checkpoints/ deleted
    result = train(cfg)[0]
    assert result.status == "finished" and result.run_id != orphan
    ended = client.get_run(orphan)
    assert ended.info.status == "KILLED" and "its checkpoint is gone" in ended.data.tags["error"]


@pytest.mark.slow
def test_two_identical_grids_launched_together_train_each_config_once(tmp_path):
    """Each with its own slots (so both run at once): the second waits for the config the
    first trains, then skips it; however they interleave, one FINISHED run per config."""
    command = [sys.executable, "-m", "hybrid_exp", "-m", *SMALL, "trainer.max_epochs=3", "seed=0"]
    grids = [start([*command, f"hydra.launcher.lock_dir={tmp_path / f'slots{i}'}"], cwd=tmp_path) for i in (0, 1)]
    outputs = [g.communicate(timeout=600)[0] for g in grids]
    assert [g.returncode for g in grids] == [0, 0], outputs
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 1 and runs.status.tolist() == ["FINISHED"], runs[["status", "run_id"]]
    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(runs.run_id[0], "val/error")
    assert sorted(m.step for m in history) == [1, 2, 3]  # each epoch logged once
    summaries = " ".join(o for o in outputs)
    assert "1 finished, 0 skipped" in summaries and "0 finished, 1 skipped" in summaries


@pytest.mark.slow
def test_a_store_that_fails_mid_run_is_one_sentence_and_the_relaunch_resumes(tmp_path):
    """The store made immutable after the second epoch (chattr +i: a read-only store even for
    root), by the training process itself as that epoch ends, so the moment never depends on
    the machine's speed: one sentence, not MLflow's traceback per retry; nothing lost."""
    command = [sys.executable, "-m", "hybrid_exp", *SMALL, "trainer.max_epochs=6"]
    immutable_after_epoch_2 = (
        "import os, subprocess\n"
        "from hybrid_exp.module import Classifier\n"
        "logged = Classifier.on_train_epoch_end\n"
        "def then_immutable(self):\n"
        "    logged(self)\n"
        "    if self.current_epoch == 1 and subprocess.run(['chattr', '+i', 'mlflow.db']).returncode:\n"
        "        os._exit(77)\n"
        "Classifier.on_train_epoch_end = then_immutable\n"
        "from hybrid_exp.cli import main; main()\n")
    try:
        job = subprocess.run([sys.executable, "-c", immutable_after_epoch_2, *command[3:]], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    finally:
        subprocess.run(["chattr", "-i", tmp_path / "mlflow.db"])
    if job.returncode == 77:
        pytest.skip("needs chattr +i on the store (root, on ext4)")
    lines = job.stdout.splitlines(keepends=True)
    out = "".join(lines)
    assert job.returncode == 1 and "Traceback" not in out and len(lines) < 20, out[-3000:]
    assert re.match(r"the tracking store sqlite:///.*/mlflow.db failed \((readonly database|disk I/O error)\): .*"
                    r"make its file and folder writable.*, and run the "
                    r"same command again: finished runs are kept and interrupted ones resume", lines[-1]), lines[-1]
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert runs.status.tolist() == ["FINISHED"]  # the same run, resumed
    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(runs.run_id[0], "val/error")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
