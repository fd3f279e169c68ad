"""Hydra plugins of hybrid-exp: launchers ``gpus`` (one machine) and ``slurm`` here, the sweeper
``optuna`` in hydra_plugins.hybrid_exp_sweeper."""


def register() -> None:
    """Make the plugins known to Hydra in this process, whatever its scan of ``hydra_plugins``
    finds (it finds them in a wheel and in an editable install of this layout; an editable
    install made before ``conf/`` moved into the package hides them behind an import hook)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.hybrid_exp_launcher import gpus, slurm
    from hydra_plugins.hybrid_exp_sweeper import optuna_sweeper

    Plugins.instance().register(gpus.GPULauncher)
    Plugins.instance().register(optuna_sweeper.OptunaSweeper)
    if slurm.Submitit is not None:
        Plugins.instance().register(slurm.SlurmLauncher)
