"""``hydra/launcher=gpus``: run a grid's jobs in parallel on one machine, one per slot.

Slots are ``gpus`` x ``runs_per_gpu`` (each job sees only its GPU through CUDA_VISIBLE_DEVICES,
set in a fresh process before CUDA starts), or ``n_jobs`` CPU slots without GPUs (the cores
split among them). A job claims a free slot by an exclusive ``flock`` on the slot's lock file:
the kernel releases it when the job's process ends, however it ends, so a crashed job cannot
leak its slot, and grids launched side by side share the slots instead of oversubscribing.

With ``fuse_seeds`` (the default), the jobs of a grid that differ only in ``seed`` run as fused
arrays (``max_array_size`` seeds each): one job, one process, one network for all of them.
"""
import logging
import multiprocessing
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Sequence

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hybrid_exp import locks
from hybrid_exp.errors import ConfigError
from hybrid_exp.redact import redact
from hydra_plugins.hybrid_exp_launcher.arrays import launch_grid

log = logging.getLogger(__name__)


@dataclass
class GPULauncherConf:
    _target_: str = "hydra_plugins.hybrid_exp_launcher.gpus.GPULauncher"
    gpus: Any = None  # None: every visible GPU; N: the first N; [ids]: these
    runs_per_gpu: int = 1  # jobs sharing one GPU (small nets cannot fill an H100 alone)
    n_jobs: int = 1  # parallel jobs when there is no GPU; the CPU cores are split among them
    lock_dir: Any = None  # None: $XDG_RUNTIME_DIR/hybrid_exp-slots, else <tmp>/hybrid_exp-slots-<uid>
    fuse_seeds: bool = True  # jobs differing only in seed train as one fused array (one process)
    max_array_size: int = 10  # seeds per array at most (GPU memory grows with it)


ConfigStore.instance().store(group="hydra/launcher", name="gpus", node=GPULauncherConf,
                             provider="hybrid_exp")


def visible_gpus() -> list[str]:
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch  # only to count devices; the parent never initialises a CUDA context

    return [str(i) for i in range(torch.cuda.device_count())]


def make_slots(gpus, runs_per_gpu: int, n_jobs: int) -> list[tuple[str, str]]:
    """(lock name, CUDA_VISIBLE_DEVICES) per slot; the device is '' on a CPU slot."""
    if isinstance(gpus, int) and gpus < 0:  # visible[:-1] would silently drop the last one
        raise ConfigError(f"hydra.launcher.gpus={gpus}: give a number of GPUs (0: none), a list of "
                          f"them ([0,1]), or leave it out (every GPU)")
    visible = visible_gpus()
    if gpus is None:
        devices = visible
    elif isinstance(gpus, int):
        devices = visible[:gpus]
    else:
        devices = [str(g) for g in gpus]
    absent = [d for d in devices if d not in visible] or (isinstance(gpus, int) and gpus > len(visible))
    if absent:  # else its jobs would train on the CPU without a word
        seen = f"GPU(s) {', '.join(visible)}" if visible else "no GPU"
        raise ConfigError(f"hydra.launcher.gpus={gpus}, but this machine shows {seen}"
                         f"{' (CUDA_VISIBLE_DEVICES)' if 'CUDA_VISIBLE_DEVICES' in os.environ else ''}: "
                         f"name GPUs it has, or leave gpus out (every GPU; n_jobs CPU jobs without one)")
    if devices:
        return [(f"gpu{d}-{k}", d) for d in devices for k in range(runs_per_gpu)]
    return [(f"cpu-{k}", "") for k in range(n_jobs)]


def default_lock_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")  # the user's own tmpfs, where there is one
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "hybrid_exp-slots"
    return Path(tempfile.gettempdir()) / f"hybrid_exp-slots-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """``path``, created with mode 0700, after checking that it is a directory of ours that no
    one else can write: in a shared /tmp another user could otherwise pre-create it and hold
    every slot's lock, stopping our grids forever."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(
            f"the slot lock directory {path} is not a private directory of this user (owner uid "
            f"{info.st_uid}, mode {stat.filemode(info.st_mode)}): remove it, or choose another "
            f"with hydra.launcher.lock_dir=...")
    return path


WAIT_REPORT_SECONDS = 180  # how often a job waiting for a slot says so
STARTED = b"slot claimed: "  # a job's first message to the launcher, before its JobReturn


def claim(slots: list[tuple[str, str]], lock_dir: Path, what: str = "",
          report_every: float = WAIT_REPORT_SECONDS) -> tuple[int, tuple[str, str]]:
    """Block until one of ``slots`` is ours: (open lock file descriptor, the slot). The lock
    file then names its holder (pid, ``what`` it runs); while every slot is held, a line names
    the holders every ``report_every`` seconds (at once the first time). The lock files
    (``hybrid_exp.locks``) are in a directory checked to be private (``private_dir``), and held
    by the job process itself until it exits."""
    private_dir(lock_dir)
    reported = None
    while True:
        for name, device in slots:
            fd = locks.claim(lock_dir / f"{name}.lock", f"pid {os.getpid()}: {redact(what)}")
            if fd is not None:
                return fd, (name, device)  # held until this process exits
        if reported is None or time.monotonic() - reported >= report_every:
            reported = time.monotonic()
            holders = "; ".join(f"{name} by {locks.holder(lock_dir / f'{name}.lock')}" for name, _ in slots)
            log.warning("waiting for a free slot: every one is held (%s). Another grid of yours "
                        "may hold them (slots are shared by this user's grids); to run beside it, "
                        "give this one its own with hydra.launcher.lock_dir=DIR", holders)
        time.sleep(0.5)  # every slot busy, e.g. with another grid's jobs


def run_in_slot(idx: int, job: bytes, slots: list[tuple[str, str]], lock_dir: Path, threads: int,
                result, what: str = "") -> None:
    """A job's process: claim a slot, pin its GPU and threads, run the job, send its result.

    ``job`` is the cloudpickled (overrides, Hydra context, config, task, Hydra state), unpacked
    only once the environment is pinned: nothing can have initialised CUDA before. The first
    message on ``result`` names the slot once it is claimed; the second is the JobReturn."""
    _, (name, device) = claim(slots, lock_dir, what)
    result.send_bytes(STARTED + name.encode())
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(job)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    try:
        result.send_bytes(cloudpickle.dumps(run_job(
            hydra_context=hydra_context, task_function=task_function, config=sweep_config,
            job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")))
    except KeyboardInterrupt:  # Ctrl-C: its runs are marked KILLED already; the launcher reports
        os._exit(130)


class GPULauncher(Launcher):
    def __init__(self, gpus=None, runs_per_gpu: int = 1, n_jobs: int = 1, lock_dir=None,
                 fuse_seeds: bool = True, max_array_size: int = 10):
        if min(runs_per_gpu, n_jobs, max_array_size) < 1:
            raise ConfigError(f"hydra.launcher.runs_per_gpu, n_jobs and max_array_size must be >= 1; "
                             f"got runs_per_gpu={runs_per_gpu}, n_jobs={n_jobs}, "
                             f"max_array_size={max_array_size}")
        self.gpus, self.runs_per_gpu, self.n_jobs = gpus, runs_per_gpu, n_jobs
        self.array_size = max_array_size if fuse_seeds else 1
        self.lock_dir = private_dir(Path(lock_dir) if lock_dir else default_lock_dir())  # checked up front

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return launch_grid(self.config, self.hydra_context, self.launch_jobs, job_overrides, initial_job_idx, self.array_size)

    def launch_jobs(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        slots = make_slots(self.gpus, self.runs_per_gpu, self.n_jobs)
        threads = max(1, (os.cpu_count() or 1) // len(slots))
        log.info("Launching %d jobs on %d slots (%s), %d CPU threads each", len(job_overrides),
                 len(slots), ", ".join(device or "cpu" for _, device in slots), threads)
        spawn = multiprocessing.get_context("spawn")  # a fresh process: CUDA not yet initialised
        state = Singleton.get_state()
        pending = list(enumerate(job_overrides, start=initial_job_idx))
        running, results = {}, {}
        try:
            self.run_all(pending, running, results, spawn, state, slots, threads)
        except KeyboardInterrupt:  # Ctrl-C reaches every job of the terminal's process group too
            for _, _, process in running.values():
                process.join(timeout=120)  # each marks its runs KILLED, then ends
            stopped = [" ".join(o) for _, o, _ in running.values()] + [" ".join(o) for _, o in pending]
            log.warning("Grid interrupted: %d of %d jobs had finished; interrupted or not started "
                        "(the same command resumes them, from their last checkpoints):\n  %s",
                        len(results), len(job_overrides), "\n  ".join(stopped))
            raise SystemExit(130) from None
        return [results[idx] for idx in sorted(results)]

    def run_all(self, pending, running, results, spawn, state, slots, threads) -> None:
        """Start jobs as slots free up; collect each one's JobReturn into ``results``."""
        total, started = len(pending), 0
        while pending or running:
            while pending and len(running) < len(slots):
                idx, overrides = pending.pop(0)
                reader, writer = spawn.Pipe(duplex=False)
                job = cloudpickle.dumps((overrides, self.hydra_context, self.config,
                                         self.task_function, state))  # closures included
                process = spawn.Process(target=run_in_slot, args=(
                    idx, job, slots, self.lock_dir, threads, writer,
                    "python -m hybrid_exp " + " ".join(overrides)))
                process.start()
                writer.close()
                running[reader] = (idx, overrides, process)
            for reader in wait(list(running)):  # a message arrived, or the process ended
                idx, overrides, process = running[reader]
                try:
                    message = reader.recv_bytes()
                except EOFError:  # died without a result: killed, out of memory, ...
                    message = None
                if message and message.startswith(STARTED):  # it holds a slot now: it trains
                    started += 1
                    log.info("job %d of %d started (slot %s): %s", started, total,
                             message.removeprefix(STARTED).decode(), redact(" ".join(overrides)))
                    continue
                del running[reader]
                process.join()
                results[idx] = cloudpickle.loads(message) if message else JobReturn(
                    overrides=list(overrides), status=JobStatus.FAILED, _return_value=RuntimeError(
                        f"job process ended with exit code {process.exitcode}"))
                log.info("job %d of %d done (%d running): %s", len(results), total, len(running),
                         redact(" ".join(overrides)))
