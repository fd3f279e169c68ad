"""Grids on a real SLURM cluster: the one-node cluster of tools/slurm-local.sh (munged, slurmdbd,
slurmctld, slurmd on loopback), started for these tests and stopped after them. Jobs are
submitted by the project's launcher (hydra/launcher=slurm, real sbatch), preempted, requeued and
resumed as on a shared cluster."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis import load_runs
from tests.helpers import PASSWORD, REPO, SMALL, start

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPT = REPO / "tools/slurm-local.sh"
# one CPU per job: the two jobs of a grid run at once on a 2-core machine
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20"]
# one fused array of two seeds whose epochs last long enough to be interrupted in the middle
LONGER = [*SMALL, "data.train_subset=4096", "trainer.max_epochs=4", "model=separable", "seed=0,1"]


class Cluster:
    def __init__(self, folder: Path):
        self.env = {**os.environ, "SLURM_LOCAL_DIR": str(folder), "SLURM_LOCAL_PORT": "26817",
                    "SLURM_CONF": str(folder / "slurm.conf")}

    def script(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", SCRIPT, command], env=self.env, capture_output=True, text=True, timeout=300)

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout

    def grid(self, *args, cwd: Path, **kwargs):
        command = [sys.executable, "-m", "hybrid_exp", "-m", *ON_SLURM, *args]
        return start(command, cwd=cwd, env={**self.env, **kwargs.pop("env", {})}, **kwargs)

    def release(self, job_id: str) -> None:
        """SLURM holds a requeued job back for about two minutes (its BeginTime): start it now."""
        self.run("scontrol", "update", f"jobid={job_id}", "StartTime=now")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    started = cluster.script("start")
    if started.returncode != 0 and "is missing" in started.stderr:
        pytest.skip(started.stderr.strip().splitlines()[-1])  # no SLURM packages here (CI installs them)
    assert started.returncode == 0, started.stderr
    yield cluster
    cluster.script("stop")


def finish(grid: subprocess.Popen) -> tuple[int, str]:
    output, _ = grid.communicate(timeout=900)
    return grid.returncode, output


def submitit_jobs(folder: Path) -> list[str]:
    """The SLURM job ids (``<array>_<task>``) of the grids launched in ``folder``: submitit's
    folders, one per job of its job array."""
    return sorted(p.name for p in folder.glob("multirun/*/*/.submitit/*_*") if p.is_dir())


def accounting(cluster: Cluster, job_ids: list[str]) -> dict[str, str]:
    """sacct's final state of each job, once slurmctld sent it to slurmdbd (it does so after the
    job's result is written, which is what the grid waits for)."""
    for _ in range(600):
        lines = cluster.run("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)).splitlines()
        states = dict(line.split("|") for line in lines)
        if not {"PENDING", "RUNNING", "COMPLETING"} & set(states.values()):
            return states
        time.sleep(0.5)
    raise AssertionError(f"sacct still shows {states} after five minutes")


def wait_for_checkpoint(folder: Path, grid: subprocess.Popen) -> None:
    """Until the running job saved its first epoch's checkpoint (a fused array: one file)."""
    while not list(folder.glob("checkpoints/*/last.ckpt")):
        assert grid.poll() is None, grid.stdout.read()
        time.sleep(0.2)


def wait_for_requeue(cluster: Cluster, job_id: str) -> None:
    """Until the job is back in the queue, waiting to start again."""
    while cluster.run("squeue", "-h", "-j", job_id, "-o", "%T").strip() != "PENDING":
        time.sleep(0.2)


def wait_for_restart(folder: Path, job_id: str) -> None:
    """Until the requeued job runs again and has resumed its runs (its log, which SLURM appends
    to, says so)."""
    while not any("resuming run(s)" in log.read_text() for log in folder.glob(f"multirun/*/*/.submitit/{job_id}/*_log.out")):
        time.sleep(0.2)


def the_running_job(cluster: Cluster) -> str:
    job_ids = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").split()
    assert len(job_ids) == 1, job_ids
    return job_ids[0]


def test_a_grid_runs_one_job_per_setup_and_a_relaunch_after_a_controller_restart_skips_it(cluster, tmp_path):
    code, output = finish(cluster.grid(*SMALL, "trainer.max_epochs=2", "model=separable,standard", "seed=0,1",
                                       cwd=tmp_path))
    assert code == 0, output[-3000:]
    assert "Grid summary: 4 finished, 0 skipped, 0 failed (of 4 configs)" in output
    job_ids = submitit_jobs(tmp_path)
    assert len(job_ids) == 2  # one job per setup, its two seeds fused
    assert set(accounting(cluster, job_ids).values()) == {"COMPLETED"}
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 4 and (runs.status == "FINISHED").all() and runs.config_hash.nunique() == 4

    assert cluster.script("stop").returncode == 0
    restarted = cluster.script("start")
    assert restarted.returncode == 0, restarted.stderr
    code, output = finish(cluster.grid(*SMALL, "trainer.max_epochs=2", "model=separable,standard", "seed=0,1",
                                       cwd=tmp_path))
    assert code == 0, output[-3000:]
    assert "Grid summary: 0 finished, 4 skipped, 0 failed (of 4 configs)" in output
    assert len(load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")) == 4


def requeued_once(cluster: Cluster, folder: Path, interrupt) -> None:
    """The LONGER grid, its job made to requeue by ``interrupt(job_id)`` after its first epoch:
    it finishes, and the summary says it was requeued."""
    grid = cluster.grid(*LONGER, cwd=folder)
    wait_for_checkpoint(folder, grid)
    job_id = the_running_job(cluster)
    interrupt(job_id)
    wait_for_requeue(cluster, job_id)
    cluster.release(job_id)
    code, output = finish(grid)
    assert code == 0, output[-3000:]
    assert "Grid summary: 2 finished, 0 skipped, 0 failed (of 2 configs)" in output
    assert "requeued 1 time by SLURM" in output


def test_a_job_requeued_mid_epoch_resumes_into_its_runs_and_ends_as_an_uninterrupted_one(cluster, tmp_path):
    # as an administrator or a node failure would
    requeued_once(cluster, tmp_path, lambda job_id: cluster.run("scontrol", "requeue", job_id))

    # the same configs, never interrupted, on this machine
    reference = subprocess.run([sys.executable, "-m", "hybrid_exp", "-m", *LONGER,
                                "logger.experiment_name=reference", "checkpoint_dir=reference-checkpoints"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    resumed = load_runs("hybrid-exp", uri).sort_values("seed")
    uninterrupted = load_runs("reference", uri).sort_values("seed")
    assert len(resumed) == 2 and (resumed.status == "FINISHED").all()
    for run_id, reference_id in zip(resumed.run_id, uninterrupted.run_id):
        run = client.get_run(run_id)
        assert 1 <= int(run.data.tags["resumed_from_epoch"]) < 4
        history = client.get_metric_history(run_id, "val/error")
        assert sorted(m.step for m in history) == list(range(1, 5))  # each epoch logged once
        expected = client.get_metric_history(reference_id, "val/error")
        assert sorted((m.step, m.value) for m in history) == sorted((m.step, m.value) for m in expected)
        assert run.data.metrics["test/error"] == client.get_run(reference_id).data.metrics["test/error"]


def test_a_job_preempted_by_a_higher_priority_partition_is_requeued_and_finishes(cluster, tmp_path):
    # a job of the urgent partition that needs the whole node
    requeued_once(cluster, tmp_path, lambda job_id: cluster.run("sbatch", "-p", "urgent", "-c", str(os.cpu_count()),
                                                                "-o", "/dev/null", "--wrap", "true"))
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 2 and (runs.status == "FINISHED").all()
    assert all(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(r).data.tags.get("resumed_from_epoch")
               for r in runs.run_id)


def test_a_job_out_of_time_is_requeued_at_most_max_num_timeout_times_then_a_relaunch_resumes_it(cluster, tmp_path):
    # submitit counts a signal as a time-out when the job ran more than min(80%, limit - 10 min)
    # of its limit: with a 10-minute limit, always. The signal is what SLURM sends before the
    # limit (submitit's --signal=USR2@<signal_delay_s>), sent at once.
    out_of_time = [*LONGER, "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=1"]
    grid = cluster.grid(*out_of_time, cwd=tmp_path)
    wait_for_checkpoint(tmp_path, grid)
    job_id = the_running_job(cluster)
    cluster.run("scancel", "--signal=USR2", job_id)
    wait_for_requeue(cluster, job_id)
    cluster.release(job_id)
    wait_for_restart(tmp_path, job_id)
    cluster.run("scancel", "--signal=USR2", job_id)  # the second time out of time: no requeue left
    code, output = finish(grid)
    assert code != 0
    assert "Grid summary: 0 finished, 0 skipped, 2 failed (of 2 configs)" in output
    assert "timed-out too many times" in output and "requeued 1 time by SLURM" in output
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = load_runs("hybrid-exp", uri)
    assert len(runs) == 2 and (runs.status == "KILLED").all()  # interrupted, not failed

    code, output = finish(cluster.grid(*out_of_time, cwd=tmp_path))
    assert code == 0, output[-3000:]
    assert "Grid summary: 2 finished, 0 skipped, 0 failed (of 2 configs)" in output
    resumed = load_runs("hybrid-exp", uri)
    assert set(resumed.run_id) == set(runs.run_id) and (resumed.status == "FINISHED").all()


def test_a_failing_job_among_good_ones_gives_the_summary_and_exit_status(cluster, tmp_path):
    code, output = finish(cluster.grid(*SMALL, "trainer.max_epochs=1", "optim.lr=0.1,1e30", cwd=tmp_path))
    assert code != 0
    assert "Grid summary: 1 finished, 0 skipped, 1 failed (of 2 configs)" in output
    assert "optim.lr=1e+30: Diverged" in output
    assert sorted(load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db").status) == ["FAILED", "FINISHED"]


def test_a_job_cancelled_by_slurm_is_one_failed_job_not_the_end_of_the_grid(cluster, tmp_path):
    grid = cluster.grid(*LONGER, cwd=tmp_path)
    wait_for_checkpoint(tmp_path, grid)
    cluster.run("scancel", the_running_job(cluster))
    code, output = finish(grid)
    assert code != 0 and "Traceback" not in output
    assert "Grid summary: 0 finished, 0 skipped, 2 failed (of 2 configs)" in output
    assert "ended CANCELLED without a result" in output


def test_a_tracking_password_reaches_the_jobs_by_their_environment_and_lands_in_no_file(
        cluster, postgres, tmp_path):
    """submitit pickles each job (launcher, configs, Hydra's state, overrides) into .submitit/:
    the password goes to the jobs through the environment instead, and the runs still land."""
    uri = postgres("slurm_secret").replace("postgresql://", "postgresql+psycopg://")
    code, output = finish(cluster.grid(*SMALL, "trainer.max_epochs=1", "seed=0,1",
                                       f"logger.tracking_uri={uri}", cwd=tmp_path))
    assert code == 0, output[-3000:]
    assert "Grid summary: 2 finished, 0 skipped, 0 failed (of 2 configs)" in output
    runs = load_runs("hybrid-exp", uri)
    assert len(runs) == 2 and (runs.status == "FINISHED").all()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".pkl" for p in files)  # submitit's pickled jobs are among them
    for path in files:
        assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in output
