"""One training run, or a fused array of runs: build everything from the config, then skip,
resume or train, and test."""
import contextlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.environments import SLURMEnvironment
from torch import nn

from hybrid_exp import locks, process, tracking
from hybrid_exp.callbacks import BestWeights, EpochBar, LastCheckpoint, MemberRuns, OptunaPruning
from hybrid_exp.checks import check_config
from hybrid_exp.device import machine, resolve_precision, trains_on_gpu
from hybrid_exp.errors import disk_full
from hybrid_exp.fusion import fuse, member_state
from hybrid_exp.job import Result
from hybrid_exp.members import array_key, build_network, member_config, named, setup_name, trial_seeds
from hybrid_exp.module import Classifier, complexity, graph_blocker, prepare_network
from hybrid_exp.redact import redact
from hybrid_exp.registry import build
from hybrid_exp.schema import code_changes, code_files, config_hash
from hybrid_exp.tracking import Experiment

log = logging.getLogger(__name__)



def optuna_trial(cfg: DictConfig) -> optuna.Trial | None:
    """The trial this job runs, when an Optuna sweep launched it."""
    trial = cfg.get("optuna") or {}
    if trial.get("trial_id") is None:
        return None
    pruner = instantiate(json.loads(trial.pruner)) if trial.get("pruner") else None  # the sweep's
    study = optuna.load_study(study_name=trial.study_name, storage=trial.storage, pruner=pruner)
    return optuna.Trial(study, trial.trial_id)


def checkpoint_epoch(last: Path, client, run_ids: list[str]) -> int | None:
    """The epoch ``last`` holds; None when it cannot be read (a crash or a full disk damaged
    it): then it is renamed aside, not deleted, and its runs end FAILED saying so, for the
    config to start again in new runs."""
    try:
        return torch.load(last, weights_only=True, map_location="cpu")["epoch"]
    except Exception as e:
        kept = last.with_name(f"{last.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")  # never an earlier one
        os.replace(last, kept)
        reason = (f"{last} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); kept "
                  f"as {kept.name}; the config restarts in a new run")
        log.warning(reason)
        for run_id in run_ids:
            if client.get_run(run_id).info.status != "FAILED":
                client.set_tag(run_id, "error", reason)
                client.set_terminated(run_id, "FAILED")
        return None


def launch_command() -> str:
    """This job's command line: its Hydra overrides (a grid job's, with the sweep's values),
    without credentials."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return redact(" ".join(["python -m hybrid_exp", *overrides]))[:5000]


def graph_applies(net: nn.Module, accelerator: str) -> bool:
    """Whether ``trainer.cuda_graph=true`` can capture this training step; says why not, once."""
    why_not = graph_blocker(net, trains_on_gpu(accelerator))
    if why_not:
        log.info("trainer.cuda_graph=true: %s; training without a CUDA graph", why_not)
    return why_not is None


def train(cfg: DictConfig) -> list[Result]:
    """Train ``cfg`` (composed by Hydra), one Result per trial seed, in the order given. Several
    seeds (``seed`` a list) train as one fused array: one network holding every member
    (hybrid_exp.fusion), each member exactly the run its seed would give alone, with its own
    MLflow run.

    A config (its hash) with a FINISHED run in the experiment is skipped unless ``rerun``; only
    the others join the array. An interrupted run or array resumes from its last checkpoint
    into the same MLflow runs.

    Names come from ``names`` (Hydra's choices of ``model``, the preset, and ``model/block``);
    the ``setup`` is the model's name, or ``<model>+<block>`` when the unit is not its namesake.
    """
    process.setup()  # called from Python too: a quiet terminal, the resolvers the config may use
    cfg = named(cfg)  # Hydra's choices, or (called from Python) the classes' names
    check_config(cfg)  # a mistake stops here, in one sentence: before the data and the store
    seeds = trial_seeds(cfg)
    members = [member_config(cfg, seed) for seed in sorted(seeds)]  # the array's member order
    nets = {member.seed: build_network(member) for member in members}  # a bad shape stops here
    data = build(cfg, "data", seeds=seeds)  # read before any store or run exists
    fingerprint = data.data_fingerprint()
    data.check_splits()
    experiment = Experiment.open(cfg.logger)
    setup = setup_name(cfg)
    with contextlib.ExitStack() as held:  # each config is this process's alone until it ends
        claim(Path(cfg.checkpoint_dir).expanduser().resolve() / "claims",
              [config_hash(member) for member in members], f"{setup}-seed{','.join(map(str, seeds))}", held)
        results, todo = {}, []
        for member in members:
            done = experiment.finished(member, fingerprint)
            if done:
                log.info("%s-seed%s: skipped, this config already FINISHED as run %s (rerun=true to "
                         "train again)", setup, member.seed, done.info.run_id)
                results[member.seed] = Result(member.seed, "skipped", dict(done.data.metrics), done.info.run_id)
            else:
                todo.append(member)
        try:
            if todo:
                results.update({r.seed: r for r in train_array(todo, [nets[m.seed] for m in todo],
                                                               experiment, fingerprint)})
        except Exception as e:  # each run is FAILED with the reason already; an array reports it per seed
            if len(members) == 1:
                raise
            said = disk_full(e) or e
            results.update({m.seed: Result(m.seed, "failed", {}, None, f"{type(said).__name__}: {said}")
                            for m in todo})
        return [results[seed] for seed in seeds]


def claim(directory: Path, hashes: list[str], name: str, held: contextlib.ExitStack) -> None:
    """Hold an exclusive lock on each config (``<checkpoint_dir>/claims/<hash>.lock``) for as
    long as ``held`` is open: a second grid launched beside this one (or the same command run
    twice) waits for the config, saying who holds it, then finds it FINISHED and skips it,
    rather than resuming runs that are being trained. The kernel releases the lock however this
    process ends."""
    directory.mkdir(parents=True, exist_ok=True)
    me = f"pid {os.getpid()} on {platform.node()} ({launch_command()})"
    for hash_ in sorted(set(hashes)):  # one order for every process: none waits on another in a circle
        path = directory / f"{hash_}.lock"
        fd = locks.claim(path, me)
        if fd is None:
            log.warning("%s: config %s is being trained by %s; waiting until it ends, then what it "
                        "finished is skipped", name, hash_, locks.holder(path))
            fd = locks.claim(path, me, wait=True)
        held.callback(os.close, fd)


def train_array(members: list[DictConfig], nets: list[nn.Module], experiment: Experiment,
                fingerprint: str) -> list[Result]:
    """Train ``members`` (configs that differ in their seed alone), whose networks are ``nets``,
    as one network, on the data whose digest is ``fingerprint``: find where an interrupted
    attempt stopped, open (or reopen) a run per member, fit and test, store each member's
    evidence, and say how each member ended."""
    cfg, M, setup = members[0], len(members), setup_name(members[0])
    client = experiment.client
    size = complexity(nets[0])  # of one member, before compiling: counted on the plain network
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    compiled = trainer_args.pop("compile")
    net = prepare_network(fuse(nets) if M > 1 else nets[0], trainer_args.pop("channels_last"), compiled)
    trainer_args["precision"] = resolve_precision(trainer_args["precision"], trainer_args["accelerator"])
    cuda_graph = trainer_args.pop("cuda_graph") and graph_applies(nets[0], trainer_args["accelerator"])
    system_metrics = trainer_args.pop("system_metrics")
    data = build(cfg, "data", seeds=[member.seed for member in members])
    name = f"{setup}-seed{','.join(str(m.seed) for m in members)}"
    trial = optuna_trial(cfg)
    tags = run_tags(members, nets[0], trainer_args, fingerprint, trial)
    tags["execution"] = execution(compiled, cuda_graph)
    log.info("%s: CUDA_VISIBLE_DEVICES=%r", name, os.environ.get("CUDA_VISIBLE_DEVICES"))
    checkpoints = (Path(cfg.checkpoint_dir).expanduser().resolve()
                   / array_key([config_hash(member) for member in members]))
    resume, start = resume_point(cfg, experiment, checkpoints, fingerprint, name)
    for member in members:  # claimed by this process: a run of it still RUNNING lost its trainer
        experiment.end_orphans(member, keep=resume or [])
    checkpoints.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        runs = []
        for m, member in enumerate(members):
            earlier = resume[m] if resume else None
            if earlier and client.get_run(earlier).info.status == "FAILED":
                runs.append(None)  # failed within the array before it was interrupted
                continue
            runs.append(stack.enter_context(experiment.open_run(member, {**tags, "seed": str(member.seed)},
                                                                size, earlier)))
        run_ids = [run.run_id if run else resume[m] for m, run in enumerate(runs)]
        record = tracking.dataset_input(type(data).__name__, str(getattr(data, "root", "generated")),
                                        fingerprint, data.split_sizes())
        for run in runs:
            if run and not run.resumed:
                client.log_inputs(run.run_id, datasets=[record])
            if run and system_metrics:  # each member's run: the machine that trained it
                stack.enter_context(tracking.system_metrics(client, run.run_id, run.resumed))
        (checkpoints / "run_id").write_text("\n".join(run_ids))
        module = Classifier(net, **cfg.optim, members=M, reporter=MemberRuns(runs), cuda_graph=cuda_graph)
        if start is not None:
            log.info("%s: resuming run(s) %s from the checkpoint: %d epochs done", name,
                     " ".join(run_ids), start)
            for run in filter(None, runs):
                client.set_tag(run.run_id, "resumed_from_epoch", str(start))
        trainer = make_trainer(cfg, trainer_args, checkpoints, trial)
        trainer.fit(module, datamodule=data, ckpt_path=checkpoints / "last.ckpt" if start is not None else None,
                    weights_only=True)
        trainer.test(module, datamodule=data, verbose=False, weights_only=True)
        store_evidence(module, net, data, runs, trainer.callbacks)
    results = []
    for m, member in enumerate(members):
        if m in module.failures:
            results.append(Result(member.seed, "failed", {}, run_ids[m], module.failures[m]))
        else:
            results.append(Result(member.seed, "finished", module.metrics[m], run_ids[m]))
            log.info("%s-seed%s: test/error %.2f%%", setup, member.seed, module.metrics[m]["test/error"])
    return results


def execution(compiled: bool, cuda_graph: bool) -> str:
    """How the training step ran: 'eager', 'compiled', 'CUDA graph' or 'compiled, CUDA graph'.
    Out of the run's identity (the same function) but not bit-identical to eager: a tag."""
    return ", ".join([*(["compiled"] if compiled else []), *(["CUDA graph"] if cuda_graph else [])]) or "eager"


def run_tags(members: list[DictConfig], net: nn.Module, trainer_args: dict, fingerprint: str,
             trial: optuna.Trial | None) -> dict[str, str]:
    """The tags every member's run carries (``schema.TAGS``; the seed is added per run)."""
    cfg = members[0]
    tags = {"model": cfg.names.model, "block": cfg.names.block, "backbone": type(net).__name__.lower(),
            "machine": machine(trains_on_gpu(trainer_args["accelerator"])), "torch": torch.__version__,
            "command": launch_command(), "precision": trainer_args["precision"], "setup": setup_name(cfg),
            "data_fingerprint": fingerprint,
            **({"tags": redact(", ".join(map(str, cfg.tags)))} if cfg.get("tags") else {})}
    if len(members) > 1:
        tags["array"] = f"{len(members)} seeds fused: {' '.join(str(m.seed) for m in members)}"
    if trial:
        tags.update({"optuna.study_name": trial.study.study_name, "optuna.trial_number": str(trial.number)})
        if cfg.optuna.parent_run_id:
            tags["mlflow.parentRunId"] = cfg.optuna.parent_run_id  # nested under the study's run
    return tags


def resume_point(cfg: DictConfig, experiment: Experiment, checkpoints: Path, fingerprint: str,
                 name: str) -> tuple[list[str] | None, int | None]:
    """(the interrupted runs to reopen, the epochs done: the checkpointed epoch's number from 1,
    its MLflow step), or (None, None) to start afresh: ``rerun``, no
    interrupted runs, runs that trained on other data, or an unreadable checkpoint."""
    resume = None if cfg.rerun else experiment.resumable(checkpoints)
    tags = [experiment.client.get_run(r).data.tags for r in resume or []]
    if any(t.get("data_fingerprint", fingerprint) != fingerprint for t in tags):
        log.info("%s: the interrupted runs in %s trained on other data; starting afresh", name, checkpoints)
        resume = None
    elif changed := sorted({m for t in tags for m in code_changes(t.get("code_files"), code_files(cfg))}):
        log.info("%s: the code that builds and trains it changed since its interrupted runs (%s); "
                 "starting afresh", name, ", ".join(changed))
        resume = None
    last = checkpoints / "last.ckpt"
    if not (resume and last.is_file()):
        return resume, None
    epoch = checkpoint_epoch(last, experiment.client, resume)
    return (resume, epoch + 1) if epoch is not None else (None, None)


def make_trainer(cfg: DictConfig, trainer_args: dict, checkpoints: Path, trial: optuna.Trial | None):
    """The Lightning trainer: checkpoints every epoch, a live bar on a terminal (else one log
    line per epoch), the config's callbacks, and Optuna's pruning for a one-objective study."""
    tty = sys.stdout.isatty()
    prunable = trial is not None and len(trial.study.directions) == 1
    # on SLURM, submitit requeues a preempted or timed-out job: Lightning must not as well
    slurm = {"plugins": [SLURMEnvironment(auto_requeue=False)]} if "SLURM_JOB_ID" in os.environ else {}
    return instantiate(
        trainer_args, logger=False, enable_progress_bar=tty,
        callbacks=[LastCheckpoint(checkpoints), *([EpochBar()] if tty else []),
                   *(instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None),
                   *([OptunaPruning(trial)] if prunable else [])], **slurm)


def store_evidence(module: Classifier, net: nn.Module, data, runs: list, callbacks: list) -> None:
    """Each finished member's per-image test logits, final weights and best weights, in its run;
    a member whose run then lacks its evidence fails."""
    logits = module.test_logits()  # (N, M, K): per-image evidence beside the error rate
    state, M = net.state_dict(), len(runs)
    for m, run in enumerate(runs):
        if run and m not in module.failures:
            run.log_predictions(*data.test_indices(), logits[:, m])
            run.log_weights(member_state(state, m, M) if M > 1 else state)
            for best in (c for c in callbacks if isinstance(c, BestWeights)):
                best.store(m, run)
            if reason := run.check_evidence():
                module.failures[m] = reason
