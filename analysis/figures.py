"""The report's figures, each saved as PNG and SVG, each with a title; every function returns
(the PNG's path, its caption)."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hybrid_exp.errors import AveragingRefused  # noqa: E402


def save(fig, out: Path, name: str, title: str, caption: str) -> tuple[Path, str]:
    fig.suptitle(title)
    fig.tight_layout()
    for suffix in ("png", "svg"):
        fig.savefig(out / f"{name}.{suffix}", dpi=120)
    plt.close(fig)
    return out / f"{name}.png", caption


def labels(frame: pd.DataFrame) -> list[str]:
    """Setup names, with their protocol where the report holds several."""
    if frame.protocol_hash.nunique() < 2:
        return list(frame.setup)
    return [f"{s} ({p[:6]})" for s, p in zip(frame.setup, frame.protocol_hash)]


def errorbars(frame: pd.DataFrame, name: str) -> dict:
    """Keyword arguments for ``bar``: the 95% intervals as error bars with caps, or nothing where
    no interval was computed (fewer than 5 seeds): no caps that look like a zero-width interval."""
    if frame[f"{name}_ci_low"].isna().all():
        return {}
    return {"yerr": np.nan_to_num(np.array([frame[name] - frame[f"{name}_ci_low"],
                                            frame[f"{name}_ci_high"] - frame[name]]).clip(min=0)),
            "capsize": 3}


def abs_delta(summary: pd.DataFrame, out: Path) -> tuple[Path, str]:
    """Mean Δ per setup with its 95% t interval, mean |Δ| as described; the paper's values as markers."""
    rows = summary[summary.role.isin(["setup", "control"])]
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 3, 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, rows.mean_delta, 0.4, **errorbars(rows, "mean_delta"), color="tab:blue",
           label="mean Δ (signed)")
    ax.bar(x + 0.2, rows.mean_abs_delta, 0.4, color="tab:gray",
           label="mean |Δ| (paper's metric)")
    if "noise_abs_delta" in summary:  # each protocol's control: E|Δ| of pure noise, sd·√(2/π)
        noise = rows.protocol_hash.map(summary.groupby("protocol_hash").noise_abs_delta.max())
        ax.hlines(noise, x - 0.05, x + 0.45, colors="black", linestyles="dashed",
                  label="noise level of |Δ| (control's sd·√(2/π))")
    if rows.paper_mean_abs_delta.notna().any():
        ax.scatter(x + 0.2, rows.paper_mean_abs_delta, marker="D", color="tab:red", zorder=3,
                   label="paper's mean |Δ|")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, labels(rows), rotation=30, ha="right")
    ax.set_ylabel("test error − baseline's (% points)")
    ax.legend(fontsize="small")
    return save(fig, out, "abs_delta", "Each setup against the baseline",
                "Mean Δ and mean |Δ| over seeds, Δ = error(setup) − error(baseline) on the same "
                "seed; mean Δ with its 95% t interval (none below 5 seeds), mean |Δ| a description "
                "without one (a t interval on |Δ| covers less than 95% at few seeds); dashed: the |Δ| that noise alone "
                "gives on average (the control's sd of Δ times √(2/π)), which mean |Δ| exceeds "
                "even for an identical function; red: the paper's Fig. 4 values (shown only for "
                "runs at the paper's protocol).")


def one_per_point(runs: pd.DataFrame, keys: list[str]) -> None:
    """Refuse to draw a point that would average two runs of one (setup, seed, protocol)."""
    doubled = runs[runs.duplicated(keys, keep=False)]
    if not doubled.empty:
        first = doubled.iloc[0]
        raise AveragingRefused(f"{len(doubled)} runs share {', '.join(f'{k}={first[k]}' for k in keys)}: "
                               f"a figure would average them; clean the runs first (analysis.clean)")


def facets(runs: pd.DataFrame, width: float, height: float = 3.8):
    """One panel per protocol (runs of different protocols are never drawn as one point)."""
    protocols = sorted(runs.protocol_hash.unique())
    fig, axes = plt.subplots(len(protocols), 1, figsize=(width, height * len(protocols)), squeeze=False)
    for ax, protocol in zip(axes[:, 0], protocols):
        if len(protocols) > 1:
            ax.set_title(f"protocol {protocol[:8]}", fontsize="small")
        yield fig, ax, runs[runs.protocol_hash == protocol]


def paired_points(runs: pd.DataFrame, summary: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """{protocol: (seed x setup) table of ``metric``}, baseline first: the points of
    ``paired_dots``, one run each (never a mean of several)."""
    one_per_point(runs, ["protocol_hash", "setup", "seed"])
    baseline_first = summary.assign(later=summary.role.ne("baseline"))
    ordered = list(dict.fromkeys(baseline_first.sort_values(["backbone", "later", "setup"]).setup))
    points = {}
    for protocol, panel in runs.groupby("protocol_hash", sort=True):
        order = [s for s in ordered if s in set(panel.setup)]
        points[protocol] = panel.pivot(index="seed", columns="setup", values=metric)[order]
    return points


def paired_dots(runs: pd.DataFrame, summary: pd.DataFrame, metric: str, out: Path) -> tuple[Path, str]:
    """Each seed's error in every setup, joined across setups: pairing made visible, one panel
    per protocol."""
    points = paired_points(runs, summary, metric)
    width = 1.2 * runs.setup.nunique() + 2.5
    for (fig, ax, _), by_seed in zip(facets(runs, width), points.values()):  # noqa: B007 (the last fig is saved below)
        order = list(by_seed.columns)
        for seed, errors in by_seed.iterrows():
            ax.plot(range(len(order)), errors.to_numpy(), "-o", alpha=0.6, ms=4, label=f"seed {int(seed)}")
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_ylabel(f"{metric} (%)")
        if len(by_seed) <= 12:
            ax.legend(fontsize="small", ncol=2)
    return save(fig, out, "paired_seeds", "Every seed in every setup",
                f"{metric} of each run; a line joins the runs of one seed (the same data stream), "
                f"so paired differences show as slopes; one panel per protocol.")


def learning_curves(history: pd.DataFrame, runs: pd.DataFrame, out: Path) -> tuple[Path, str]:
    """Validation error per epoch: mean over seeds with a +-1 sd band, one line per setup, one
    panel per protocol."""
    one_per_point(runs, ["protocol_hash", "setup", "seed"])
    merged = history.merge(runs[["run_id", "setup", "protocol_hash"]], on="run_id")
    for fig, ax, panel in facets(merged, 6.5, 4):  # noqa: B007 (the last figure is saved below)
        for setup, curves in panel.groupby("setup"):
            by_epoch = curves.groupby("epoch").value
            mean, sd = by_epoch.mean(), by_epoch.std().fillna(0)
            ax.plot(mean.index, mean, marker="o", ms=3, label=setup)  # markers: one epoch shows
            ax.fill_between(mean.index, mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val/error (%)")
        ax.legend(fontsize="small")
    return save(fig, out, "learning_curves", "Learning curves",
                "Validation error per epoch, mean over seeds with a ±1 sd band, one panel per "
                "protocol. Curves still falling at the end mean the runs are not converged.")


def error_vs_size(runs: pd.DataFrame, metric: str, out: Path) -> tuple[Path, str]:
    """Test error against parameter count and against multiply-adds, one colour per setup."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, size, label in zip(axes, ("params", "mult_adds"), ("parameters", "multiply-adds")):
        for setup, group in runs.groupby("setup"):
            ax.scatter(group[size], group[metric], label=setup, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"{metric} (%)")
    axes[1].legend(fontsize="small")
    return save(fig, out, "error_vs_size", "Error against size",
                f"{metric} of each run against the network's parameters and multiply-adds (one "
                f"32x32 forward pass): differences in capacity are differences too "
                f"(experiment=fig4_matched holds them within 15%).")


def similarity(frame: pd.DataFrame, out: Path) -> tuple[Path, str]:
    """Prediction agreement and error consistency with the baseline, per setup."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(frame))
    for ax, name, label in zip(axes, ("agreement", "kappa"), ("prediction agreement (%)", "error consistency κ")):
        ax.bar(x, frame[name], **errorbars(frame, name), color="tab:green")
        ax.set_xticks(x, labels(frame), rotation=30, ha="right")
        ax.set_ylabel(label)
    return save(fig, out, "similarity", "Functional similarity with the baseline",
                "Per setup, mean over seeds with 95% t intervals: the share of evaluation images "
                "on which it predicts the baseline's class, and Cohen's κ of their errors. The "
                "control (the baseline's own function) is a reference level, not a ceiling: a setup "
                "with a lower error can agree more; κ corrects for accuracy.")


def cka_by_depth(frame: pd.DataFrame, out: Path) -> tuple[Path, str]:
    """Linear CKA with the baseline at each point of the network, per setup, over the reference
    band of two baseline runs; a panel per protocol and backbone."""
    panels = list(frame.groupby(["protocol_hash", "backbone"], sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, ((protocol, backbone), panel) in zip(axes[0], panels):
        points = list(dict.fromkeys(panel.point))
        x = np.arange(len(points))
        reference = panel.drop_duplicates("point").set_index("point").loc[points]
        ax.plot(x, reference.reference, color="0.4", ls="--", label="two baseline runs (reference)")
        ax.fill_between(x, reference.reference_min, reference.reference_max, color="0.85")
        for setup, rows in panel.groupby("setup", sort=True):
            rows = rows.set_index("point").reindex(points)
            ax.errorbar(x, rows.cka, **{"yerr": np.nan_to_num(np.array([rows.cka - rows.cka_ci_low,
                                                                         rows.cka_ci_high - rows.cka]).clip(min=0)),
                                          "capsize": 3} if rows.cka_ci_low.notna().all() else {},
                        marker="o", label=setup)
        ax.set_xticks(x, points)
        ax.set_ylabel("linear CKA with the baseline")
        ax.set_title(f"{backbone} ({protocol[:6]})" if len(panels) > 1 else backbone)
        ax.legend(fontsize=7)
    return save(fig, out, "cka_by_depth", "Representation similarity with the baseline, by depth",
                "Linear CKA of each setup's representations of the evaluation images with the "
                "baseline's (same seed), at the end of each stage and at the pooled features, mean "
                "over seeds with 95% t intervals; dashed: two baseline runs of neighbouring seeds, "
                "the level two trainings of one architecture reach (mean; band: lowest to highest).")
