"""Hydra callbacks: what a grid does once, before its first job starts, in this order
(conf/config.yaml); a single run's config is checked too, before anything is created. Each stops
the grid with one sentence when it fails (``errors.reported``): Hydra would only warn about a
callback's exception and start every job anyway. The heavy modules load inside the hooks: a
single run, which instantiates these too, stays quick to say what is wrong."""
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from hybrid_exp.errors import DataError, UserError, reported


class CheckConfigs(Callback):
    """Every job's config checked (before the data is read and the store created); a single
    run's before Hydra creates its output folder."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.checks import check_config, check_launch, own_names

        with reported():
            check_launch(config)
            check_config(own_names(config))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.checks import check_code, check_fusable, check_launch, check_match, check_values, grid_configs
        from hybrid_exp.job import seed_of
        from hydra_plugins.hybrid_exp_launcher.arrays import group_seeds

        with reported():
            check_launch(config)
            jobs = grid_configs(config)
            if config.hydra.sweeper._target_.endswith(".OptunaSweeper"):  # its search space, trials, storage
                from hydra.utils import instantiate

                instantiate(config.hydra.sweeper).validate(config, list(config.hydra.overrides.task))
            launcher = config.hydra.launcher
            if launcher._target_.endswith(".GPULauncher"):  # the GPUs it names exist here
                from hydra_plugins.hybrid_exp_launcher.gpus import make_slots

                make_slots(launcher.gpus, launcher.runs_per_gpu, launcher.n_jobs)
        fused = [jobs[group[0]] for group in group_seeds([o for o, _ in jobs], launcher.get("max_array_size", 1))
                 if launcher.get("fuse_seeds") and len(group) > 1 and seed_of(jobs[group[0]][0]) is not None]
        checks = [(check_values, jobs), (check_fusable, fused), (check_match, jobs), (check_code, jobs)]
        for stage, configs in checks:  # the quick checks first, for all jobs
            for overrides, cfg in configs:
                with reported(f" (job {' '.join(overrides)})" if overrides else ""):
                    stage(cfg)


class CheckTracking(Callback):
    """A tracking URI that cannot work, or a server that is down or refuses us; a single run's
    before Hydra creates its output folder."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.on_multirun_start(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.store import check_server, resolve_tracking_uri

        with reported():
            check_server(resolve_tracking_uri(config.logger.tracking_uri)[0])


class PrepareData(Callback):
    """The grid's dataset read once (downloaded, checked, decoded and cached), so that parallel
    jobs neither download it side by side nor each fail alone; a single run's, before Hydra
    creates its output folder (a missing dataset leaves nothing behind)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.on_multirun_start(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.registry import build

        with reported():
            try:
                build(config, "data", seeds=[0]).check_splits()  # loads it, and draws a split
            except UserError:
                raise
            except Exception as e:  # not foreseen: every job would fail on it in turn
                raise DataError(f"the dataset (data={config.data._target_.rsplit('.', 1)[-1]}, "
                                f"data.root={config.data.get('root')}) could not be read: "
                                f"{type(e).__name__}: {e}") from None


class PrepareTracking(Callback):
    """The store and the experiment created once, so that parallel jobs never race to
    initialise the database or create the experiment."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.store import connect

        with reported():
            connect(config.logger)
