"""Hydra callbacks: what a grid does once, before its first job starts, in this order
(conf/config.yaml); a single run's config is checked too, before anything is created. Each stops the grid with one sentence when it fails: Hydra would only warn
about a callback's exception and start every job anyway. The heavy modules load inside the hooks:
a single run, which instantiates these too, stays quick to say what is wrong."""
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckConfigs(Callback):
    """Every job's config checked (before the data is read and the store created); a single
    run's before Hydra creates its output folder."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.checks import ConfigError, check_config, own_names

        try:
            check_config(own_names(config))
        except ConfigError as e:
            raise SystemExit(str(e)) from None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.checks import ConfigError, check_code, check_match, check_values, grid_configs

        try:
            jobs = grid_configs(config)
        except ConfigError as e:
            raise SystemExit(str(e)) from None
        if config.hydra.sweeper._target_.endswith(".OptunaSweeper"):  # its search space, trials, storage
            from hydra.utils import instantiate

            try:
                instantiate(config.hydra.sweeper).validate(config, list(config.hydra.overrides.task))
            except ValueError as e:
                raise SystemExit(str(e)) from None
        launcher = config.hydra.launcher
        if launcher._target_.endswith(".GPULauncher"):  # the GPUs it names exist here
            from hydra_plugins.hybrid_exp_launcher.gpus import make_slots

            try:
                make_slots(launcher.gpus, launcher.runs_per_gpu, launcher.n_jobs)
            except ValueError as e:
                raise SystemExit(str(e)) from None
        for stage in (check_values, check_match, check_code):  # the quick checks first, for all jobs
            for overrides, cfg in jobs:
                try:
                    stage(cfg)
                except ConfigError as e:
                    where = f" (job {' '.join(overrides)})" if overrides else ""
                    raise SystemExit(f"{e}{where}") from None


class CheckTracking(Callback):
    """A tracking URI that cannot work, or a server that is down or refuses us; a single run's
    before Hydra creates its output folder."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.on_multirun_start(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.tracking import TrackingUnavailable, check_server, resolve_tracking_uri

        try:
            check_server(resolve_tracking_uri(config.logger.tracking_uri)[0])
        except TrackingUnavailable as e:
            raise SystemExit(str(e)) from None


class PrepareData(Callback):
    """The grid's dataset read once (downloaded, checked, decoded and cached), so that parallel
    jobs neither download it side by side nor each fail alone; a single run's, before Hydra
    creates its output folder (a missing dataset leaves nothing behind)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.on_multirun_start(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.data import DataError
        from hybrid_exp.registry import build

        try:
            build(config, "data", seeds=[0]).check_splits()  # loads it, and draws a split
        except DataError as e:
            raise SystemExit(str(e)) from None
        except Exception as e:  # not foreseen: every job would fail on it in turn
            raise SystemExit(f"the dataset (data={config.data._target_.rsplit('.', 1)[-1]}, "
                             f"data.root={config.data.get('root')}) could not be read: "
                             f"{type(e).__name__}: {e}") from None


class PrepareTracking(Callback):
    """The store and the experiment created once, so that parallel jobs never race to
    initialise the database or create the experiment."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hybrid_exp.tracking import TrackingUnavailable, connect

        try:
            connect(config.logger)
        except TrackingUnavailable as e:
            raise SystemExit(str(e)) from None
