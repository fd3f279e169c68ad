"""The runs of one job: its trial seeds, each member's config, each member's network (its
initial weights), and the checkpoint folder of an array. Read by training and by the config
checks (which build a grid's networks before anything runs)."""
import hashlib

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hybrid_exp.registry import build
from hybrid_exp.seeding import derive_seed


def trial_seeds(cfg: DictConfig) -> list[int]:
    """``seed``: one trial seed, or a list of them trained as one fused array."""
    return OmegaConf.to_container(cfg.seed) if OmegaConf.is_list(cfg.seed) else [cfg.seed]


def member_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of one member: exactly the config of an unfused run of that seed."""
    member = cfg.copy()
    member.seed = seed
    return member


def array_key(hashes: list[str]) -> str:
    """The checkpoint folder of an array: a single run keeps its config hash."""
    if len(hashes) == 1:
        return hashes[0]
    return "array-" + hashlib.sha256(" ".join(hashes).encode()).hexdigest()[:16]


def build_network(cfg: DictConfig) -> nn.Module:
    """The network of one run. Initial weights draw from (trial seed, model config): variants
    never share them, and equal model configs reproduce them (the data streams derive from the
    seed alone)."""
    torch.manual_seed(derive_seed(cfg.seed, "init", OmegaConf.to_yaml(cfg.model, resolve=True)))
    return build(cfg, "model")


def named(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``names`` it can read: Hydra's choices of a job; outside one (``train()``
    called from Python on a composed config) the ones set, else the choices a
    ``compose(..., return_hydra_config=True)`` config holds, else the classes' names (the
    backbone's, and the unit's YAML file under conf/model/block/), said in the log."""
    import logging
    from pathlib import Path

    from omegaconf import open_dict
    from omegaconf.errors import InterpolationResolutionError

    from hybrid_exp import config_dir

    try:
        names = OmegaConf.to_container(cfg.names, resolve=True) if "names" in cfg else {}
    except InterpolationResolutionError:  # ${hydra:...} with no Hydra job around
        names = {}
    if {"model", "block"} <= set(names):
        return cfg
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    target = lambda key: str(OmegaConf.select(cfg, f"{key}._target_") or "").rpartition(".")[2]
    unit = next((p.stem for p in sorted(Path(config_dir(), "model", "block").glob("*.yaml"))
                 if OmegaConf.load(p).get("_target_", "").rpartition(".")[2] == target("model.block")),
                target("model.block").lower())
    names = {"model": choices.get("model") or target("model").lower(),
             "block": choices.get("model/block") or unit}
    logging.getLogger(__name__).info(
        "names.model=%s, names.block=%s (no Hydra job to name the run; set cfg.names to choose)",
        names["model"], names["block"])
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.names = names
    return cfg


def setup_name(cfg: DictConfig) -> str:
    """A setup's name from the config's ``names``: the model preset, or ``<model>+<block>`` when
    its unit (``model/block``) is not the preset's namesake (``fractalnet+separable``)."""
    model, block = cfg.names.model, cfg.names.block
    return model if block == model else f"{model}+{block}"
