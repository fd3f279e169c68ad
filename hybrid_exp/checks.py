"""Every config is checked before data is read or a run is created, a grid's every job before
the first starts: one sentence per mistake, naming the key, the allowed values and the value.

``check_values`` (types and ranges, no heavy import) runs first; ``check_code`` adds what
needs the code: every component's keys, the data split sizes against the dataset, and the
network's shape (built on the CPU, once per model config: these networks take milliseconds).
``check_config`` is both, once per config and process: a run's callback and ``train()`` both
ask (a grid's callback checks every job stage by stage; each job, in its own process, once).
"""
import inspect
import itertools
import logging
import re
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from hybrid_exp.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)


def whole(value, key: str, low: int, high: int | None = None, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"a whole number in {low}..{high}" if high is not None else f"a whole number >= {low}"
        raise ConfigError(f"{key} must be {allowed}{' (or null)' if none_ok else ''}; got {value!r}")


def number(value, key: str, low: float, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (value > low if low_open else value >= low)
          and (high is None or (value < high if high_open else value <= high)))
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{key} must be a number in {bounds}; got {value!r}")


def missing_keys(node: DictConfig, prefix: str = ""):
    """The keys left ``???``, without resolving interpolations (which would fail on them)."""
    for key in node.keys():
        if not prefix and key == "hydra":  # Hydra's own node fills in as it runs
            continue
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        elif not OmegaConf.is_interpolation(node, key) and isinstance(child := node[key], DictConfig):
            yield from missing_keys(child, f"{prefix}{key}.")


def check_values(cfg: DictConfig) -> None:
    """Types and ranges of the keys every run reads."""
    seeds = OmegaConf.to_container(cfg.seed) if OmegaConf.is_list(cfg.seed) else [cfg.seed]
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a whole number >= 0, or a list of them (seed=[0,1,2]); "
                              f"got {seed!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed must be one seed or a list of distinct seeds; got {seeds}")
    missing = sorted(missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} must be given (it has no default here): add "
                          f"{missing[0]}=... to the command line")
    try:  # the data's values computed from others (data.num_classes from data.root's folders)
        OmegaConf.to_container(cfg.data, resolve=True)
    except InterpolationResolutionError as e:  # a resolver's own sentence, else the key's
        sentence, raised = re.subn(r"^\w+ raised while resolving interpolation: ", "", e.msg.splitlines()[0])
        raise ConfigError(sentence if raised else f"{e.full_key}: {sentence}") from None
    if "objective" in cfg:  # a misspelt metric must not make a sweep tune on something else
        from hybrid_exp.schema import METRICS

        objectives = OmegaConf.to_container(cfg.objective) if OmegaConf.is_list(cfg.objective) else [cfg.objective]
        for name in objectives:
            if name not in METRICS:
                hint = did_you_mean(str(name), list(METRICS), "objective=")
                raise ConfigError(f"objective={name} names no metric a run logs: {hint}(metrics: "
                                  f"{', '.join(METRICS)})")
    if "tags" in cfg and not OmegaConf.is_list(cfg.tags):
        raise ConfigError(f"tags must be a list of labels, tags=[{cfg.tags}] (or tags=[a,b]); "
                          f"got {cfg.tags!r}")
    if "rerun" in cfg and not isinstance(cfg.rerun, bool):
        raise ConfigError(f"rerun must be true or false; got {cfg.rerun!r}")
    data, trainer, optim = cfg.data, cfg.trainer, cfg.optim
    whole(data.batch_size, "data.batch_size", 1)
    if trainer.get("max_steps", -1) not in (-1, None):
        whole(trainer.max_steps, "trainer.max_steps (-1: no limit)", 1)
    if "num_classes" in data:
        whole(data.num_classes, "data.num_classes", 2)
        whole(data.pad, "data.pad", 0)
    for key in ("val_size", "eval_size", "train_subset"):
        if key in data:
            whole(data[key], f"data.{key}", 0 if key == "val_size" else 1, none_ok=key == "train_subset")
    whole(trainer.max_epochs, "trainer.max_epochs", 1)
    number(optim.lr, "optim.lr", 0, low_open=True)
    number(optim.momentum, "optim.momentum", 0, 1, high_open=True)
    number(optim.weight_decay, "optim.weight_decay", 0)
    if optim.get("depthwise_weight_decay") is not None:
        number(optim.depthwise_weight_decay, "optim.depthwise_weight_decay", 0)
    number(optim.warmup_epochs, "optim.warmup_epochs", 0)
    check_callbacks(cfg)
    check_partial(cfg)


def accepted_keys(target) -> set[str] | None:
    """The keyword arguments ``target`` (a class) takes, following ``**kwargs`` up its base
    classes; None when it takes any."""
    names = set()
    for klass in getattr(target, "__mro__", (target,)):
        init = klass.__dict__.get("__init__", klass if klass is target and not isinstance(klass, type) else None)
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return names - {"self"}
    return None


# Keys a component's config may hold that its target does not take: train() uses them itself.
OWN_KEYS = {"trainer": {"channels_last", "compile", "cuda_graph", "system_metrics"}}


def check_keys(cfg: DictConfig) -> None:
    """Every key of a component (model, its block, data, optim, trainer, callbacks) is one its
    class takes: a misspelt key (``+optim.learning_rate=0.05``) is one sentence with the
    closest valid key, not a TypeError once the run exists."""
    from hydra.utils import get_class

    from hybrid_exp.module import Classifier

    components = {"model": cfg.model, "model.block": cfg.model.get("block"), "data": cfg.data,
                  "trainer": cfg.trainer, "optim": cfg.optim,
                  **{f"callbacks.{name}": c for name, c in (cfg.get("callbacks") or {}).items()}}
    for prefix, node in components.items():
        if not isinstance(node, DictConfig):
            continue
        target = Classifier if prefix == "optim" else get_class(node._target_) if "_target_" in node else None
        allowed = accepted_keys(target) if target is not None else None
        if allowed is None:
            continue
        allowed |= OWN_KEYS.get(prefix, set())
        for key in node.keys():
            if str(key).startswith("_") or key in allowed:
                continue
            settings = sorted(allowed - ({"net", "members", "reporter", "cuda_graph"} if prefix == "optim" else set()))
            hint = did_you_mean(str(key), settings, f"{prefix}.")
            listed = f"(its settings: {', '.join(settings)})" if len(settings) <= 16 else \
                f"(its settings: conf/{prefix.split('.')[0]}/)"
            raise ConfigError(f"{prefix}.{key} is not a setting of {target.__name__}: {hint}{listed}"
                              + preset_hint(cfg, f"{prefix}.{key}"))


def preset_hint(cfg: DictConfig, key: str) -> str:
    """Where a key no component takes came from, when an ``experiment`` preset set it: a preset
    written for other models (``experiment=quick`` sizes the stacked backbone's)."""
    from hybrid_exp import config_dir

    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    preset = choices.get("experiment")
    path = Path(config_dir()) / "experiment" / f"{preset}.yaml"
    if not preset or not path.is_file() or OmegaConf.select(OmegaConf.load(path), key) is None:
        return ""
    return (f"; it comes from experiment={preset}, which sizes the models that take {key}: with "
            f"model={choices.get('model')}, leave the preset out or give the model's own settings")


def config_text(cfg: DictConfig) -> str:
    """A config as given (unresolved, without Hydra's own node): what was checked."""
    return OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]))


def check_config(cfg: DictConfig) -> None:
    """``check_values`` then ``check_code`` (and ``check_fusable`` for a seed list: one fused
    array), unless this config already passed them, then ``check_match`` (on its names, which
    the text checked leaves unresolved)."""
    text = config_text(cfg)
    if text not in _checked:
        check_values(cfg)
        check_code(cfg)
        if OmegaConf.is_list(cfg.seed) and len(cfg.seed) > 1:  # one fused array
            check_fusable(cfg)
        _checked.add(text)
    check_match(cfg)


def check_match(cfg: DictConfig) -> None:
    """A ``*_matched`` preset (``cfg.names.model``) is sized to match the baseline at its own
    width and the backbone's default depth and stages: any other size un-matches it, and its
    name would then claim a match it does not have."""
    from hybrid_exp import config_dir

    name = str(OmegaConf.select(cfg, "names.model") or "")
    preset = Path(config_dir()) / "model" / f"{name}.yaml"
    if not (name.endswith("_matched") and preset.is_file()):
        return
    backbone = OmegaConf.load(Path(config_dir()) / "backbone" / "stacked.yaml")
    sized = OmegaConf.load(preset)
    for key in ("width", "depth", "stages"):
        expected = sized.get(key, backbone.get(key))
        if cfg.model.get(key) != expected:
            raise ConfigError(
                f"model={name} matches the baseline's size at model.{key}={expected} only; "
                f"model.{key}={cfg.model.get(key)} un-matches it{preset_hint(cfg, f'model.{key}')}: "
                f"use model={name.removesuffix('_matched')} for other sizes, or leave model.{key} "
                f"at {expected}")


# Lightning's switches that train, validate or test a part of what the config says (a time limit:
# as far as the machine gets): their runs are no results, so they log to the debug experiment only.
PARTIAL = {"fast_dev_run": (False, 0), "limit_train_batches": (None, 1.0), "limit_val_batches": (None, 1.0),
           "limit_test_batches": (None, 1.0), "overfit_batches": (0, 0.0), "max_time": (None,)}
DEBUG_EXPERIMENT = "debug"  # where conf/debug/*.yaml log


def check_partial(cfg: DictConfig) -> None:
    """A run that trains less than its config says never stands as a result beside real ones."""
    trainer = cfg.trainer
    if trainer.get("limit_train_batches") in (0, 0.0) and trainer.get("limit_train_batches") is not None:
        raise ConfigError("trainer.limit_train_batches=0 trains nothing: leave it out (all batches), or "
                          "give a number of batches (5) or a fraction (0.1) with a debug preset (debug=limit)")
    if cfg.logger.get("experiment_name") == DEBUG_EXPERIMENT:
        return
    for key, full in PARTIAL.items():
        if key in trainer and trainer[key] not in full:
            raise ConfigError(f"trainer.{key}={trainer[key]} trains, validates or tests a part of what the "
                              f"config says, so its run must not stand as a result: use a debug preset "
                              f"(debug=fdr, debug=limit), which logs to the '{DEBUG_EXPERIMENT}' experiment, "
                              f"or add logger.experiment_name={DEBUG_EXPERIMENT}")


def check_launch(config: DictConfig) -> None:
    """What Hydra's own settings would break: a job that changes into its own folder finds a
    relative store and checkpoint folder anew, so a relaunch could neither skip nor resume; and
    submitit's local launcher pickles the config as written (passwords too) into .submitit/."""
    from hybrid_exp.redact import CREDENTIALS

    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if launcher.endswith("submitit_launcher.LocalLauncher") and CREDENTIALS.search(
            OmegaConf.to_yaml(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]))):
        raise ConfigError("hydra/launcher=submitit_local writes the config, a URL's password included, "
                          "into .submitit/*.pkl: pass the password through the environment "
                          "(MLFLOW_TRACKING_PASSWORD, PGPASSWORD), or use hydra/launcher=gpus on this "
                          "machine (hydra/launcher=slurm on a cluster), which keep it out of every file")
    if not config.hydra.job.get("chdir"):
        return
    uri, checkpoints = str(config.logger.tracking_uri), str(config.checkpoint_dir)
    relative = [f"{key}={value}" for key, value, path in (
        ("logger.tracking_uri", uri, uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else "/"),
        ("checkpoint_dir", checkpoints, checkpoints)) if not Path(path).expanduser().is_absolute()]
    if relative:
        raise ConfigError(f"hydra.job.chdir=true runs each job in its own folder, where {' and '.join(relative)} "
                          f"would be new for every job (a relaunch could neither skip nor resume): leave "
                          f"hydra.job.chdir out, or give absolute paths")


def smallest_of_each_form(units: list) -> list:
    """One unit per form (its structure with the channel counts left out: stride, kernel,
    branches), the one with the fewest weights: the fusion check runs each form's code, cheaply."""
    def form(unit) -> str:
        text = re.sub(r"\((\d+), (\d+),", "(C, C,", str(unit))  # a conv's in and out channels
        return re.sub(r"(BatchNorm2d\(|groups=|features=)\d+", r"\1C", text)

    smallest = {}
    for unit in units:
        size = sum(p.numel() for p in unit.parameters())
        if form(unit) not in smallest or size < smallest[form(unit)][0]:
            smallest[form(unit)] = (size, unit)
    return [unit for _, unit in smallest.values()]


def check_fusable(cfg: DictConfig) -> None:
    """What a fused seed array cannot train with (a ``seed`` list, or a grid whose launcher
    fuses its seeds): 16-bit precision's loss scaler, and a unit that breaks the fusion
    contract (checked on the network's own units, once per model config)."""
    if str(cfg.trainer.get("precision")) in ("16-mixed", "16"):
        raise ConfigError("trainer.precision=16-mixed cannot train a fused seed array (its loss "
                          "scaler's one overflow flag would skip every member's step for one "
                          "member's overflow): use bf16-mixed or 32-true, or "
                          "hydra.launcher.fuse_seeds=false")
    model = OmegaConf.to_yaml(cfg.model, resolve=True)
    if model in _fusable:
        return
    from hydra.utils import get_class

    from hybrid_exp.fusion import contract_breach
    from hybrid_exp.members import build_network

    member = cfg.copy()
    member.seed = 0
    unit_class = get_class(cfg.model.block._target_) if "block" in cfg.model else None
    units = [m for m in build_network(member).modules() if unit_class and isinstance(m, unit_class)]
    for unit in smallest_of_each_form(units):  # the forms a unit takes: stride, shortcut, ...
        breach = contract_breach(unit)
        if breach:
            block = cfg.get("names", {}).get("block") or unit_class.__name__
            raise ConfigError(f"model/block={block} ({unit_class.__name__}) breaks the fusion contract: {breach} "
                              f"(a torch.cat of channels mixes the members' blocks): join channels with "
                              f"hybrid_exp.fusion.cat_channels (docs/variants.md, 'Add your own unit'), "
                              f"or train each seed alone with hydra.launcher.fuse_seeds=false")
    _fusable.add(model)


def check_callbacks(cfg: DictConfig) -> None:
    """The settings of the callbacks the config lists."""
    best = (cfg.get("callbacks") or {}).get("best_weights")
    if best is not None:
        monitor, mode = best.get("monitor", "val/error"), best.get("mode", "min")
        if mode not in ("min", "max") or not str(monitor).startswith("val/"):
            raise ConfigError(f"callbacks.best_weights: monitor a val/ metric with mode min or max; "
                              f"got monitor={monitor!r}, mode={mode!r}")


def check_code(cfg: DictConfig) -> None:
    """Every component's keys, the split sizes against the dataset and the network's shape;
    once per config up to its seed (a grid's seeds share everything these checks read)."""
    from hydra.utils import get_class

    from hybrid_exp.registry import BUILT, buildable

    # the seed left out: check_values, which always runs first, admits only whole numbers there
    unseeded = config_text(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "seed"]))
    if unseeded in _code_checked:
        return
    for part in BUILT:  # only the project's own classes, before any module they name is imported
        buildable(cfg, part)
    check_keys(cfg)
    dataset = get_class(cfg.data._target_)
    sizes = dataset.sizes(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    if sizes:
        n_train, n_test, classes = sizes
        data = cfg.data
        if data.get("num_classes", classes) != classes:
            raise ConfigError(f"data.num_classes={data.num_classes}, but {dataset.__name__} with these "
                              f"settings has {classes} classes: set data.num_classes={classes}")
        whole(data.val_size, "data.val_size", 0, n_train - 1)
        whole(data.eval_size, "data.eval_size", 1, n_test)
        whole(data.train_subset, "data.train_subset", classes, n_train - data.val_size, none_ok=True)
        training = data.train_subset or n_train - data.val_size
        if data.batch_size > training:  # no full batch: every epoch would train nothing
            raise ConfigError(f"data.batch_size={data.batch_size} is larger than the {training} "
                              f"training images: choose data.batch_size <= {training}")
    from hybrid_exp.members import build_network

    model = OmegaConf.to_yaml(cfg.model, resolve=True)
    if model not in _built:  # a grid's seeds share their model config: built once
        member = cfg.copy()
        member.seed = 0
        try:
            build_network(member)
        except InstantiationException as e:  # the blocks say which constraint and which values
            raise ConfigError(str(e.__cause__ or e)) from None
        _built.add(model)
    _code_checked.add(unseeded)


_built: set[str] = set()  # model configs whose network was built
_code_checked: set[str] = set()  # configs without their seed that passed check_code
_checked: set[str] = set()  # configs (their text) that passed every check
_fusable: set[str] = set()  # model configs whose units keep the fusion contract


def grid_configs(config: DictConfig) -> list[tuple[list[str], DictConfig]]:
    """(swept overrides, composed config) of each job of the grid ``config`` launches: its command
    line's sweeps (a,b,c and range(...)) expanded; a sweeper's own search space (interval(...),
    hydra.sweeper.params) is left to the sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}  # a preset's sweep; the command line wins
    lines = {**{key: f"{key}={value}" for key, value in params.items()},
             **{line.split("=", 1)[0]: line for line in config.hydra.overrides.task}}
    choices = []
    for override in OverridesParser.create().parse_overrides(list(lines.values())):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices.append([f"{key}={override.get_value_element_as_str()}"])
        elif override.is_choice_sweep() or override.is_range_sweep():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
            if not choices[-1]:
                raise ConfigError(f"{override.input_line} gives no value, so the grid would have no "
                                  f"job: give it at least one (seed='range(3)' is 0, 1, 2)")
            twice = sorted({v for v in choices[-1] if choices[-1].count(v) > 1})
            if twice:  # one config twice: two jobs would train it side by side
                raise ConfigError(f"{override.input_line} gives {twice[0]} twice: give each value once")
    swept = [i for i, values in enumerate(choices) if len(values) > 1]
    return [([job[i] for i in swept], job_config(config.hydra.job.config_name, list(job)))
            for job in itertools.product(*choices)]


def job_config(config_name: str, overrides: list[str]) -> DictConfig:
    """A grid job's composed config, with Hydra's node, as the job will see it."""
    from hydra import compose

    return own_names(compose(config_name, overrides=overrides, return_hydra_config=True))


def own_names(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``names`` set from its own Hydra choices of ``model`` and ``model/block``:
    a run is checked before Hydra sets up its job, where ``${hydra:...}`` gives nothing (a single
    run) or the launcher's choices (a grid)."""
    from omegaconf import open_dict

    choices = cfg.hydra.runtime.choices
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.names = {"model": choices.get("model"), "block": choices.get("model/block")}
    return cfg
