"""From runs to report.md, report.html (figures embedded), summary.csv and figures, also logged
as artifacts of an ``analysis`` run in the experiment."""
import base64
import html
import math
import re
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from analysis import figures, stats
from analysis.runs import (
    IDENTITY,
    KIND_TAG,
    LATEST,
    AnalysisError,
    Runs,
    clean,
    client_and_experiment,
    load_history,
    load_predictions,
    load_runs,
)
from analysis.table import PAPER_RANKING, Table, summarize
from hybrid_exp import config_dir


def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def with_ci(row, name: str) -> str:
    return f"{fmt(row.get(name))} {bracket(row, name)}".strip()


def yes_no(flag, yes: str = "yes", no: str = "no") -> str:
    return "–" if flag is None or (isinstance(flag, float) and math.isnan(flag)) else yes if flag else no


def shown(flag) -> str:
    """A test's verdict: 'not shown' is not 'shown false' (absence of evidence)."""
    return yes_no(flag, "shown", "not shown")


def build(experiment: str, runs: Runs, table: Table, figure_paths: list[tuple[Path, str]],
          baseline: str, control: str, margin: float, sesoi: float, metric: str) -> list[tuple]:
    """The report as blocks: ('h1'/'h2'/'h3', text), ('p', text), ('list', items),
    ('table', header, rows), ('img', path, caption)."""
    used, summary = runs.finished, table.summary
    blocks = [("h1", f"Analysis of experiment `{experiment}`"),
              ("p", f"{len(used)} finished runs of {used.setup.nunique()} setups on seeds "
                    f"{' '.join(str(int(s)) for s in sorted(used.seed.unique()))}; metric `{metric}` in % on "
                    f"the evaluation subset; baseline `{baseline}`, control `{control}`. Each setup "
                    f"is paired seed by seed with the baseline of its backbone trained under the "
                    f"same protocol. Intervals are 95% t intervals over seeds, given from "
                    f"{stats.MIN_N_INTERVAL} seeds on; they hold for the one fixed evaluation subset "
                    f"every run is scored on (`data.eval_seed`), not for the images it could have "
                    f"drawn. Margins fixed before the data: equivalence "
                    f"±{margin} points (TOST), smallest effect of interest {sesoi} points."),
              ("h2", "Runs set aside")]
    aside = duplicate_lines(runs, metric)
    aside += [f"{r.status}, not averaged in: `{r.run_name}` ({r.run_id})"
              + (f": {r.error}" if isinstance(r.error, str) else "") for r in runs.not_finished.itertuples()]
    aside += [f"Cannot be placed (no setup or model tag, no seed, or no logged config to rebuild "
              f"its setup and protocol from), not counted: `{r.run_name}` ({r.run_id})"
              for r in runs.unplaced.itertuples()]
    for r in records(summary):
        if r.get("setup_only_seeds"):
            aside.append(f"Seeds of `{r['setup']}` without a baseline run, left out of its pairing: "
                         f"{r['setup_only_seeds']}")
        if r.get("baseline_only_seeds"):
            aside.append(f"Baseline seeds with no `{r['setup']}` run, left out of its pairing: "
                         f"{r['baseline_only_seeds']}")
    blocks += [("list", (aside + table.set_apart) or ["none"])]
    for _, group in summary.groupby("protocol_hash", sort=True):
        blocks += protocol_section(group, table, margin, sesoi, control, list(summary.protocol.unique()))
    blocks.append(("h2", "Figures"))
    blocks += [("img", path, caption) for path, caption in figure_paths]
    return blocks


def protocol_words(protocol: str) -> str:
    """'3 epochs, 5,000 training images, 2,000 test images, CIFAR10, 32-true on cpu' from a
    protocol's key=value text."""
    keys = dict(item.split("=", 1) for item in protocol.split(", ") if "=" in item)
    subset = keys.get("data.train_subset", "None")
    train = "all training images" if subset == "None" else f"{int(subset):,} training images"
    parts = [f"{keys.get('trainer.max_epochs', '?')} epochs", train,
             f"{int(keys['data.eval_size']):,} test images" if "data.eval_size" in keys else None,
             keys.get("data._target_", "").rsplit(".", 1)[-1] or None,
             f"{keys.get('trainer.precision', '?')} on {keys.get('trainer.accelerator', '?')}"]
    return ", ".join(p for p in parts if p)


def protocol_keys(protocol: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in protocol.split(", ") if "=" in item)


def protocol_heading(protocol: str, others: list[str], group: pd.DataFrame) -> str:
    """The protocol in words, the keys in which it differs from the report's other protocols
    where the words do not show them, and the network's size."""
    words, keys = protocol_words(protocol), protocol_keys(protocol)
    alike = [o for o in others if o != protocol and protocol_words(o) == words]
    differing = sorted({k for o in alike for k in set(keys) | set(protocol_keys(o))
                        if keys.get(k) != protocol_keys(o).get(k)})
    ways = execution_ways(group)
    return (f"Protocol: {words}" + "".join(f", {k}={keys.get(k, '(unset)')}" for k in differing)
            + network_words(group) + (f"; training step {' or '.join(ways)}" if ways else ""))


def execution_ways(group: pd.DataFrame) -> list[str]:
    """The ways the runs of ``group`` ran their training step (eager, compiled, CUDA graph),
    where recorded."""
    return sorted({way for value in group.get("execution", pd.Series(dtype=str)).dropna()
                   for way in str(value).split("; ") if way})


def network_words(group: pd.DataFrame) -> str:
    """'; network width 32, depth 1: half the default width and depth (...)': the stacked
    backbone's size where its runs logged it, beside the default that ``experiment=fig4`` trains."""
    sizes = {key: sorted({v for value in group.get(key, pd.Series(dtype=str)).dropna()
                          for v in str(value).split()}) for key in ("width", "depth")}
    if not sizes["width"]:
        return ""
    words = f"; network width {' or '.join(sizes['width'])}, depth {' or '.join(sizes['depth'])}"
    if len(sizes["width"]) != 1 or len(sizes["depth"]) != 1 or not group.backbone.eq("stacked").all():
        return words
    default = OmegaConf.load(Path(config_dir()) / "backbone" / "stacked.yaml")
    width, depth = int(sizes["width"][0]) / default.width, int(sizes["depth"][0]) / default.depth
    relation = ("the default size" if width == depth == 1 else "half the default width and depth"
                if width == depth == 0.5 else f"{width:g}x the default width and {depth:g}x its depth")
    return (f"{words}: {relation} ({default.width} and {default.depth}, what `experiment=fig4` "
            f"trains; the paper does not give its network's size)")


def protocol_section(group: pd.DataFrame, table: Table, margin: float, sesoi: float,
                     control: str, others: list[str]) -> list[tuple]:
    """The tables of the runs of one protocol, with what limits them."""
    first = group.iloc[0]
    protocol = protocol_keys(first.protocol)
    blocks = [("h2", protocol_heading(first.protocol, others, group)),
              ("p", f"Protocol {first.protocol_hash}, trained under: " + (
                  ", ".join(f"`{k}={v}`" for k, v in protocol.items()) or first.protocol)
               + f"; {int(group.n.max())} seeds at most.")]
    caveats = []
    if group.n.max() < stats.MIN_N_INTERVAL:
        caveats.append(f"Fewer than {stats.MIN_N_INTERVAL} seeds per setup: no intervals, and "
                       f"p-values that can hardly fall below 0.05. Run seed='range(10)'.")
    epochs = protocol.get("trainer.max_epochs")
    if epochs is not None and epochs != "190":
        caveats.append(f"{epochs} epochs, not the paper's 190: the runs are far from converged, so "
                       f"differences may reflect how fast a setup learns, not where it ends; the "
                       f"paper's values are not shown beside them.")
    codes = sorted({c for states in group.code.dropna() for c in str(states).split()})
    if len(codes) > 1 or any(c.endswith("+dirty") for c in codes):
        caveats.append(f"The runs compared here come from {len(codes)} code state"
                       f"{'s' if len(codes) > 1 else ''} ({', '.join(codes)}; '+dirty': uncommitted "
                       f"changes): a difference between setups can come from the code as well.")
    prints = sorted({c for found in group.get("code_fingerprints", pd.Series(dtype=str)).dropna()
                     for c in str(found).split()})
    if len(prints) > 1:
        caveats.append(f"The runs compared here were built and trained by {len(prints)} versions of the "
                       f"modules that do it (code fingerprints {', '.join(prints)}; each run's code_files tag "
                       f"names the modules): a difference between setups can come from the code as well.")
    ways = execution_ways(group)
    if len(ways) > 1:
        caveats.append(f"The runs compared here ran their training step {len(ways)} ways ("
                       f"{', '.join(ways)}): the same function, not bit-identical arithmetic, whose "
                       f"round-off training amplifies as it does any other; a difference between "
                       f"setups that ran differently can come from that as from a seed.")
    lost = group[group.not_finished > 0]
    if not lost.empty:
        caveats.append("Runs that did not finish (diverged, failed or killed), left out of every "
                       "number below, which describes the survivors: " + ", ".join(
                           f"`{r.setup}` {int(r.not_finished)} of {int(r.not_finished + r.n)}"
                           for r in lost.itertuples()) + ".")
    blocks += [("list", caveats)] if caveats else []
    compared = group[group.role != "baseline"]
    if compared.empty or compared.role.eq("unpaired").all():
        blocks.append(("p", "Only the baseline ran under this protocol: there is nothing to "
                            "compare it with yet (run the experiment's other setups)."
                       if compared.empty else "No baseline ran under this protocol: its setups "
                            "are described, not compared."))
    header = ["backbone", "setup", "runs", "not finished", "paired", "params ×", "mult-adds ×",
              "error mean ± sd [95% CI]", "mean Δ [95% CI]", "p paired t (Holm)", "p signed-rank",
              f"equivalence ±{margin} (TOST, Holm)", "mean |Δ|", "|mean Δ| [95% CI]", "paper mean |Δ|"]
    rows = [[r["backbone"], f"`{r['setup']}` ({r['role']})", r["n"], r["not_finished"],
             fmt(r.get("n_paired"), 0), fmt(r.get("params_ratio")), fmt(r.get("mult_adds_ratio")),
             f"{fmt(r['mean_error'])} ± {fmt(r['sd_error'])} {bracket(r, 'mean_error')}",
             with_ci(r, "mean_delta"), fmt(r.get("p_ttest_holm"), 3), fmt(r.get("p_signed_rank"), 3),
             f"{shown(r.get('equivalent_within_margin'))} (p {fmt(r.get('p_tost_holm'), 3)})",
             fmt(r.get("mean_abs_delta")), with_ci(r, "abs_mean_delta"),
             fmt(r["paper_mean_abs_delta"])] for r in records(group)]
    blocks += [("h3", "Each setup against the baseline"), ("table", header, rows),
               ("p", "Δ = error(setup) − error(baseline) on the same seed, in percentage points; "
                     "*runs* counts a setup's finished runs, *not finished* those that diverged, "
                     "failed or were killed (in no number here), *paired* the seeds it shares with "
                     "the baseline, on which every Δ, interval and test is computed; *params ×* and "
                     "*mult-adds ×*: the setup's size over the baseline's (a setup of other compute "
                     "differs in that too). The signed mean Δ is the "
                     "primary result: its interval, a paired t-test, and a TOST equivalence test "
                     f"that shows a setup equivalent when the mean Δ lies within ±{margin} points (a "
                     "margin fixed before the data; 'not shown' is no evidence of a difference); "
                     "p-values Holm-adjusted across the setups. Mean |Δ| is the paper's metric, a "
                     "description with no interval (a t interval on |Δ| covers less than 95% at few "
                     "seeds): it is positive even between two runs of one function (see the "
                     "control). |mean Δ| is the distance between the two mean errors, its interval "
                     "that of mean Δ folded at 0; near a true Δ of 0 it too lies above the truth "
                     "on average, less than mean |Δ| does.")]
    blocks += whole_test_set(group, margin)
    controls = group[group.role == "control"]
    tested = group[group.role == "setup"]
    blocks.append(("h3", "The noise floor"))
    if controls.empty:
        blocks.append(("p", f"No runs of the control `{control}` under this protocol: no noise floor."))
    for r in records(controls):
        blocks.append(("p", f"Control `{r['setup']}` ({r['backbone']}): mean |Δ| = "
                            f"{fmt(r.get('mean_abs_delta'))} points over {int(r['n_paired'])} seeds, "
                            f"sd of its Δ {fmt(r.get('sd_delta'))}: the difference two "
                            f"runs of the same function show by chance alone (noise level of |Δ|, "
                            f"sd·√(2/π): {fmt(r.get('noise_abs_delta'))}). Its own mean Δ "
                            f"{with_ci(r, 'mean_delta')}, paired t p {fmt(r.get('p_ttest'), 3)}; "
                            f"equivalence within ±{margin} {shown(none_if_nan(r.get('p_tost'), lambda p: p < 0.05))} "
                            f"(TOST p {fmt(r.get('p_tost'), 3)})"
                            + ("." if none_if_nan(r.get("p_tost"), lambda p: p < 0.05) else
                               f": at {int(r['n_paired'])} seeds even a strictly equivalent unit need "
                               f"not be shown equivalent.")))
    if not controls.empty and not tested.empty and "p_vs_control" in tested:
        header = ["setup", "|Δ| − |Δ control| [95% CI]", "p one-sided (Holm)", "farther than the control",
                  f"seeds needed for {sesoi} points"]
        rows = [[f"`{r['setup']}`", with_ci(r, "mean_abs_delta_minus_control"),
                 fmt(r.get("p_vs_control_holm"), 3),
                 yes_no(r.get("farther_than_control")) if r.get("vs_control_reachable", True)
                 else f"cannot be shown at n = {int(r['n_vs_control'])}",
                 f"{fmt(r.get('seeds_needed'), 0)} [{fmt(r.get('seeds_needed_low'), 0)}, "
                 f"{fmt(r.get('seeds_needed_high'), 0)}]"] for r in records(tested)]
        ctrl = records(controls)[0]
        blocks += [("table", header, rows), ("list", [
            f"This comparison describes; it is weak evidence either way: with the control's sd of "
            f"Δ ({fmt(ctrl.get('sd_delta'))}) at {int(ctrl['n_paired'])} seeds and Holm over "
            f"{int(ctrl['family'])} setups, the signed-rank test on |Δ| − |Δ control| has "
            + power_words(ctrl, "power_vs_control_at_sesoi")
            + f" power against a {sesoi}-point shift (simulated), where the paired t-test on Δ above "
              f"has {power_words(ctrl, 'power_ttest_at_sesoi')}. A setup closer to the baseline than "
              f"the control is not called farther (the test is one-sided)"
            + (f"; 'cannot be shown at n = N': over N seeds the smallest one-sided signed-rank p is "
               f"1/2^N, which Holm's first step multiplies by {int(ctrl['family'])}: no outcome "
               f"reaches 0.05." if not tested.get("vs_control_reachable", pd.Series([True])).all() else "."),
            f"Seeds needed: how many seeds a paired t-test needs to detect a true mean Δ of "
            f"{sesoi} points (the smallest effect of interest, stated before the data) with power "
            f"0.8 at alpha 0.05, given the control's sd of Δ (run-to-run noise), and [in brackets] "
            f"given either end of that sd's 95% interval (estimated from {int(ctrl['n_paired'])} "
            f"seeds); never fewer than {stats.min_signed_rank_n()}, below which a signed-rank test "
            f"cannot reach p < 0.05."])]
    ranked = table.ranking[table.ranking.protocol_hash == first.protocol_hash] if not table.ranking.empty else table.ranking
    if not ranked.empty:
        header = ["closer (claimed)", "farther", "n", "|Δ farther| − |Δ closer| [95% CI]",
                  "p paired t (Holm)", "p signed-rank", "supported"]
        rows = [[f"`{r['closer']}`", f"`{r['farther']}`", r["n_paired"], with_ci(r, "mean_difference"),
                 fmt(r["p_ttest_holm"], 3), fmt(r["p_signed_rank"], 3), yes_no(r["supported"])]
                for r in records(ranked)]
        blocks += [("h3", "The paper's ranking"), ("table", header, rows),
                   ("p", "The paper's claim is an order: " + " < ".join(f"`{s}`" for s in PAPER_RANKING)
                         + " in |Δ| from the baseline. Each consecutive pair is compared seed by seed; "
                           "'supported' means the farther one's |Δ| is larger at Holm-adjusted p < 0.05: "
                           "that the errors order as the paper says, not that its interpretation "
                           "holds." + hybrid_words(group))]
    trends = table.trend[table.trend.protocol_hash == first.protocol_hash] if not table.trend.empty else table.trend
    if not trends.empty:
        header = ["backbone", "channels per group", "seeds", "slope per doubling [95% CI]", "p paired t"]
        rows = [[r["backbone"], r["levels"], r["n_seeds"], with_ci(r, "mean_slope"), fmt(r["p_ttest"], 3)]
                for r in records(trends)]
        blocks += [("h3", "Trend over channels per group"), ("table", header, rows),
                   ("p", "The error's change, in points, per doubling of the channels per group "
                         "(from depthwise towards dense), fitted per seed by least squares over "
                         "log2(channels per group), then tested over seeds: one test for the "
                         "continuum instead of one per level.")]
    similar = table.similarity[table.similarity.protocol_hash == first.protocol_hash] if not table.similarity.empty else table.similarity
    if not similar.empty:
        header = ["setup", "n", "prediction agreement % [95% CI]", "error consistency κ [95% CI]"]
        rows = [[f"`{r['setup']}`", r["n_paired"], with_ci(r, "agreement"), with_ci(r, "kappa")]
                for r in records(similar)]
        blocks += [("h3", "Functional similarity with the baseline"), ("table", header, rows),
                   ("p", "Per seed, on the evaluation images (`test_predictions.npz` of each run): "
                         "the share of images on which the setup and the baseline predict the same "
                         "class, and error consistency, Cohen's κ of being right (0: no more shared "
                         "errors than their accuracies imply). The control's values are a reference "
                         "level, what two runs of the same function reach, not a ceiling: an arm "
                         "with a lower error can agree more with the baseline; only κ corrects for "
                         "accuracy. A setup that computes 'the same thing' as the baseline should "
                         "come close to the control's κ, whatever its error rate.")]
    blocks += representation_section(table.cka[table.cka.protocol_hash == first.protocol_hash]
                                     if not table.cka.empty else table.cka, group)
    return blocks


def representation_section(cka: pd.DataFrame, group: pd.DataFrame) -> list[tuple]:
    """Linear CKA with the baseline per point, beside the range of two baseline runs, and where
    each setup's mean lies against that range, computed."""
    if cka.empty:
        return []
    roles = dict(zip(group.setup, group.role))
    blocks = [("h3", "Representation similarity with the baseline (linear CKA)")]
    for point, rows in cka.groupby("point", sort=False):
        header = ["backbone", "setup", "seeds", "CKA with the baseline [95% CI]",
                  "two baseline runs: mean [lowest, highest]"]
        body = [[r["backbone"], f"`{r['setup']}` ({roles.get(r['setup'], 'setup')})", r["n_seeds"],
                 with_ci(r, "cka"), f"{fmt(r['reference'])} [{fmt(r['reference_min'])}, "
                                    f"{fmt(r['reference_max'])}] ({r['n_reference']} pairs)"]
                for r in records(rows)]
        blocks += [("p", f"At `{point}`:"), ("table", header, body)]
    where = {}
    for r in records(cka):
        place = ("below" if r["cka"] < r["reference_min"] else "above" if r["cka"] > r["reference_max"]
                 else "within")
        where.setdefault(r["setup"], {}).setdefault(place, []).append(f"`{r['point']}`")
    words = {"below": "below the lowest value two baseline runs reach",
             "within": "within the range of two baseline runs", "above": "above the highest value two baseline runs reach"}
    said = [f"`{setup}`'s mean CKA with the baseline lies " + "; ".join(
                f"{words[place]} at {', '.join(points)}" for place, points in places.items())
            for setup, places in sorted(where.items())]
    blocks += [("list", said), ("p",
        "From `python -m hybrid_exp.similarity`: per seed, linear CKA (Kornblith et al. 2019, the "
        "minibatch estimate of Nguyen et al. 2021, float64) between a setup's representations of "
        "the evaluation images and the baseline's of the same seed, at the end of each stage and "
        "at the pooled features, with a 95% t interval over seeds. The reference level is the "
        "same between two baseline runs of neighbouring seeds (what two trainings of one "
        "architecture reach), given by its mean and range, not an interval: each baseline run is "
        "in two of its pairs. The sentences above place each setup's mean against that range, a "
        "description, not a test; the control's row is a second reference. CKA ignores rotations "
        "and isotropic scaling of the features; it can be moved by a few outlier images and stay "
        "high under transformations that keep linear separability (Davari et al. 2023): read a "
        "value only against the reference levels, measured the same way on the same images; a "
        "similar representation is not the same computation.")]
    return blocks


def whole_test_set(group: pd.DataFrame, margin: float) -> list[tuple]:
    """The comparison again on the whole test set (``full_*`` columns), with how much less noisy
    its Δ is than the subset's, counted here."""
    compared = [r for r in records(group) if r["role"] in ("setup", "control") and r.get("full_n_paired")]
    if not compared:
        return []
    header = ["setup", "paired", "mean Δ [95% CI]", "sd of Δ: subset → whole set", "p paired t (Holm)",
              f"equivalence ±{margin} (TOST, Holm)", "mean |Δ|"]
    rows = [[f"`{r['setup']}` ({r['role']})", fmt(r["full_n_paired"], 0), with_ci(r, "full_mean_delta"),
             f"{fmt(r.get('sd_delta'))} → {fmt(r.get('full_sd_delta'))}", fmt(r.get("full_p_ttest_holm"), 3),
             f"{shown(r.get('full_equivalent_within_margin'))} (p {fmt(r.get('full_p_tost_holm'), 3)})"
             if r["role"] == "setup" else "–", fmt(r.get("full_mean_abs_delta"))] for r in compared]
    ratios = [r["full_sd_delta"] / r["sd_delta"] for r in compared  # on the same seeds only
              if (r.get("sd_delta") or 0) > 0 and r.get("full_sd_delta") is not None
              and r["full_n_paired"] == r["n_paired"]]
    smaller = sum(ratio < 1 for ratio in ratios)
    noise = (f" Here the sd of Δ is smaller on the whole set for {smaller} of {len(ratios)} setups "
             f"(whole set over subset: {min(ratios):.2f} to {max(ratios):.2f})." if ratios else "")
    return [("h3", "The same on the whole test set"), ("table", header, rows),
            ("p", "Every run also scores every test image, the evaluation subset among them: the "
                  "same paired statistics on that metric (`test_full/error`), on the runs that "
                  "logged it." + noise + " The paper scored a random subset of the test set: only "
                  "the subset's table above is ever set beside the paper's values.")]


def percent(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def none_if_nan(p, verdict):
    return None if p is None or (isinstance(p, float) and math.isnan(p)) else verdict(p)


def bracket(row, name: str) -> str:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    return "" if low is None or math.isnan(low) else f"[{fmt(low)}, {fmt(high)}]"


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts, with missing values (NaN, NA) as None."""
    return [{k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v)
             for k, v in row.items()} for row in frame.to_dict("records")]


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {body[0]}")
        elif kind == "p":
            out.append(body[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in body[0]))
        elif kind == "table":
            header, rows = body
            cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"
            out.append("\n".join([cells(header), "|" + " --- |" * len(header)] + [cells(r) for r in rows]))
        elif kind == "img":
            out.append(f"![{body[0].stem}]({body[0].name})\n\n*{body[1]}*")
    return "\n\n".join(out) + "\n"


def inline(text: str) -> str:
    """HTML-escaped text with `code` spans."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def to_html(blocks: list[tuple], title: str) -> str:
    """A self-contained page: the figures are embedded as data URIs."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:"
           "collapse}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}img{max-width:100%}"
           "</style></head><body>"]
    for kind, *body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{inline(body[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{inline(body[0])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in body[0]) + "</ul>")
        elif kind == "table":
            header, rows = body
            out.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in row) + "</tr>"
                                 for row in rows) + "</table>")
        elif kind == "img":
            data = base64.b64encode(body[0].read_bytes()).decode()
            out.append(f"<figure><img alt='{body[0].stem}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{inline(body[1])}</figcaption></figure>")
    return "\n".join(out) + "\n</body></html>\n"


def analyze(experiment: str, tracking_uri: str = "sqlite:///mlflow.db", out: str | None = None,
            baseline: str = "separable", control: str = "equivalent", margin: float = 0.25,
            metric: str = "test/error", log_to_mlflow: bool = True, sesoi: float | None = None) -> Path:
    """Write the report of ``experiment`` into ``out`` (default analysis/reports/<experiment>)."""
    out = Path(out or Path("analysis") / "reports" / experiment)
    frame = load_runs(experiment, tracking_uri)
    runs = clean_or_explain(experiment, frame, metric)
    used = runs.finished
    write_report(experiment, runs, load_predictions(tracking_uri, used.run_id),
                 load_history(tracking_uri, used.run_id), out, baseline, control, margin, metric, sesoi)
    if log_to_mlflow:
        log_analysis(experiment, tracking_uri, out, list(used.run_id), {
            "baseline": baseline, "control": control, "margin": margin,
            "sesoi": margin if sesoi is None else sesoi, "metric": metric})
    return out


def log_analysis(experiment: str, tracking_uri: str, out: Path, used: list[str], options: dict,
                 bundle: Path | None = None) -> str:
    """The analysis as a run of its experiment, beside the runs it summarises: the report, its
    figures and tables (and the bundle's files under ``bundle/`` where one was published), the
    runs it used in ``used_runs.txt``, what it is in its description. Tagged ``KIND_TAG``:
    never read as a training run by a later analysis, never a grid's finished config (it has no
    config hash), never paired."""
    client, experiment_id = client_and_experiment(experiment, tracking_uri)
    note = (f"The report of experiment `{experiment}` over {len(used)} finished training runs "
            f"(their ids: used_runs.txt): report.html with its figures, summary.csv"
            + (f"; the results bundle `{bundle.name}` under bundle/" if bundle else "") + ".")
    run = client.create_run(experiment_id, run_name="analysis",
                            tags={KIND_TAG: "analysis", "mlflow.note.content": note})
    for key, value in options.items():
        client.log_param(run.info.run_id, key, value)
    client.log_artifacts(run.info.run_id, str(out))
    client.log_text(run.info.run_id, "\n".join(used) + "\n", "used_runs.txt")
    if bundle:
        client.log_artifacts(run.info.run_id, str(bundle), "bundle")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def hybrid_words(group: pd.DataFrame) -> str:
    """What ``hybrid`` adds to the baseline here, counted on the networks (its runs' configs)."""
    hybrid, base = group[group.block == "hybrid"], group[group.role == "baseline"]
    if hybrid.empty or base.empty or pd.isna(hybrid.units.iloc[0]):
        return ""
    r, b = hybrid.iloc[0], base.iloc[0]
    units, shortcuts = int(r.units), int(r.shortcut_units)
    size = ("the baseline's parameters" if r.params == b.params else
            f"{r.params / b.params:.2f}x the baseline's parameters")
    if shortcuts == 0:
        return (f" Here `{r.setup}` has {size} and an identity shortcut on none of its {units} units "
                f"(none keeps its channels and resolution): the baseline's function.")
    return (f" Here `{r.setup}` has {size} and an identity shortcut on {shortcuts} of its {units} "
            f"units (those that keep their channels and resolution), so a small |Δ| is what one "
            f"expects of it whatever separable convolutions are; the functional similarity below "
            f"says more.")


def power_words(row: dict, key: str) -> str:
    """'12%' where Holm cannot change it, else '8-12%' (Holm's first step to no adjustment)."""
    low, high = row.get(f"{key}_low"), row.get(key)
    return percent(high) if percent(low) == percent(high) else f"{percent(low)}-{percent(high)}"


def duplicate_lines(runs: Runs, metric: str) -> list[str]:
    """A line per FINISHED run set aside for another of its config and seed, with both values of
    ``metric`` when they disagree."""
    kept = runs.finished.set_index(IDENTITY)
    lines = []
    for r in runs.duplicates.itertuples():
        other = kept.loc[tuple(getattr(r, k) for k in IDENTITY)]
        mine, theirs = runs.duplicates.at[r.Index, metric], other[metric]
        values = (f"; {metric} {mine:.2f} here, {theirs:.2f} in the kept run" if mine != theirs
                  else f"; the same {metric}")
        lines.append(f"Duplicate of `{other.run_name}` ({other.run_id}), same config and seed, {LATEST}: "
                     f"`{r.run_name}` ({r.run_id}){values}")
    return lines


def clean_or_explain(experiment: str, frame: pd.DataFrame, metric: str) -> Runs:
    """``clean(frame)``, or one sentence when there is nothing to analyse."""
    if frame.empty:
        raise AnalysisError(f"experiment '{experiment}' has no training runs yet")
    runs = clean(frame, metric)
    if runs.finished.empty:
        raise AnalysisError(f"experiment '{experiment}' has no FINISHED run with {metric}; "
                            f"statuses: {frame.status.value_counts().to_dict()}")
    return runs


def write_report(experiment: str, runs: Runs, predictions: dict, history: pd.DataFrame, out: Path,
                 baseline: str = "separable", control: str = "equivalent", margin: float = 0.25,
                 metric: str = "test/error", sesoi: float | None = None) -> Table:
    """report.md, report.html, summary.csv (and ranking, similarity, trend) and the figures of
    ``runs`` into ``out``: from an MLflow store (``analyze``) or a results bundle alike."""
    sesoi = margin if sesoi is None else sesoi
    used = runs.finished
    table = summarize(used, baseline, control, margin, sesoi, metric, predictions=predictions,
                      not_finished=runs.not_finished)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if table.summary.role.isin(["setup", "control"]).any():
        paths += [figures.abs_delta(table.summary, out),
                  figures.paired_dots(used, table.summary, metric, out)]
    if not history.empty:
        paths.append(figures.learning_curves(history, used, out))
    paths.append(figures.error_vs_size(used, metric, out))
    if not table.similarity.empty:
        paths.append(figures.similarity(table.similarity, out))
    if not table.cka.empty:
        paths.append(figures.cka_by_depth(table.cka, out))
    blocks = build(experiment, runs, table, paths, baseline, control, margin, sesoi, metric)
    table.summary.to_csv(out / "summary.csv", index=False)
    for name, frame_out in (("ranking", table.ranking), ("similarity", table.similarity),
                            ("trend", table.trend), ("cka", table.cka)):
        if not frame_out.empty:
            frame_out.to_csv(out / f"{name}.csv", index=False)
    (out / "report.md").write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, f"hybrid-exp analysis: {experiment}"))
    return table
