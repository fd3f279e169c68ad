"""The classes a config may build, and the one way a config becomes a network or a dataset.

A config names code (``_target_: hybrid_exp.blocks.Separable``), and Hydra's ``instantiate``
calls whatever it names. A run's ``config.yaml`` is an artifact anyone who can write to the
store can change, so text must not choose what runs: every model and dataset is built by
``build``, which

1. resolves the part it builds wholly first (a ``${...}`` can pull in any other node);
2. checks the resolved tree: every ``_target_`` is one the project's own YAML files name under
   conf/model, conf/backbone or conf/data (a unit of your own: its class and a YAML file under
   conf/model/block/), with only the Hydra flags (``_partial_`` ...) those files give it, and no
   string still holds a ``${`` for ``instantiate`` to resolve later;
3. instantiates the checked tree, and builds nothing but ``model`` and ``data``.

``stored`` reads a config the project wrote (resolved, so it holds no interpolation at all)
and refuses one that holds any: a resolver (``${oc.env:...}``) runs while resolving.
"""
import functools
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hybrid_exp import config_dir
from hybrid_exp.errors import ConfigError

BUILT = ("model", "data")  # the only parts of a config that become objects here
GROUPS = ("model", "backbone", "data")  # where the project's buildable classes are named
FLAGS = ("_args_", "_partial_", "_recursive_", "_convert_")  # Hydra's keys beside _target_


def nodes(node, where: str = ""):
    """(key, node) of ``node`` (plain data) and of everything inside it, depth first."""
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from nodes(value, f"{where}.{key}".lstrip("."))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from nodes(value, f"{where}[{i}]")


@functools.cache
def registry() -> dict[str, frozenset[str]]:
    """{every ``_target_`` the project's YAML files under ``GROUPS`` name: the Hydra flags they
    give it}."""
    found: dict[str, set[str]] = {}
    for group in GROUPS:
        for path in sorted((Path(config_dir()) / group).rglob("*.yaml")):
            for _, node in nodes(OmegaConf.to_container(OmegaConf.load(path))):
                if isinstance(node, dict) and isinstance(node.get("_target_"), str):
                    found.setdefault(node["_target_"], set()).update(f for f in FLAGS if f in node)
    return {target: frozenset(flags) for target, flags in found.items()}


def check(tree, part: str, source: str = "the config") -> None:
    """Refuse, in one sentence naming the key, anything in the resolved ``tree`` (the config's
    ``part``) that would make ``instantiate`` call code that is not the project's own."""
    known = registry()
    for where, node in nodes(tree, part):
        if isinstance(node, str) and "${" in node:
            raise ConfigError(f"{source} holds {node!r} at {where}, an interpolation that would be "
                              f"resolved while building: refusing to build it; write the value itself")
        if not isinstance(node, dict):
            continue
        target = node.get("_target_")
        if "_target_" in node and (not isinstance(target, str) or target not in known):
            raise ConfigError(
                f"{source} names _target_ {target!r} at {where}, which is none of the project's "
                f"models, units or datasets (conf/model, conf/backbone, conf/data): refusing to "
                f"build it, as a config may not choose what code runs (a unit of your own: its "
                f"class and a YAML file under conf/model/block/)")
        for flag in FLAGS:
            if flag in node and flag not in known.get(target, ()):
                raise ConfigError(f"{source} sets {where}.{flag}, which the project's own configs "
                                  f"never give {target or 'a node without _target_'}: refusing to "
                                  f"build it; remove the key")


def buildable(cfg: DictConfig, part: str, source: str = "the config", **kwargs) -> dict:
    """``cfg[part]`` resolved in the whole config, with ``kwargs`` joined in (``instantiate``
    builds what they hold too), checked: what ``build`` instantiates."""
    if part not in BUILT:
        raise ValueError(f"only {' and '.join(BUILT)} are built from a config; not {part!r}")
    if not isinstance(cfg.get(part), DictConfig):
        raise ConfigError(f"{source} has no settings under {part}: nothing to build")
    node = {**OmegaConf.to_container(cfg[part], resolve=True), **{k: plain(v) for k, v in kwargs.items()}}
    check(node, part, source)
    return node


def build(cfg: DictConfig, part: str, source: str = "the config", **kwargs):
    """The network (``part='model'``) or dataset (``'data'``) of ``cfg``; ``kwargs`` go to its
    class (``seeds=`` for a dataset)."""
    from hydra.utils import instantiate

    return instantiate(buildable(cfg, part, source, **kwargs))


def plain(value):
    """``value`` with every config inside it as plain data (resolved): what ``check`` walks."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def stored(path: str | Path, source: str) -> DictConfig:
    """A config the project wrote (resolved) read back from ``path``; one that holds any
    interpolation was edited since, and is refused before anything resolves it."""
    try:
        cfg = OmegaConf.load(path)  # YAML's safe loader: plain data, no Python objects
    except Exception as e:  # a YAML or OmegaConf error: either way not what the project wrote
        raise ConfigError(f"{source} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}): "
                          f"refusing to build from it") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{source} is no mapping of settings: refusing to build from it")
    for where, node in nodes(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(node, str) and "${" in node:
            raise ConfigError(f"{source} holds the interpolation {node!r} at {where or 'its root'}, "
                              f"but the project stores configs resolved: it was edited after the "
                              f"run; refusing to build from it")
    return cfg
