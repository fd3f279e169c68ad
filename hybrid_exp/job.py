"""A job's record: what each of its runs came to (``Result``), kept beside the job's outputs as
``job_status.json`` (``JobRecord``) for the grid's summary and a fused array's split, and what a
job returns to its launcher or sweeper (``objective``). Plain data: no torch, no MLflow."""
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

STATUS_FILE = "job_status.json"


@dataclass
class Result:
    seed: int | None  # None: the job failed as a whole, before any run had an outcome
    status: str  # 'finished', 'skipped' (an equal config had FINISHED), 'failed' or 'pruned'
    metrics: dict[str, float]  # final metrics, errors in %
    run_id: str | None
    error: str = ""


@dataclass
class JobRecord:
    setup: str
    runs: list[Result]  # one per seed, in the job's order; one seedless Result if the job failed
    requeues: int = 0  # times SLURM requeued the job (preempted, or out of time)
    seconds: float | None = None  # the job's training time, when it trained

    def write(self, output_dir: Path) -> None:
        (Path(output_dir) / STATUS_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, output_dir: str | Path | None) -> "JobRecord | None":
        """The record in ``output_dir``, None when the job left none (it never started, or a
        signal ended it)."""
        path = Path(output_dir or "/nonexistent") / STATUS_FILE
        if not path.is_file():
            return None
        whole = json.loads(path.read_text())
        return cls(**{**whole, "runs": [Result(**run) for run in whole["runs"]]})

    @classmethod
    def of(cls, job) -> "JobRecord | None":
        """The record of a Hydra ``JobReturn``, read from its output folder."""
        return cls.read(job.hydra_cfg.hydra.runtime.output_dir if job.hydra_cfg else None)

    def run(self, seed: str | None) -> Result:
        """The Result of the run of ``seed`` (a ``seed=`` override's value); the whole job's
        when it failed as one, or when the seed is not in it."""
        return next((r for r in self.runs if seed is not None and str(r.seed) == seed), self.runs[0])


def objective(cfg: DictConfig, metrics: dict[str, float]):
    """What a job returns for a run's final ``metrics``: ``cfg.objective``, a metric or a list
    of them; None for a metric the run did not log (``val/*`` without a validation split): no
    other metric, the test set's least of all, stands in for it."""
    value = lambda key: metrics.get(key)
    return value(cfg.objective) if isinstance(cfg.objective, str) else [value(k) for k in cfg.objective]


def seed_of(overrides: Sequence[str]) -> str | None:
    """The value of a ``seed=`` override, if the job has one that is an integer."""
    for override in overrides:
        if override.startswith("seed="):
            value = override.removeprefix("seed=")
            return value if value.lstrip("-").isdigit() else None
    return None


def failed_whole(setup: str, status: str, error: str, requeues: int) -> JobRecord:
    """The record of a job that raised before its runs had outcomes (``status``: 'failed', or
    'pruned' by an Optuna pruner)."""
    return JobRecord(setup, [Result(None, status, {}, None, error)], requeues)

