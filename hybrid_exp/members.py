"""The runs of one job: its trial seeds, each member's config, each member's network (its
initial weights), and the checkpoint folder of an array. Read by training and by the config
checks (which build a grid's networks before anything runs)."""
import hashlib

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

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
    return instantiate(cfg.model)


def setup_name(cfg: DictConfig) -> str:
    """A setup's name from the config's ``names``: the model preset, or ``<model>+<block>`` when
    its unit (``model/block``) is not the preset's namesake (``fractalnet+separable``)."""
    model, block = cfg.names.model, cfg.names.block
    return model if block == model else f"{model}+{block}"
