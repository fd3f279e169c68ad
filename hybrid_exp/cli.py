"""``python -m hybrid_exp [overrides]`` trains once; ``-m`` launches a grid (Hydra multirun)."""
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hybrid_exp import config_dir, errors, process
from hybrid_exp.job import JobRecord, failed_whole, objective
from hybrid_exp.redact import redact, redact_files


def config_tree(cfg: DictConfig, output_dir: Path) -> None:
    """The composed config as a tree, group by group, saved beside the job's outputs
    (``config_tree.log``); on a terminal, the tree of what differs from the defaults
    (``python -m hybrid_exp`` with no override): what this run changes."""
    from rich.console import Console

    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "config_tree.log", "w") as f:
        Console(file=f, width=100, color_system=None).print(tree(cfg))
    if sys.stdout.isatty():
        from hydra import compose

        defaults = compose(HydraConfig.get().job.config_name)
        Console().print(tree(cfg, changed_from=defaults))


def tree(cfg: DictConfig, changed_from: DictConfig | None = None):
    """A rich tree of ``cfg``, a branch per top-level key; with ``changed_from``, only the keys
    whose values differ from it (as written, before interpolation), with their values."""
    from rich.syntax import Syntax
    from rich.tree import Tree

    if changed_from is None:
        title, branches = "config", {key: OmegaConf.to_container(value, resolve=True)
                                     if OmegaConf.is_config(value) else value for key, value in cfg.items()}
    else:
        written = lambda c: dict(leaves(OmegaConf.to_container(c, resolve=False)))
        default = written(changed_from)
        title, branches = "config: what differs from the defaults (all of it: config_tree.log)", {}
        for key in (k for k, v in written(cfg).items() if default.get(k) != v):
            value = OmegaConf.select(cfg, key)
            group, _, rest = key.partition(".")
            branches.setdefault(group, {})[rest or group] = \
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    root = Tree(title, guide_style="dim")
    for key, value in branches.items():
        text = OmegaConf.to_yaml(value) if isinstance(value, (dict, list)) else str(value)
        root.add(str(key)).add(Syntax(redact(text).rstrip(), "yaml"))
    return root


def leaves(node, prefix: str = ""):
    """(dotted key, value) of each value that is no mapping: a list is one value."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def task(cfg: DictConfig):
    """One job: train (or skip, or resume) one seed, or several as a fused array (``seed`` a
    list, as the launcher makes them); record each run's outcome beside the job's outputs.

    Returns the objective, ``cfg.objective`` (a metric, or a list of them for several
    objectives; ``test/error`` stands in for ``val/error`` when there is no validation split);
    for an array, a list of them, one per seed, None for a seed that failed. A single run that
    fails raises its error."""
    from hybrid_exp.train import train  # imported late: `--help` and config errors stay fast

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if HydraConfig.get().output_subdir:  # Hydra saved the job's configs there as given
        redact_files(output_dir / HydraConfig.get().output_subdir)
    config_tree(cfg, output_dir)
    from hybrid_exp.members import setup_name

    setup = setup_name(cfg)
    requeues = int(os.environ.get("SLURM_RESTART_COUNT", 0))  # a SLURM job preempted or out of time
    start = time.monotonic()
    try:
        results = train(cfg)
    except Exception as e:
        import optuna  # already loaded by train

        e = errors.disk_full(e) or e  # a full disk is the user's to mend, and said so
        pruned = isinstance(e, optuna.TrialPruned)
        failed_whole(setup, "pruned" if pruned else "failed", f"{type(e).__name__}: {e}", requeues).write(output_dir)
        if isinstance(e, errors.UserError) and HydraConfig.get().mode == RunMode.RUN:
            raise errors.leave(e) from None  # a grid's job raises it: its launcher records it
        raise
    JobRecord(setup, results, requeues, time.monotonic() - start).write(output_dir)
    if OmegaConf.is_list(cfg.seed):
        return [None if r.status == "failed" else objective(cfg, r.metrics) for r in results]
    if results[0].status == "failed":
        raise RuntimeError(results[0].error)
    return objective(cfg, results[0].metrics)


# Options of hydra-optuna-sweeper's configs that Optuna no longer has.
REMOVED = {"hydra/sweeper/sampler=motpe": "MOTPESampler was removed in Optuna 4, which searches "
                                          "several objectives with TPE: use hydra/sweeper/sampler=tpe"}


def unknown_option(args: list[str]) -> str | None:
    """One sentence for a group option that does not exist (``model=seperable``), with the
    closest one: before Hydra, whose answer is a 30-line list (printed twice in a grid)."""
    import re

    conf = Path(config_dir())
    for arg in args:
        if arg in REMOVED:
            return f"{arg}: {REMOVED[arg]}"
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        if key.startswith("hydra") or not (conf / key).is_dir() or "(" in value:
            continue  # not one of ours, or a sweeper's search space
        options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
        for option in re.split(r"[\[\],\s]+", value):
            if option and option != "null" and option not in options:
                hint = errors.did_you_mean(option, options, f"{key}=")
                return f"{key}={option}: no such option in conf/{key}/; {hint}(options: {', '.join(options)})"
    return None


def main() -> None:
    with errors.reported():
        mistake = unknown_option(sys.argv[1:])
        if mistake:
            raise errors.ConfigError(mistake)
    hydra_main()


process.setup(hydra_app=True)  # here, not in main(): a grid's job process imports this module to run task()
hydra_main = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(task)
