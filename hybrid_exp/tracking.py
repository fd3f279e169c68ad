"""The run lifecycle in MLflow: one run per training, found FINISHED (skipped), interrupted
(resumed) or new, logged epoch by epoch, ended FINISHED, FAILED or KILLED. What identifies a run
is hybrid_exp.schema's; the store and its connection are hybrid_exp.store's."""
import contextlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from hybrid_exp import store
from hybrid_exp.errors import DiskFull, StoreFailed, disk_full
from hybrid_exp.redact import redact, redact_tree
from hybrid_exp.schema import (
    GIT_DIFF,
    code_changes,
    code_files,
    code_fingerprint,
    config_hash,
    flatten,
    git_diff,
    git_sha,
    run_schema,
)
from hybrid_exp.store import Client

log = logging.getLogger(__name__)

WEIGHTS = "model.pt"  # each FINISHED run's trained weights (python -m hybrid_exp.evaluate reads them)
PREDICTIONS = "test_predictions.npz"  # each FINISHED run's per-image evidence
EVIDENCE = {"config.yaml", WEIGHTS, PREDICTIONS}  # what a run must hold to end FINISHED


@dataclass(frozen=True)
class Experiment:
    """The experiment a config's runs go to (``logger.experiment_name`` in its store), as
    training and the launcher use it."""

    client: Client
    id: str

    @classmethod
    def open(cls, logger_cfg: DictConfig) -> "Experiment":
        """The experiment of ``logger_cfg``, its store and it created if needed."""
        return cls(*store.connect(logger_cfg))

    def finished(self, cfg: DictConfig, fingerprint: str) -> Run | None:
        """The run that makes ``cfg`` need no training: its newest FINISHED run on the same data
        (``data_fingerprint``) and the same code (``code_files``: the modules that build and train
        it); none with ``rerun=true``. A run logged before runs recorded their data or code counts
        as the same: an upgrade does not retrain what finished. The one rule the launcher (before
        a grid starts) and training (in each job) skip by."""
        if cfg.get("rerun"):
            return None
        runs = self.client.search_runs([self.id], f"tags.config_hash = '{config_hash(cfg)}' and "
                                                  f"attributes.status = 'FINISHED'",
                                       max_results=100, order_by=["attributes.start_time DESC"])
        same = [r for r in runs if r.data.tags.get("data_fingerprint", fingerprint) == fingerprint]
        if not same:
            return None
        changed = code_changes(same[0].data.tags.get("code_files"), code_files(cfg))
        if changed:  # its numbers are another code's: said, and trained again
            log.warning("%s-seed%s: the code that builds and trains it changed since its FINISHED run %s "
                        "(%s): training it again (docs/scaling.md, 'Run identity')", same[0].data.tags.get(
                            "setup", "?"), cfg.seed, same[0].info.run_id, ", ".join(changed))
            return None
        return same[0]

    def resumable(self, checkpoint_dir: Path) -> list[str] | None:
        """The run ids stored beside a checkpoint (one per member, in order), if any of those
        runs was interrupted (RUNNING after a crash, KILLED after Ctrl-C); a FAILED run stays as
        the record of its failure, and an array whose runs all ended has nothing to resume."""
        stored = checkpoint_dir / "run_id"
        if not stored.is_file():
            return None
        run_ids = stored.read_text().split()
        try:
            runs = [self.client.get_run(run_id) for run_id in run_ids]
        except MlflowException:  # deleted from the store
            return None
        interrupted = lambda run: run.info.status in ("RUNNING", "KILLED") and "pruned" not in run.data.tags
        return run_ids if any(interrupted(run) for run in runs) else None

    def end_orphans(self, cfg: DictConfig, keep: list[str]) -> None:
        """End KILLED the RUNNING runs of ``cfg`` other than ``keep``: called by the process that
        holds the config's claim (so no other process trains them) and does not resume them
        (their checkpoint is gone: deleted, or on another machine's disk). Left RUNNING they
        would look alive forever."""
        for run in self.client.search_runs([self.id], f"tags.config_hash = '{config_hash(cfg)}' and "
                                                      f"attributes.status = 'RUNNING'"):
            if run.info.run_id not in keep:
                reason = "interrupted, and its checkpoint is gone: the config trains again in a new run"
                self.client.set_tag(run.info.run_id, "error", reason)
                self.client.set_terminated(run.info.run_id, "KILLED")
                log.warning("run %s (%s): %s", run.info.run_id, run.info.run_name, reason)

    @contextlib.contextmanager
    def open_run(self, cfg: DictConfig, tags: dict[str, str], params: dict[str, int],
                 resume: str | None = None):
        """Create the run (params, tags, config artifact), or reopen ``resume``; FINISHED on
        success (unless it was failed meanwhile), else FAILED with the reason (KILLED on Ctrl-C).
        Yields its ``TrackedRun``.

        ``tags`` must hold 'setup' and 'seed'; the run is named '<setup>-seed<seed>' (an Optuna
        trial's '<setup>-trial<number>-seed<seed>')."""
        if resume:
            run_id = resume
            self.client.update_run(run_id, "RUNNING")
        else:
            trial = f"-trial{tags['optuna.trial_number']}" if "optuna.trial_number" in tags else ""
            files = code_files(cfg)
            run = self.client.create_run(self.id, run_name=f"{tags['setup']}{trial}-seed{tags['seed']}",
                                         tags={**tags, **run_schema(cfg), "git_sha": git_sha(),
                                               "code_fingerprint": code_fingerprint(files),
                                               "code_files": json.dumps(files, sort_keys=True)})
            run_id = run.info.run_id
            if diff := git_diff():  # the commit alone does not say what a dirty checkout trained
                self.client.log_text(run_id, redact(diff), GIT_DIFF)
        try:
            if not resume:
                resolved = redact_tree(OmegaConf.to_container(cfg, resolve=True))  # no passwords
                all_params = {**flatten(resolved), **{k: str(v) for k, v in params.items()}}
                items = [Param(k, v) for k, v in sorted(all_params.items())]
                for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                    self.client.log_batch(run_id, params=items[i:i + 100])
                self.client.log_text(run_id, OmegaConf.to_yaml(resolved), "config.yaml")
            tracked = TrackedRun(self.client, run_id, resumed=bool(resume))
            yield tracked
        except StoreFailed:  # nothing can be recorded now: the run stays as it is, to be resumed
            raise
        except BaseException as e:  # Lightning turns Ctrl-C into SystemExit: both are KILLED
            import optuna

            pruned = isinstance(e, optuna.TrialPruned)  # stopped early by the Optuna pruner
            stopped = out_of_requeues(e) or disk_full(e)  # the run is whole so far: it resumes
            failed = isinstance(e, Exception) and not pruned and not stopped
            reason = f"{type(e).__name__}: {e}"[:5000] if failed else str(e) if pruned else \
                f"interrupted: {stopped if isinstance(stopped, DiskFull) else e}" if stopped else "interrupted"
            if self.client.get_run(run_id).info.status != "FAILED":  # else failed by itself before
                self.client.set_tag(run_id, "pruned" if pruned else "error", reason)
                self.client.set_terminated(run_id, "FAILED" if failed else "KILLED")
                # a pruned trial is the sweep working as meant; an interruption resumes
                level = logging.ERROR if failed else logging.INFO if pruned else logging.WARNING
                log.log(level, "run %s-seed%s %s: %s", tags["setup"], tags["seed"],
                        "FAILED" if failed else "KILLED", reason)
            raise
        if not tracked.failed:
            self.client.set_terminated(run_id, "FINISHED")


class TrackedRun:
    """One training's MLflow run, as ``Experiment.open_run`` yields it: log a metric dict per epoch (each
    metric and epoch once, also across a resume), or end it FAILED with a reason (a member of a
    fused array that diverged, while the others go on)."""

    def __init__(self, client: Client, run_id: str, resumed: bool):
        self.client, self.run_id, self.failed, self.resumed = client, run_id, False, resumed
        # A resumed run replays the epoch that was under way when it was killed; points already
        # logged for it are kept, not doubled: one point per metric and epoch.
        self.last_step = {key: max(m.step for m in client.get_metric_history(run_id, key))
                          for key in client.get_run(run_id).data.metrics} if resumed else {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if step > self.last_step.get(k, -1)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_predictions(self, indices, labels, logits) -> None:
        """``test_predictions.npz``: per image of the evaluation subset its position in the
        official test set, its label, the predicted class and the logits (a (N, K) tensor,
        stored as float16)."""
        import numpy as np

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / PREDICTIONS
            np.savez_compressed(path, indices=np.asarray(indices, dtype=np.int64),
                                labels=np.asarray(labels, dtype=np.int16),
                                predicted=logits.argmax(1).numpy().astype(np.int16),
                                logits=logits.numpy().astype(np.float16))
            self.client.log_artifact(self.run_id, str(path))

    def log_weights(self, state: dict, name: str = WEIGHTS) -> None:
        """``model.pt`` (or ``name``): a state_dict of the network (the unfused layout; load it
        with ``torch.load(..., weights_only=True)``)."""
        import torch

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            torch.save(state, path)
            self.client.log_artifact(self.run_id, str(path))

    def check_evidence(self) -> str | None:
        """Fail the run if what it must hold to stand as a result (``EVIDENCE``) is not in the
        store's artifacts (deleted or moved while it trained: a FINISHED run nobody could
        check); the reason, or None."""
        missing = sorted(EVIDENCE - {a.path for a in self.client.list_artifacts(self.run_id)})
        if not missing:
            return None
        reason = (f"its {', '.join(missing)} went missing from the store's artifacts while it ran "
                  f"(deleted or moved): it trains again in a new run when relaunched")
        log.error("run %s FAILED: %s", self.run_id, reason)
        self.fail(reason)
        return reason

    def fail(self, reason: str) -> None:
        self.client.set_tag(self.run_id, "error", reason[:5000])
        self.client.set_terminated(self.run_id, "FAILED")
        self.failed = True


def dataset_input(name: str, root: str, fingerprint: str, sizes: dict[str, int]):
    """A run's data as MLflow's own dataset record (the UI's Dataset column): named by the
    dataset and its split sizes (one record per dataset and protocol, shared by their runs),
    its digest the data fingerprint."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    words = ", ".join(f"{n:,} {split}" for split, n in sizes.items())
    return DatasetInput(Dataset(name=f"{name} ({words})", digest=fingerprint, source_type="local",
                                source=json.dumps({"uri": redact(root)}), profile=json.dumps(sizes)),
                        tags=[InputTag("mlflow.data.context", "training")])


@contextlib.contextmanager
def system_metrics(client: Client, run_id: str, resumed: bool, seconds: float = 10):
    """MLflow's own monitor logging the machine's CPU, memory, disk and network use (and each
    GPU's, where nvidia-ml-py is installed) into the run every ``seconds`` while it trains:
    the UI's System metrics tab."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as e:  # psutil missing (an image without the project's requirements)
        log.info("trainer.system_metrics: off, %s (pip install psutil)", e)
        yield None
        return
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # a line per start and stop
    monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, resume_logging=resumed,
                                   tracking_uri=client.tracking_uri)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.finish()


def out_of_requeues(e: BaseException) -> bool:
    """submitit's error in a SLURM job preempted or out of time more often than
    ``max_num_timeout`` allows: its runs are interrupted, not failed (a relaunch resumes them)."""
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:  # the [slurm] extra is not installed
        return False
    return isinstance(e, UncompletedJobError)
