"""The paper's table, per protocol and backbone: each setup paired seed by seed with the baseline
of its backbone trained under the same protocol (data, optimiser, epochs, precision, device).

For setup S and baseline B on the seeds both ran: delta_s = error(S, s) - error(B, s).
The primary inference is on the signed mean delta: its t interval, a paired t-test, and a TOST
equivalence test against a margin stated before the data. The paper's metric, mean_s |delta_s|,
is reported as a description. The control (``equivalent``: the baseline's function with other
random weights) shows how large |delta| gets by chance; ``|delta_S| - |delta_control|`` is
described with a one-sided signed-rank test (a setup closer to the baseline than the control is
not "farther than noise"). p-values are Holm-adjusted across the setups of a protocol.
"""
import functools
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import stats
from analysis.runs import AnalysisError

PAPER_ABS_DELTA = {"inception": 0.83, "resnext": 0.62, "reformulated_inception": 0.71,
                   "equivalent": 0.08, "hybrid": 0.12}  # Ghosh 2017, Fig. 4 (% points)
# The paper's claim as a ranking: each setup closer to the baseline (smaller |delta|) than the next.
PAPER_RANKING = ("hybrid", "resnext", "reformulated_inception", "inception")
# The paper's protocol, in the params every run logs: where its column of values applies.
PAPER_PROTOCOL = {"trainer.max_epochs": "190", "data.eval_size": "6000", "data.train_subset": "None",
                  "data._target_": "hybrid_exp.data.CIFAR10"}
# The paper scores a random subset of the test set; every run also scores the whole set (the
# subset among it), where the run-to-run noise of Δ is smaller: analysed beside it, as ``full_*``.
WHOLE_TEST_SET = {"test/error": "test_full/error"}
WHOLE_SET_COLUMNS = ("n_paired", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "sd_delta",
                     "p_ttest_holm", "p_tost_holm", "equivalent_within_margin", "mean_abs_delta")


@dataclass
class Table:
    summary: pd.DataFrame  # one row per protocol and setup: every number of the report's tables
    ranking: pd.DataFrame = field(default_factory=pd.DataFrame)  # the paper's order, pair by pair
    trend: pd.DataFrame = field(default_factory=pd.DataFrame)  # error over log2(channels per group)
    similarity: pd.DataFrame = field(default_factory=pd.DataFrame)  # prediction agreement, kappa
    cka: pd.DataFrame = field(default_factory=pd.DataFrame)  # representation similarity, per point
    set_apart: list[str] = field(default_factory=list)  # sentences: what could not be paired, why


def errors_by_seed(runs: pd.DataFrame, setup: str, metric: str) -> pd.Series:
    return runs[runs.setup == setup].set_index("seed")[metric].sort_index()


def pick(setups: list[str], blocks: dict[str, str], name: str) -> str | None:
    """The setup called ``name``, else the only one whose unit is ``name`` (fractalnet+separable)."""
    if name in setups:
        return name
    matches = [s for s in setups if blocks[s] == name]
    return matches[0] if len(matches) == 1 else None


def paper_protocol(runs: pd.DataFrame) -> bool:
    """Whether every run here trained under the paper's protocol (190 epochs, all training
    images, the 6000-image evaluation subset of CIFAR-10)."""
    return all(all(config.get(k) == v for k, v in PAPER_PROTOCOL.items()) for config in runs.config)


def summarize(runs: pd.DataFrame, baseline: str = "separable", control: str = "equivalent",
              margin: float = 0.25, sesoi: float | None = None, metric: str = "test/error",
              alpha: float = 0.05, predictions: dict | None = None,
              not_finished: pd.DataFrame | None = None) -> Table:
    """Every number of the report (cleaned runs in; ``not_finished``: the FAILED, KILLED and
    unfinished runs beside them), protocol by protocol."""
    sesoi = margin if sesoi is None else sesoi
    table, baselines = Table(pd.DataFrame()), 0
    rows, rankings, similarity, trends, ckas = [], [], [], [], []
    for (protocol, backbone), group in runs.groupby(["protocol_hash", "backbone"], sort=True):
        setups = sorted(group.setup.unique())
        blocks = dict(zip(group.setup, group.block))
        base, ctrl = pick(setups, blocks, baseline), pick(setups, blocks, control)
        baselines += base is not None
        paper = paper_protocol(group)
        if base is None:
            table.set_apart += [f"`{s}` ({backbone}): no `{baseline}` run under the same protocol "
                                f"to pair with, so it is described but not compared" for s in setups]
        base_err = errors_by_seed(group, base, metric) if base else None
        ctrl_delta = None
        if base and ctrl and ctrl != base:
            ctrl_err = errors_by_seed(group, ctrl, metric)
            seeds = ctrl_err.index.intersection(base_err.index)
            ctrl_delta = ctrl_err[seeds] - base_err[seeds]
        group_rows = []
        for setup in setups:
            err = errors_by_seed(group, setup, metric)
            first = group[group.setup == setup].iloc[0]
            role = ("baseline" if setup == base else "control" if setup == ctrl else
                    "setup" if base else "unpaired")
            row = {"protocol_hash": protocol, "protocol": first.protocol, "backbone": backbone,
                   "setup": setup, "model": first.model, "block": first.block, "role": role,
                   "n": len(err), "seeds": " ".join(map(str, err.index)),
                   "mean_error": err.mean(), "sd_error": err.std(ddof=1) if len(err) > 1 else math.nan,
                   **interval("mean_error", err), "params": first.params, "mult_adds": first.mult_adds,
                   **network_units(first.config), **network_size(group[group.setup == setup]),
                   "not_finished": not_finished_count(not_finished, protocol, setup),
                   "code": code_states(group[group.setup == setup]),
                   "code_fingerprints": code_fingerprints(group[group.setup == setup]),
                   "execution": executions(group[group.setup == setup]),
                   # the paper's names are setup tags: a label that names knobs is not its setup
                   "paper_mean_abs_delta": PAPER_ABS_DELTA.get(setup, math.nan)
                   if paper and setup == first.setup_tag else math.nan}
            if base and setup != base:
                row.update(paired(err, base_err, ctrl_delta if setup != ctrl else None, margin,
                                  sesoi, alpha))
            if setup == ctrl and ctrl_delta is not None:  # what the noise floor can detect
                sd, n = ctrl_delta.std(ddof=1) if len(ctrl_delta) > 1 else math.nan, len(ctrl_delta)
                family = len([s for s in setups if s not in (base, ctrl)])  # Holm's m
                row.update({"family": family, "noise_abs_delta": sd * math.sqrt(2 / math.pi),
                            **powers(sesoi, sd, n, alpha, family)})
            group_rows.append(row)
        if base:  # each setup's size relative to the baseline's: arms of other compute say so
            base_row = next(r for r in group_rows if r["setup"] == base)
            for r in group_rows:
                r["params_ratio"] = r["params"] / base_row["params"]
                r["mult_adds_ratio"] = r["mult_adds"] / base_row["mult_adds"]
        adjust(group_rows, alpha)
        rows += group_rows
        trends += trend(group, metric, protocol, backbone)
        if base:
            rankings += ranking(group, base_err, metric, alpha, protocol, backbone)
            if predictions:
                similarity += agreement(group, base, predictions, protocol, backbone)
            ckas += representation(group, base, protocol, backbone)
    if not baselines:
        present = ", ".join(sorted(runs.setup.unique())) or "none"
        raise AnalysisError(f"no runs of the baseline '{baseline}' (finished, with {metric}); "
                            f"setups present: {present}; choose one with --baseline")
    table.summary, table.ranking = pd.DataFrame(rows), pd.DataFrame(rankings)
    table.similarity, table.trend = pd.DataFrame(similarity), pd.DataFrame(trends)
    table.cka = pd.DataFrame(ckas)
    table.summary = with_whole_test_set(table.summary, runs, baseline, control, margin, sesoi, metric, alpha)
    return table


def with_whole_test_set(summary: pd.DataFrame, runs: pd.DataFrame, baseline: str, control: str,
                        margin: float, sesoi: float, metric: str, alpha: float) -> pd.DataFrame:
    """``summary`` with the same comparison on the whole test set (``WHOLE_TEST_SET``) as
    ``full_<column>``, on the runs that logged it; unchanged where none did or no baseline did."""
    full = WHOLE_TEST_SET.get(metric)
    if full is None or full not in runs or runs[full].isna().all():
        return summary
    try:
        whole = summarize(runs[runs[full].notna()], baseline, control, margin, sesoi, full, alpha).summary
    except AnalysisError:  # no baseline scored the whole set: nothing to pair
        return summary
    keys = ["protocol_hash", "setup"]
    whole = whole[keys + [c for c in WHOLE_SET_COLUMNS if c in whole]]
    return summary.merge(whole.rename(columns=lambda c: c if c in keys else f"full_{c}"), on=keys, how="left")


@functools.lru_cache(maxsize=256)
def units_of(config_text: str) -> tuple[int, int]:
    """(units, units with an identity shortcut) of the network the logged ``model.*`` params
    build (through the registry: only the project's classes); (-1, -1) where they cannot."""
    from omegaconf import OmegaConf
    from torch import nn

    from hybrid_exp.registry import build

    params = json.loads(config_text)
    try:
        value = lambda v: "null" if v == "None" else v  # logged as Python's str()
        cfg = OmegaConf.from_dotlist([f"{k}={value(v)}" for k, v in params.items() if k.startswith("model.")])
        unit = str(params.get("model.block._target_", "")).rpartition(".")[2]
        units = [m for m in build(cfg, "model", "a run's logged config").modules() if type(m).__name__ == unit]
    except Exception:  # an older run's params, a class since renamed: nothing to count
        return -1, -1
    identity = lambda m: getattr(m, "shortcut", None) is True or isinstance(getattr(m, "shortcut", None), nn.Identity)
    return len(units), sum(map(identity, units))


def network_units(config: dict) -> dict[str, float]:
    """``units`` and ``shortcut_units`` of a run's network, for sentences about it (NaN: unknown)."""
    units, shortcuts = units_of(json.dumps(config, sort_keys=True))
    return {"units": units if units >= 0 else math.nan, "shortcut_units": shortcuts if units >= 0 else math.nan}


def network_size(runs: pd.DataFrame) -> dict[str, str]:
    """The width and depth a setup's runs trained at ('' where not one value)."""
    value = lambda key: " ".join(sorted({str(c.get(key, "")) for c in runs.config}))
    return {"width": value("model.width"), "depth": value("model.depth")}


def not_finished_count(frame: pd.DataFrame | None, protocol: str, setup: str) -> int:
    """How many runs of ``setup`` under ``protocol`` FAILED (diverged), were KILLED or never
    finished: what the survivors' numbers leave out."""
    if frame is None or frame.empty:
        return 0
    return int(((frame.protocol_hash == protocol) & (frame.setup == setup)).sum())


def code_states(runs: pd.DataFrame) -> str:
    """The commits ('+dirty': uncommitted changes) a setup's runs were trained from, short."""
    shas = runs.git_sha.fillna("unknown") if "git_sha" in runs else pd.Series(["unknown"] * len(runs))
    return " ".join(sorted({sha[:7] + ("+dirty" if sha.endswith("+dirty") else "") for sha in shas}))


def code_fingerprints(runs: pd.DataFrame) -> str:
    """The code fingerprints (the modules that build and train them, schema.code_files) of a
    setup's runs, short; '' for runs logged before runs recorded them."""
    if "code_fingerprint" not in runs:
        return ""
    return " ".join(sorted({str(c)[:8] for c in runs.code_fingerprint.dropna()}))


def executions(runs: pd.DataFrame) -> str:
    """How a setup's runs ran their training step ('eager', 'compiled', ...), '; '-joined; ''
    where no run recorded it (runs logged before the tag)."""
    return "; ".join(sorted(set(runs.execution.dropna()))) if "execution" in runs else ""


def powers(effect: float, sd: float, n: int, alpha: float, family: int) -> dict[str, float]:
    """The power of each test at ``effect`` under the rule the report applies, Holm over
    ``family`` setups: at least that of level alpha / family (Holm's first step), at most that
    of level alpha; 0 for the signed-rank test where no outcome survives Holm's first step."""
    reachable = stats.min_one_sided_signed_rank_p(n) * max(family, 1) < alpha
    at_least = lambda power: power(effect, sd, n, alpha / max(family, 1))
    return {"power_ttest_at_sesoi_low": at_least(stats.power_paired_t),
            "power_ttest_at_sesoi": stats.power_paired_t(effect, sd, n, alpha),
            "power_vs_control_at_sesoi_low": at_least(stats.power_vs_control) if reachable else 0.0,
            "power_vs_control_at_sesoi": stats.power_vs_control(effect, sd, n, alpha) if reachable else 0.0}


def interval(name: str, values) -> dict[str, float]:
    low, high = stats.t_interval(values)
    return {f"{name}_ci_low": low, f"{name}_ci_high": high}


def paired(err: pd.Series, base_err: pd.Series, ctrl_delta: pd.Series | None, margin: float,
           sesoi: float, alpha: float) -> dict:
    """One setup against the baseline (and the control), seed by seed."""
    seeds = err.index.intersection(base_err.index)
    delta = (err[seeds] - base_err[seeds]).to_numpy()
    p_tost = stats.tost(delta, margin)
    mean = delta.mean() if len(delta) else math.nan
    sd = delta.std(ddof=1) if len(delta) > 1 else math.nan
    low, high = stats.t_interval(delta)
    abs_low, abs_high = stats.abs_interval(low, high)
    row = {"n_paired": len(seeds),
           "setup_only_seeds": " ".join(map(str, err.index.difference(base_err.index))),
           "baseline_only_seeds": " ".join(map(str, base_err.index.difference(err.index))),
           "mean_delta": mean, **interval("mean_delta", delta),
           "p_ttest": stats.paired_t(delta), "p_signed_rank": stats.signed_rank(delta),
           "p_tost": p_tost, "sd_delta": sd,
           # the paper's metric, a description: no interval (a t interval on |Δ| covers less than
           # 95% at few seeds, tests/test_analysis.py)
           "mean_abs_delta": np.abs(delta).mean() if len(delta) else math.nan,
           # the distance of the means: its interval is that of mean Δ under |.| (at least 95%)
           "abs_mean_delta": abs(mean), "abs_mean_delta_ci_low": abs_low, "abs_mean_delta_ci_high": abs_high}
    if ctrl_delta is not None:  # the noise floor, on the seeds all three share
        shared = seeds.intersection(ctrl_delta.index)
        excess = (err[shared] - base_err[shared]).abs().to_numpy() - ctrl_delta[shared].abs().to_numpy()
        ctrl_sd = ctrl_delta.std(ddof=1) if len(ctrl_delta) > 1 else math.nan
        sd_low, sd_high = stats.sd_interval(ctrl_sd, len(ctrl_delta))
        row.update({"mean_abs_delta_minus_control": excess.mean() if len(excess) else math.nan,
                    **interval("mean_abs_delta_minus_control", excess), "n_vs_control": len(excess),
                    "p_vs_control": stats.signed_rank(excess, alternative="greater"),
                    # from the control's sd, and from the ends of its 95% interval
                    "seeds_needed": stats.seeds_needed(sesoi, ctrl_sd, alpha),
                    "seeds_needed_low": stats.seeds_needed(sesoi, sd_low, alpha),
                    "seeds_needed_high": stats.seeds_needed(sesoi, sd_high, alpha)})
    return row


def adjust(rows: list[dict], alpha: float) -> None:
    """Holm across the compared setups of one protocol and backbone, then the verdicts."""
    compared = [r for r in rows if r["role"] == "setup"]
    for key in ("p_ttest", "p_tost", "p_vs_control"):
        for row, p in zip(compared, stats.holm([r.get(key, math.nan) for r in compared])):
            row[f"{key}_holm"] = p
    family = sum(not math.isnan(r.get("p_vs_control", math.nan)) for r in compared)
    for row in compared:
        verdict = lambda p: None if p is None or math.isnan(p) else bool(p < alpha)
        row["differs_from_baseline"] = verdict(row.get("p_ttest_holm"))
        row["equivalent_within_margin"] = verdict(row.get("p_tost_holm"))
        row["farther_than_control"] = verdict(row.get("p_vs_control_holm"))
        if "n_vs_control" in row:  # whether any outcome could pass Holm's first step
            row["vs_control_reachable"] = stats.min_one_sided_signed_rank_p(row["n_vs_control"]) * family < alpha


def ranking(group: pd.DataFrame, base_err: pd.Series, metric: str, alpha: float, protocol: str,
            backbone: str) -> list[dict]:
    """The paper's ranking tested pair by pair: for consecutive setups A, B of PAPER_RANKING,
    |delta_B| - |delta_A| seed by seed (positive: A is closer to the baseline, as claimed)."""
    present = [s for s in PAPER_RANKING if s in set(group.setup)]
    abs_delta = {s: (errors_by_seed(group, s, metric) - base_err).abs().dropna() for s in present}
    rows = []
    for closer, farther in zip(present, present[1:]):
        seeds = abs_delta[closer].index.intersection(abs_delta[farther].index)
        d = (abs_delta[farther][seeds] - abs_delta[closer][seeds]).to_numpy()
        rows.append({"protocol_hash": protocol, "backbone": backbone, "closer": closer,
                     "farther": farther, "n_paired": len(seeds),
                     "mean_difference": d.mean() if len(d) else math.nan,
                     **interval("mean_difference", d), "p_ttest": stats.paired_t(d),
                     "p_signed_rank": stats.signed_rank(d)})
    for row, p in zip(rows, stats.holm([r["p_ttest"] for r in rows])):
        row["p_ttest_holm"] = p
        row["supported"] = None if math.isnan(p) else bool(p < alpha and row["mean_difference"] > 0)
    return rows


CHANNELS_PER_GROUP = re.compile(r"channels_per_group=(\d+)")


def trend(group: pd.DataFrame, metric: str, protocol: str, backbone: str) -> list[dict]:
    """The dense-to-depthwise continuum (experiment=cardinality) as one test: per seed, the
    least-squares slope of the error over log2(channels per group) across the setups labelled
    ``...[channels_per_group=k]``, then a t-test of the slopes (a paired design: each seed's
    setups share its data). Positive: the error grows as the groups get dense."""
    levels = {s: int(m.group(1)) for s in group.setup.unique() if (m := CHANNELS_PER_GROUP.search(s))}
    if len(set(levels.values())) < 3:
        return []
    table = group[group.setup.isin(levels)].pivot(index="seed", columns="setup", values=metric).dropna()
    x = np.log2([levels[s] for s in table.columns])
    slopes = np.polyfit(x, table.to_numpy().T, 1)[0] if len(table) else np.array([])
    return [{"protocol_hash": protocol, "backbone": backbone, "levels": " ".join(
                 str(k) for k in sorted(levels.values())), "n_seeds": len(slopes),
             "mean_slope": slopes.mean() if len(slopes) else math.nan, **interval("mean_slope", slopes),
             "p_ttest": stats.paired_t(slopes)}]


def agreement(group: pd.DataFrame, base: str, predictions: dict, protocol: str,
              backbone: str) -> list[dict]:
    """Functional similarity with the baseline, seed by seed, on the evaluation images: the share
    of images on which the two predict the same class, and error consistency (Cohen's kappa of
    being right). The control's values are a reference level: what two runs of the same
    function reach (an arm with lower error can agree more; only kappa corrects for accuracy)."""
    by_seed = lambda setup: {row.seed: predictions.get(row.run_id)
                             for row in group[group.setup == setup].itertuples()}
    base_predictions = by_seed(base)
    rows = []
    for setup in sorted(set(group.setup) - {base}):
        agree, kappa = [], []
        for seed, mine in by_seed(setup).items():
            theirs = base_predictions.get(seed)
            if mine is None or theirs is None or not np.array_equal(mine["indices"], theirs["indices"]):
                continue
            agree.append((mine["predicted"] == theirs["predicted"]).mean() * 100)
            kappa.append(stats.error_consistency(mine["predicted"] == mine["labels"],
                                                 theirs["predicted"] == theirs["labels"]))
        if agree:
            rows.append({"protocol_hash": protocol, "backbone": backbone, "setup": setup,
                         "n_paired": len(agree), "agreement": np.mean(agree),
                         **interval("agreement", agree), "kappa": np.mean(kappa),
                         **interval("kappa", kappa)})
    return rows


def cka_points(columns) -> list[str]:
    """The representation points logged by ``python -m hybrid_exp.similarity``, in the network's
    order: stage1, stage2, ..., pooled."""
    points = {c.split("/", 1)[1] for c in columns if c.startswith(("cka/", "cka_reference/"))}
    return sorted(points, key=lambda p: (p == "pooled", len(p), p))


def representation(group: pd.DataFrame, base: str, protocol: str, backbone: str) -> list[dict]:
    """Linear CKA of each setup with the baseline, per point, over seeds (``cka/<point>`` on the
    setup's run: a t interval, the seeds' runs independent), beside the reference level, two
    baseline runs of neighbouring seeds (``cka_reference/<point>`` on the baseline runs), given
    by its mean and range: each baseline run is in two of those pairs, so they are not
    independent and get no interval. Nothing where no reference level was measured."""
    rows = []
    for point in cka_points(group.columns):
        reference = group[group.setup == base].get(f"cka_reference/{point}")
        if reference is None or reference.dropna().empty:
            continue
        reference = reference.dropna()
        for setup in sorted(set(group.setup) - {base}):
            values = group[group.setup == setup].get(f"cka/{point}")
            values = values.dropna() if values is not None else pd.Series(dtype=float)
            if values.empty:
                continue
            rows.append({"protocol_hash": protocol, "backbone": backbone, "point": point, "setup": setup,
                         "n_seeds": len(values), "cka": values.mean(), **interval("cka", values),
                         "n_reference": len(reference), "reference": reference.mean(),
                         "reference_min": reference.min(), "reference_max": reference.max()})
    return rows
