"""Run identity and the run schema, read by training (hybrid_exp.tracking writes it) and by the
analysis (which rebuilds it from a run's params where older runs lack its tags). No MLflow; torch
only where ``identity`` resolves the device (hybrid_exp.device). docs/scaling.md, "Run identity",
says what enters each hash, what stays out, and how a change is migrated.

A run's identity is its config hash (the resolved config without ``UNHASHED_KEYS``); its setup
the same without the seed; its protocol the ``PROTOCOL_KEYS`` part: what setups are compared
under. The ``data_fingerprint`` tag names the pixels a run saw (the decoded dataset's digest):
the same config on other pixels (the official files, a JPEG copy) is another experiment.
"""
import ast
import functools
import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hybrid_exp.device import resolve_precision, trains_on_gpu

# Keys that say where things are, or how they are logged, launched or executed: not what is
# trained (precision stays hashed, resolved: bf16 and fp32 runs are different experiments).
UNHASHED_KEYS = ("names", "logger", "tags", "grid", "data.root", "data.download", "rerun", "checkpoint_dir", "objective",
                 "optuna", "trainer.compile", "trainer.benchmark", "trainer.channels_last",
                 "trainer.cuda_graph", "trainer.system_metrics", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                 "trainer.log_every_n_steps", "trainer.profiler", "trainer.default_root_dir",
                 "trainer.enable_autolog_hparams", "trainer.model_registry", "trainer.enable_checkpointing",
                 "trainer.num_sanity_val_steps", "callbacks.best_weights")
# A run trained from a dirty checkout carries what it changed (``git_diff``) as this artifact.
GIT_DIFF = "git_diff.patch"
# Keys added after runs were logged, left out of the hash at their default: a new option
# leaves every finished config's hash as it was.
DEFAULTS_OUT_OF_HASH = {"optim.depthwise_weight_decay": None}
# The final metrics every run logs (errors in %): what a job's ``objective`` may name.
METRICS = tuple(f"{split}/{kind}" for split in ("train", "val", "test", "test_full")
                for kind in ("loss", "error")) + ("lr", "epoch_seconds", "images_per_second")
# What a setup is compared under: runs of different setups pair only on the same protocol.
PROTOCOL_KEYS = ("data", "optim", "trainer.max_epochs", "trainer.precision", "trainer.accelerator")
# Tags every training run carries: what it is, its identity, and where and how it ran (the
# machine, torch, the job's command, the array it was fused in, eager or compiled: a results
# bundle's provenance).
TAGS = ("setup", "model", "block", "backbone", "seed", "precision", "config_hash", "setup_hash",
        "protocol", "protocol_hash", "data_fingerprint", "code_fingerprint", "git_sha", "error", "array",
        "machine", "torch", "command", "execution")
# The modules whose code decides what every run computes, beside those its config's classes
# come from (the network, its unit, the data): the training step, fusion, batches, seeding.
TRAINING_CODE = ("hybrid_exp.module", "hybrid_exp.fusion", "hybrid_exp.batches", "hybrid_exp.seeding",
                 "hybrid_exp.members")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hashed(key: str) -> bool:
    """Whether a flattened config key ('optim.lr') is part of what a run trains."""
    return not any(key == k or key.startswith(k + ".") for k in UNHASHED_KEYS)


def protocol_text(flat: dict[str, str]) -> str:
    """'data.batch_size=128, ..., trainer.precision=32-true' from a flattened config."""
    protocol = {k: v for k, v in flat.items() if hashed(k) and (
        k in PROTOCOL_KEYS or k.startswith(tuple(f"{p}." for p in PROTOCOL_KEYS)))}
    return ", ".join(f"{k}={v}" for k, v in sorted(protocol.items()))


def identity(cfg: DictConfig) -> DictConfig:
    """What a run trains: the resolved config without ``UNHASHED_KEYS``, with the precision and
    the device type it really trains on (``auto`` resolved: a bf16 GPU run is not an fp32 CPU
    run of the same config)."""
    kept = [k for k in cfg.keys() if k not in UNHASHED_KEYS]  # names read Hydra's runtime: not needed
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.masked_copy(cfg, kept), resolve=True))
    for key in UNHASHED_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node:
            del node[leaf]
    for key, default in DEFAULTS_OUT_OF_HASH.items():  # a new key at its default: hash unchanged
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if node is not None and leaf in node and node[leaf] == default:
            del node[leaf]
    if cfg.get("callbacks"):  # a callback left out (null) trains as one never listed
        cfg.callbacks = {name: c for name, c in cfg.callbacks.items() if c is not None}
    if "trainer" in cfg:
        accelerator = cfg.trainer.get("accelerator", "auto")
        on_gpu = trains_on_gpu(accelerator)
        cfg.trainer.precision = resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
        cfg.trainer.accelerator = "cuda" if on_gpu else accelerator if accelerator != "auto" else "cpu"
    return cfg


def digest(cfg: DictConfig) -> str:
    return short_hash(OmegaConf.to_yaml(cfg, sort_keys=True))


def config_hash(cfg: DictConfig) -> str:
    """Hash of what a run trains (``identity``): equal configs, equal hash."""
    return digest(identity(cfg))


def run_schema(cfg: DictConfig) -> dict[str, str]:
    """The identity tags of a run, which training and analysis both read: ``config_hash`` (what
    it trains), ``setup_hash`` (the same without the seed: the runs of one setup over seeds),
    ``protocol`` (the data, optimiser, epochs, precision and device it is compared under) and
    ``protocol_hash``."""
    trained = identity(cfg)
    setup = OmegaConf.masked_copy(trained, [k for k in trained if k != "seed"])
    text = protocol_text(flatten(OmegaConf.to_container(trained)))
    return {"config_hash": digest(trained), "setup_hash": digest(setup), "protocol": text,
            "protocol_hash": short_hash(text)}


def flatten(node, prefix: str = "") -> dict[str, str]:
    """{'optim.lr': '0.1', ...} for a resolved config; list items are keyed by their index."""
    if isinstance(node, (dict, list)) and node:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        return {k: v for key, value in items for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): str(node)}


SOURCE = Path(__file__).resolve().parent  # the checkout that trains and analyses


def git_sha(checkout: Path = SOURCE) -> str:
    """The checkout's commit, '+dirty' if its tracked files changed; 'unknown' outside git."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if git_diff(checkout) else "")


def git_diff(checkout: Path = SOURCE) -> str:
    """What a dirty checkout changed in its tracked files (``git diff HEAD``), '' when clean or
    outside git: kept with the runs and bundles it made, as the commit alone cannot say it."""
    diff = subprocess.run(["git", "diff", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return diff.stdout if diff.returncode == 0 else ""


def code_files(cfg: DictConfig) -> dict[str, str]:
    """{module: digest of its code} of the modules that build and train ``cfg``'s network: those
    its ``_target_`` classes come from (``model``, its unit, ``data``) and ``TRAINING_CODE``.
    The run identity hashes the config; this says which code computed it."""
    built = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["model", "data"]), resolve=True)
    modules = {target.rsplit(".", 1)[0] for target in targets(built)} | set(TRAINING_CODE)
    return {module: code_digest(module) for module in sorted(modules)}


def targets(node) -> set[str]:
    """Every ``_target_`` in a plain config container."""
    found = set()
    if isinstance(node, dict):
        if "_target_" in node:
            found.add(str(node["_target_"]))
        children = node.values()
    else:
        children = node if isinstance(node, list) else []
    for child in children:
        found |= targets(child)
    return found


@functools.cache
def code_digest(module: str) -> str:
    """A module's statements, hashed: its docstrings, comments and layout left out (an edit that
    changes none of its statements changes no digest). Read from its file, never imported."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return "unknown"
    tree = ast.parse(Path(spec.origin).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return short_hash(ast.dump(tree))


def code_fingerprint(files: dict[str, str]) -> str:
    """One digest of ``code_files``: the run's ``code_fingerprint`` tag."""
    return short_hash(json.dumps(files, sort_keys=True))


def code_changes(recorded: str | None, files: dict[str, str]) -> list[str]:
    """The modules of ``files`` whose code differs from a run's ``code_files`` tag (JSON), or
    that it did not record; [] for a run logged before runs recorded their code."""
    if not recorded:
        return []
    before = json.loads(recorded)
    return [module for module, digest in files.items() if before.get(module) != digest]

