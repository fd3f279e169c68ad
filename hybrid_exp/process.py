"""What a process of the platform sets up once, before its work: a quiet terminal that shows
no password, the config resolvers and the Hydra plugins. Each entry point calls ``setup()`` first (the CLI, a grid's job,
``train()`` called from Python, evaluate, copy_runs, similarity, bench, the analysis); importing a
module changes nothing."""
import logging
import os
import sys
import warnings

# Lines that say nothing the run's log and tags do not: Lightning advertises its cloud logger and
# lists the accelerators it did not use at every start; MLflow announces each store migration (a
# new store: a dozen lines) and logs a traceback for each failed attempt at a store error
# (store.retrying says it once, in a sentence).
LIGHTNING_NOISE = ("litlogger", "GPU available:", "TPU available:", "HPU available:")
STORE_NOISE = "SQLAlchemy database error"
# Warnings about code that is not ours: Lightning's pytree helper warns about a deprecation it
# calls itself, and, where SLURM is installed, that a job not started by srun is not one (it
# knows: SLURM_JOB_ID is unset).
WARNINGS = (r".*isinstance\(treespec, LeafSpec\).* is deprecated",
            r"The `srun` command is available on your system but is not used")


def lightning_says_something(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not message.startswith(LIGHTNING_NOISE) and "litlogger" not in message


def store_says_something(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(STORE_NOISE)


def setup(hydra_app: bool = False) -> None:
    """Idempotent: a second call changes nothing. ``hydra_app``: the process runs the Hydra app
    (python -m hybrid_exp, a grid's job), which needs our launchers and sweeper registered."""
    from omegaconf import OmegaConf

    from hybrid_exp import class_folders
    from hybrid_exp.redact import RedactedStream

    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if lightning_says_something not in lightning.filters:
        lightning.addFilter(lightning_says_something)
    store = logging.getLogger("mlflow.store.db.utils")
    store.setLevel(logging.WARNING)
    if store_says_something not in store.filters:
        store.addFilter(store_says_something)
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # MLflow draws a progress bar for every artifact it moves (a report reads hundreds), and
    # prints each run's URL, a server's password included (the grid summary links the runs)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A tracking server that stops answering: MLflow retries each request (a restart loses
    # nothing) for about a minute, not its default quarter of an hour; then store.retrying
    # says so in a sentence and the run resumes when relaunched
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        os.environ.setdefault(name, value)
    for name in ("stdout", "stderr"):  # the process's own streams (not a test's capture), once
        if getattr(sys, name) is getattr(sys, f"__{name}__"):
            setattr(sys, name, RedactedStream(getattr(sys, name)))
    if not OmegaConf.has_resolver("class_folders"):  # data=image_folder's num_classes
        OmegaConf.register_new_resolver("class_folders", class_folders)
    if not OmegaConf.has_resolver("pid"):  # a run's folder: two started in one second get their own
        OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True)
    if hydra_app:
        from hydra_plugins.hybrid_exp_launcher import register

        register()
