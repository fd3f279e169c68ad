"""Hydra launchers of hybrid-exp: ``hydra/launcher=gpus`` (one machine), ``hydra/launcher=slurm``."""


def register() -> None:
    """Make the launchers known to Hydra. Its plugin scan finds them in a wheel install but not
    through the import hook of an editable (`pip install -e`) one."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.hybrid_exp_launcher import gpus, slurm

    Plugins.instance().register(gpus.GPULauncher)
    if slurm.Submitit is not None:
        Plugins.instance().register(slurm.SlurmLauncher)
