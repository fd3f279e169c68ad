"""The report's figures, each saved as PNG and SVG; every function returns the PNG path."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def save(fig, out: Path, name: str) -> Path:
    fig.tight_layout()
    for suffix in ("png", "svg"):
        fig.savefig(out / f"{name}.{suffix}", dpi=120)
    plt.close(fig)
    return out / f"{name}.png"


def abs_delta(summary: pd.DataFrame, out: Path) -> Path:
    """Mean |delta| per setup with its 95% CI; the paper's values as markers."""
    rows = summary[summary.role != "baseline"].dropna(subset=["mean_abs_delta"])
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2.5, 3.8))
    x = np.arange(len(rows))
    err = np.array([rows.mean_abs_delta - rows.mean_abs_delta_ci_low,
                    rows.mean_abs_delta_ci_high - rows.mean_abs_delta]).clip(min=0)
    ax.bar(x, rows.mean_abs_delta, yerr=np.nan_to_num(err), capsize=4, color="tab:blue",
           label="ours (95% bootstrap CI)")
    ax.scatter(x, rows.paper_mean_abs_delta, marker="D", color="tab:red", zorder=3, label="paper")
    ax.set_xticks(x, rows.setup, rotation=30, ha="right")
    ax.set_ylabel("mean |test error - baseline| (% points)")
    ax.legend()
    return save(fig, out, "abs_delta")


def paired_dots(runs: pd.DataFrame, summary: pd.DataFrame, metric: str, out: Path) -> Path:
    """Each seed's error in every setup, joined across setups: pairing made visible."""
    baseline_first = summary.assign(later=summary.role.ne("baseline"))
    order = list(baseline_first.sort_values(["backbone", "later", "setup"]).setup)
    fig, ax = plt.subplots(figsize=(1.2 * len(order) + 2.5, 3.8))
    by_seed = runs.pivot_table(index="seed", columns="setup", values=metric)[order]
    for seed, errors in by_seed.iterrows():
        ax.plot(range(len(order)), errors.to_numpy(), "-o", alpha=0.6, ms=4, label=f"seed {seed}")
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    if len(by_seed) <= 12:
        ax.legend(fontsize="small", ncol=2)
    return save(fig, out, "paired_seeds")


def learning_curves(history: pd.DataFrame, runs: pd.DataFrame, out: Path) -> Path:
    """Validation error per epoch: mean over seeds with a +-1 sd band, one line per setup."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    merged = history.merge(runs[["run_id", "setup"]], on="run_id")
    for setup, curves in merged.groupby("setup"):
        by_epoch = curves.groupby("epoch").value
        mean, sd = by_epoch.mean(), by_epoch.std().fillna(0)
        ax.plot(mean.index + 1, mean, label=setup)
        ax.fill_between(mean.index + 1, mean - sd, mean + sd, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val/error (%)")
    ax.legend(fontsize="small")
    return save(fig, out, "learning_curves")


def error_vs_size(runs: pd.DataFrame, metric: str, out: Path) -> Path:
    """Test error against parameter count and against multiply-adds, one colour per setup."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, size, label in zip(axes, ("params", "mult_adds"), ("parameters", "multiply-adds")):
        for setup, group in runs.groupby("setup"):
            ax.scatter(group[size], group[metric], label=setup, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"{metric} (%)")
    axes[1].legend(fontsize="small")
    return save(fig, out, "error_vs_size")
