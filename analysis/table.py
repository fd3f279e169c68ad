"""The paper's table, per setup, paired by seed with the baseline of its backbone.

For setup S and baseline B on the seeds both ran: delta_s = error(S, s) - error(B, s).
The paper's metric is mean_s |delta_s|. The control (``equivalent``, the baseline's function
with other random weights) gives the noise floor: S is distinguishable from noise when its
per-seed |delta| exceeds the control's, by a signed-rank test on |delta_S| - |delta_control|.
"""
import math

import numpy as np
import pandas as pd

from analysis import stats
from analysis.runs import AnalysisError

PAPER_ABS_DELTA = {"inception": 0.83, "resnext": 0.62, "reformulated_inception": 0.71,
                   "equivalent": 0.08, "hybrid": 0.12}  # Ghosh 2017, Fig. 4 (% points)


def errors_by_seed(runs: pd.DataFrame, setup: str, metric: str) -> pd.Series:
    return runs[runs.setup == setup].set_index("seed")[metric].sort_index()


def pick(setups: list[str], blocks: dict[str, str], name: str) -> str | None:
    """The setup called ``name``, else the only one whose unit is ``name`` (fractalnet+separable)."""
    if name in setups:
        return name
    matches = [s for s in setups if blocks[s] == name]
    return matches[0] if len(matches) == 1 else None


def summarize(runs: pd.DataFrame, baseline: str = "separable", control: str = "equivalent",
              margin: float = 0.25, metric: str = "test/error", alpha: float = 0.05) -> pd.DataFrame:
    """One row per setup (cleaned runs in): every number of the report's table."""
    rows, baselines = [], 0
    for backbone, group in runs.groupby("backbone", sort=True):
        setups = sorted(group.setup.unique())
        blocks = dict(zip(group.setup, group.block))
        base, ctrl = pick(setups, blocks, baseline), pick(setups, blocks, control)
        baselines += base is not None
        base_err = errors_by_seed(group, base, metric) if base else None
        ctrl_abs = None
        if base and ctrl and ctrl != base:
            ctrl_err = errors_by_seed(group, ctrl, metric)
            seeds = ctrl_err.index.intersection(base_err.index)
            ctrl_abs = (ctrl_err[seeds] - base_err[seeds]).abs()
        for setup in setups:
            err = errors_by_seed(group, setup, metric)
            first = group[group.setup == setup].iloc[0]
            row = {"backbone": backbone, "setup": setup, "model": first.model, "block": first.block,
                   "role": "baseline" if setup == base else "control" if setup == ctrl else "setup",
                   "n": len(err), "seeds": " ".join(map(str, err.index)),
                   "mean_error": err.mean(), "sd_error": err.std(ddof=1) if len(err) > 1 else math.nan,
                   **ci("mean_error", err), "params": first.params, "mult_adds": first.mult_adds,
                   "paper_mean_abs_delta": PAPER_ABS_DELTA.get(setup, math.nan)}
            if base and setup != base:
                row.update(paired(err, base_err, ctrl_abs if setup != ctrl else None, margin, alpha))
            rows.append(row)
    if not baselines:
        present = ", ".join(sorted(runs.setup.unique())) or "none"
        raise AnalysisError(f"no runs of the baseline '{baseline}' (finished, with {metric}); "
                            f"setups present: {present}; choose one with --baseline")
    return pd.DataFrame(rows)


def ci(name: str, values) -> dict[str, float]:
    low, high = stats.bootstrap_ci(values)
    return {f"{name}_ci_low": low, f"{name}_ci_high": high}


def paired(err: pd.Series, base_err: pd.Series, ctrl_abs: pd.Series | None, margin: float,
           alpha: float) -> dict:
    """Statistics of one setup against the baseline (and the control's |delta|), seed by seed.

    ``seeds_needed``: seeds for a paired t-test to resolve the observed |delta| - |delta_control|
    with power 0.8 at alpha 0.05, and at least the signed-rank test's minimum (6); without a
    control, for the signed delta."""
    seeds = err.index.intersection(base_err.index)
    unpaired = err.index.symmetric_difference(base_err.index)
    delta = (err[seeds] - base_err[seeds]).to_numpy()
    p_tost = stats.tost(delta, margin)
    row = {"n_paired": len(seeds), "unpaired_seeds": " ".join(map(str, unpaired)),
           "mean_abs_delta": np.abs(delta).mean() if len(delta) else math.nan,
           **ci("mean_abs_delta", np.abs(delta)),
           "mean_delta": delta.mean() if len(delta) else math.nan, **ci("mean_delta", delta),
           "p_wilcoxon": stats.wilcoxon(delta), "p_ttest": stats.paired_t(delta),
           "p_tost": p_tost, "equivalent_within_margin": p_tost < alpha if not math.isnan(p_tost) else None}
    # noise floor: |delta| against the control's |delta| on the seeds all three share
    if ctrl_abs is not None:
        shared = seeds.intersection(ctrl_abs.index)
        excess = (err[shared] - base_err[shared]).abs().to_numpy() - ctrl_abs[shared].to_numpy()
        p = stats.wilcoxon(excess)
        row.update({"mean_abs_delta_minus_control": excess.mean() if len(excess) else math.nan,
                    **ci("mean_abs_delta_minus_control", excess), "p_vs_control": p,
                    "distinguishable_from_noise": p < alpha if not math.isnan(p) else None,
                    "seeds_needed": max(stats.seeds_needed(excess), stats.min_signed_rank_n(alpha))})
    else:  # no control: how many seeds would resolve the signed difference itself
        row["seeds_needed"] = stats.seeds_needed(delta)
    return row
