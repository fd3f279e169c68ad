"""Optuna studies as Hydra sweeps, with hydra-optuna-sweeper's config surface, on Optuna >= 4.

The study lives in its storage (a SQLite file by default): rerunning the same command finds it
and runs only the trials still missing up to ``n_trials``. Trials are launched ``n_jobs`` at a
time through the configured launcher (``hydra/launcher=gpus``: in parallel, one GPU each). Each
job receives its trial (``++optuna.storage/study_name/trial_id``) and reports to the storage,
so pruning works across processes and machines.
"""
import functools
import hashlib
import itertools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from hybrid_exp.errors import ConfigError, TooManyFailures
from hybrid_exp.redact import redact
from hybrid_exp.schema import run_schema

log = logging.getLogger(__name__)
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL)


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """An Optuna distribution from a sweep in Hydra's grammar, read as hydra-optuna-sweeper reads
    it: choice(...) and shuffle(range(...)) are categorical; range(a, b[, step]) is a stepped
    distribution from a to b *inclusive* (unlike a grid's range); interval(a, b) is a float
    range, an int one with int bounds (int(interval(a, b))); tag(log, ...) samples on a log scale.
    tag(int, interval(a, b)), this sweeper's earlier spelling, still means int(interval(a, b))."""
    sweep = override.value()
    if override.is_choice_sweep():
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(sweep, RangeSweep) and sweep.shuffle:  # in order: a resumed study's space is the same
        return optuna.distributions.CategoricalDistribution(sorted(override.sweep_iterator()))
    if isinstance(sweep, RangeSweep):
        if any(isinstance(v, float) for v in (sweep.start, sweep.stop, sweep.step)):
            return optuna.distributions.FloatDistribution(sweep.start, sweep.stop, step=sweep.step)
        return optuna.distributions.IntDistribution(int(sweep.start), int(sweep.stop), step=int(sweep.step))
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if "int" in sweep.tags or isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return optuna.distributions.IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
        return optuna.distributions.FloatDistribution(sweep.start, sweep.end, log=log_scale)
    raise ConfigError(f"hydra.sweeper.params: cannot search '{override.input_line}'; use "
                     f"choice(...), range(a,b[,step]), interval(a,b) or tag(log, interval(a,b))")


def grid_values(key: str, dist: optuna.distributions.BaseDistribution) -> list:
    """The values the grid sampler tries for one parameter: a choice, or a stepped range."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, (optuna.distributions.IntDistribution, optuna.distributions.FloatDistribution)) \
            and dist.step is not None and not dist.log:
        n = int(round((dist.high - dist.low) / dist.step)) + 1
        return [dist.low + i * dist.step for i in range(n)]
    raise ConfigError(f"hydra/sweeper/sampler=grid tries every value, so {key} needs choice(...) or "
                     f"range(a, b, step); an interval has no grid")


def dashboard_url(storage: str) -> str:
    """The study's storage as optuna-dashboard takes it from anywhere: without its password, a
    relative SQLite path made absolute."""
    url = redact(storage)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return url


def check_storage(storage: str) -> None:
    """A study storage Optuna can open: a database URL whose database answers, or a SQLite file
    in a folder that exists or can be made; one sentence otherwise, before any trial."""
    from sqlalchemy.engine import make_url

    from hybrid_exp.errors import TrackingUnavailable
    from hybrid_exp.store import check_database

    try:
        url = make_url(storage)
    except Exception:  # SQLAlchemy's own parse errors
        raise ConfigError(f"hydra.sweeper.storage={redact(storage)} is no database URL: give "
                          f"sqlite:///optuna.db (a file here) or postgresql://user@host/db") from None
    if url.drivername.startswith("sqlite"):
        folder = Path(url.database or ".").expanduser().resolve().parent
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not os.access(existing, os.W_OK):
            raise ConfigError(f"hydra.sweeper.storage={redact(storage)}: {existing} is not writable, and the "
                              f"study's file needs it: give a writable place, e.g. sqlite:///optuna.db")
        return
    try:
        check_database(storage, 5.0, what="the study storage", otherwise="or give hydra.sweeper.storage=sqlite:///optuna.db")
    except TrackingUnavailable as e:
        raise ConfigError(f"hydra.sweeper.storage: {e}") from None


def trial_value(config: DictConfig, values: Sequence[float]) -> str:
    """A trial's objective values as every line of the sweep says them ('val/error 23.45')."""
    objective = config.get("objective", "value")
    names = [objective] if isinstance(objective, str) else list(objective)
    return ", ".join(f"{name} {value:.4g}" for name, value in zip(names, values))


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
                 direction: Any = "minimize",
                 storage: str | None = None, study_name: str | None = None, n_trials: int = 20,
                 n_jobs: int = 2, max_failure_rate: float = 0.0, params: dict | None = None,
                 custom_search_space: str | None = None):
        # built by Hydra from their _target_ configs; the grid sampler is a partial, completed
        # with the grid once the search space is known
        self.sampler, self.pruner = sampler, pruner
        self.directions = [direction] if isinstance(direction, str) else list(direction)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = dict(params or {})
        # a function (cfg, trial) that suggests more parameters, e.g. conditional on others
        self.extend_space = get_method(custom_search_space) if custom_search_space else None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        # a job prunes with its own copy of the pruner: it gets the pruner's config, as JSON
        self.pruner_json = json.dumps(OmegaConf.to_container(config.hydra.sweeper.pruner, resolve=True))
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def search_space(self, arguments: list[str]) -> tuple[dict, list[str]]:
        """({key: distribution}, fixed overrides) from hydra.sweeper.params and the command line.
        A key given one value on the command line leaves the search space (as in
        hydra-optuna-sweeper): ``model.width=64`` pins what the preset would search."""
        parser = OverridesParser.create()
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + arguments)
        space, fixed = {}, {}
        for override in overrides:
            key = override.get_key_element()
            if override.is_sweep_override():
                try:
                    space[key] = distribution(override)
                except ValueError as e:  # Optuna's own words on its bounds, with the key they belong to
                    raise ConfigError(f"{override.input_line}: {e}") from None
                fixed.pop(key, None)
            else:
                fixed[key] = override.input_line
                space.pop(key, None)
        return space, list(fixed.values())

    def validate(self, config: DictConfig, arguments: list[str]) -> tuple[dict, list[str], str]:
        """(search space, fixed overrides, storage) of the sweep ``config`` and its command line
        ``arguments`` describe, or a ValueError in one sentence: what the sweep would stop on,
        checked before a grid creates anything (hybrid_exp.grid_callbacks) and again here."""
        objective = config.get("objective")  # tune on validation, never on the test subset
        objectives = [objective] if isinstance(objective, str) else list(objective or [])
        if any(str(o).startswith("test/") for o in objectives):
            raise ConfigError(f"objective={objective} tunes on the test subset; use val/error")
        if "data" in config and config.data.get("val_size", 1) == 0:
            raise ConfigError("an Optuna sweep tunes on the validation split, but data.val_size=0 "
                             "holds none out: set data.val_size (e.g. 5000)")
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials must be a whole number >= 1; got {self.n_trials!r}")
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs (trials at once) must be a whole number >= 1; "
                              f"got {self.n_jobs!r}")
        space, fixed = self.search_space(arguments)
        if not space and not self.extend_space:
            raise ConfigError("nothing to search: give hydra.sweeper.params or sweeps on the command "
                             "line, e.g. optim.lr='tag(log, interval(0.01, 0.5))'")
        storage = self.storage or f"sqlite:///{Path.cwd() / 'optuna.db'}"
        check_storage(storage)
        tracking = OmegaConf.select(config, "logger.tracking_uri")  # a database of its own
        same = lambda uri: Path(uri.removeprefix("sqlite:///")).expanduser().resolve() \
            if str(uri).startswith("sqlite:///") else str(uri)
        if tracking is not None and same(storage) == same(str(tracking)):
            raise ConfigError(f"hydra.sweeper.storage={redact(storage)} is the MLflow store "
                             f"(logger.tracking_uri): give the study a database of its own, e.g. "
                             f"hydra.sweeper.storage=sqlite:///optuna.db (each would add its tables "
                             f"to the other's)")
        return space, fixed, storage

    def sweep(self, arguments: list[str]) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's value is said once, below
        space, fixed, storage = self.validate(self.config, arguments)
        name = self.study_name or self.default_study_name(space, fixed)
        n_trials, grid = self.n_trials, None
        if isinstance(self.sampler, functools.partial) and self.sampler.func is optuna.samplers.GridSampler:
            # the grid sampler: every combination once
            grid = {key: grid_values(key, dist) for key, dist in space.items()}
            n_trials = min(n_trials, math.prod(len(values) for values in grid.values()))
            # queued as trials rather than drawn by Optuna's GridSampler, which stops the study
            # from inside tell() and can draw one point twice for trials launched together
            self.sampler = optuna.samplers.RandomSampler(seed=self.sampler.keywords.get("seed"))
        study = optuna.create_study(
            study_name=name, storage=storage, load_if_exists=True, directions=self.directions,
            sampler=self.sampler, pruner=self.pruner)
        for values in itertools.product(*grid.values()) if grid else ():
            study.enqueue_trial(dict(zip(grid, values)), skip_if_exists=True)
        done = sum(t.state in DONE for t in study.trials)
        log.info("Study %s in %s: %d of %d trials done", name, redact(storage), done, n_trials)
        sampler_cfg = self.config.hydra.sweeper.sampler
        if done and sampler_cfg.get("seed") is not None and not grid:
            # a resumed sweep must not replay the trials its seed drew the first time
            study.sampler = instantiate(sampler_cfg, seed=sampler_cfg.seed + done)
        parent = self.parent_run(name, storage)
        try:
            completed = self.run_trials(study, space, fixed, storage, name, parent, done, n_trials)
        except BaseException as e:  # the study's run ends with it, not RUNNING forever
            if parent:
                self.tracking_client.set_terminated(parent, "FAILED" if isinstance(e, Exception) else "KILLED")
            raise
        if completed:
            self.report(study, storage, fixed)
        else:
            log.warning("Study %s: no trial completed, so there is no best trial (see the failed "
                        "trials above)", name)
        if parent:
            self.tracking_client.set_terminated(parent, "FINISHED" if completed else "FAILED")

    def run_trials(self, study: optuna.Study, space: dict, fixed: list[str], storage: str, name: str,
                   parent: str | None, done: int, n_trials: int) -> int:
        """Launch trials ``n_jobs`` at a time until ``n_trials`` are done; the number of the
        study's completed trials. Too many failures stop it, naming the last one's error."""
        failures, reason = 0, ""
        while done < n_trials:
            trials = [self.ask(study, space) for _ in range(min(self.n_jobs, n_trials - done))]
            batch = [fixed + [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                              for k, v in trial.params.items()]
                     + [f"++optuna.storage='{storage}'", f"++optuna.study_name='{name}'",
                        f"++optuna.trial_id={trial._trial_id}", f"++optuna.pruner='{self.pruner_json}'",
                        f"++optuna.parent_run_id={parent or 'null'}"] for trial in trials]
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, job in zip(trials, returns):
                failed = self.tell(study, trial, job)
                if failed:
                    failures, reason = failures + 1, f"trial {trial.number}: {failed}"
            done += len(trials)
            if failures > self.max_failure_rate * done:
                raise TooManyFailures(f"{failures} of {done} trials failed, more than "
                                   f"hydra.sweeper.max_failure_rate={self.max_failure_rate}; {redact(reason)}")
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)

    def ask(self, study: optuna.Study, space: dict) -> optuna.Trial:
        """A new trial with the space's parameters, plus those ``custom_search_space`` suggests."""
        trial = study.ask(space)
        if self.extend_space:
            self.extend_space(self.config, trial)
        return trial

    def tell(self, study: optuna.Study, trial: optuna.Trial, job) -> str:
        """Record a job's outcome in the study; why the trial failed, '' if it did not."""
        if job.status == JobStatus.COMPLETED:
            values = job.return_value if isinstance(job.return_value, Sequence) else [job.return_value]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                study.tell(trial, values)
                log.info("trial %d: %s with %s", trial.number, trial_value(self.config, values),
                         " ".join(f"{k}={v}" for k, v in trial.params.items()))
                return ""
            reason = f"non-finite objective {values}"
        elif isinstance(job._return_value, optuna.TrialPruned):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("trial %d pruned", trial.number)
            return ""
        else:
            reason = f"{type(job._return_value).__name__}: {job._return_value}"
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, redact(reason))
        return reason

    def default_study_name(self, space: dict, fixed: list[str]) -> str:
        """Stable across reruns of the same command: the experiment plus the search itself."""
        experiment = OmegaConf.select(self.config, "logger.experiment_name") or self.config.hydra.job.name
        digest = hashlib.sha256(repr((sorted(map(str, space.items())), sorted(fixed))).encode())
        return f"{experiment}-{digest.hexdigest()[:8]}"

    def parent_run(self, name: str, storage: str) -> str | None:
        """The MLflow run that holds the study's trials (hybrid-exp configs only), tagged with
        the study's name and storage (without its password) and, as its description, the
        optuna-dashboard command that opens the study."""
        if OmegaConf.select(self.config, "logger.tracking_uri") is None:
            return None
        from hybrid_exp import store

        client, experiment_id = store.connect(self.config.logger)
        self.tracking_client = client
        found = client.search_runs([experiment_id], f"tags.`hybrid_exp.kind` = 'study' and "
                                                    f"tags.`optuna.study_name` = '{name}'")
        if found:
            client.update_run(found[0].info.run_id, "RUNNING")
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"study-{name}", tags={
            "hybrid_exp.kind": "study", "optuna.study_name": name, "optuna.storage": dashboard_url(storage),
            "mlflow.note.content": f"Optuna study `{name}`; open it with `optuna-dashboard "
                                   f"{dashboard_url(storage)}`; its trials are the runs nested here."})
        return run.info.run_id

    def report(self, study: optuna.Study, storage: str, fixed: list[str]) -> None:
        """optimization_results.yaml and best.yaml (an experiment preset) in the sweep dir."""
        out = Path(self.config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        # what the values mean: the data, optimiser, epochs, precision and device they were tuned under
        protocol = run_schema(OmegaConf.masked_copy(self.config, [k for k in self.config if k != "hydra"]))["protocol"]
        results = {"name": "optuna", "study_name": study.study_name, "storage": redact(storage),
                   "protocol": protocol}
        if len(self.directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            chosen = best.params
        else:
            results["solutions"] = [{"params": t.params, "values": t.values, "trial": t.number}
                                    for t in study.best_trials]
            chosen = study.best_trials[0].params
        OmegaConf.save(OmegaConf.create(results), out / "optimization_results.yaml")
        preset = OmegaConf.from_dotlist([f"{k}={v}" for k, v in chosen.items()])
        (out / "best.yaml").write_text("# @package _global_\n# best trial of study "
                                       f"{study.study_name}; copy to conf/experiment/\n"
                                       f"# tuned under: {redact(protocol)}\n"
                                       + OmegaConf.to_yaml(preset))
        if len(self.directions) == 1:
            log.info("Best: trial %d, %s with %s (of %d trials; %s)", best.number, trial_value(self.config, [best.value]),
                     " ".join(f"{k}={v}" for k, v in best.params.items()), len(study.trials),
                     out / "optimization_results.yaml")
        else:
            log.info("Best: a Pareto front of %d trials (%s) -> %s", len(study.best_trials),
                     ", ".join(f"trial {t.number}: {t.values}" for t in study.best_trials),
                     out / "optimization_results.yaml")
