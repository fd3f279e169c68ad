"""From runs to report.md, report.html (figures embedded), summary.csv and figures, also logged
as artifacts of an ``analysis`` run in the experiment."""
import base64
import html
import math
import re
from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.runs import KIND_TAG, AnalysisError, Runs, clean, client_and_experiment, load_history, load_runs
from analysis.table import summarize


def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def with_ci(row, name: str) -> str:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    return fmt(row.get(name)) + ("" if low is None or math.isnan(low) else f" [{fmt(low)}, {fmt(high)}]")


def yes_no(flag) -> str:
    return "–" if flag is None or (isinstance(flag, float) and math.isnan(flag)) else "yes" if flag else "no"


def build(experiment: str, runs: Runs, summary: pd.DataFrame, figure_paths: list[Path],
          baseline: str, control: str, margin: float, metric: str) -> list[tuple]:
    """The report as blocks: ('h', text), ('p', text), ('table', header, rows), ('img', path)."""
    used = runs.finished
    blocks = [("h1", f"Analysis of experiment `{experiment}`"),
              ("p", f"{len(used)} finished runs of {used.setup.nunique()} setups on seeds "
                    f"{' '.join(map(str, sorted(used.seed.unique())))}; metric `{metric}` in % on "
                    f"the evaluation subset; baseline `{baseline}`, control `{control}`. Paired "
                    f"by seed; 95% CIs are percentile bootstraps over seeds (seeded: a rerun "
                    f"gives the same numbers)."),
              ("h2", "Runs set aside")]
    aside = [f"Duplicate (an older FINISHED run of the same config and seed; the newest is kept): "
             f"`{r.run_name}` ({r.run_id})" for r in runs.duplicates.itertuples()]
    aside += [f"{r.status}, not averaged in: `{r.run_name}` ({r.run_id})"
              + (f": {r.error}" if isinstance(r.error, str) else "") for r in runs.not_finished.itertuples()]
    aside += [f"Seeds without a baseline run, left out of the pairing of `{r['setup']}`: "
              f"{r['unpaired_seeds']}" for r in records(summary) if r.get("unpaired_seeds")]
    blocks += [("list", aside or ["none"])]
    if summary.n.max() < 2:
        blocks.append(("p", "Only one seed per setup: the table has no confidence intervals, "
                            "p-values or equivalence tests, which need at least two paired seeds. "
                            "Run more seeds (seed='range(10)')."))

    blocks.append(("h2", "The paper's table: each setup against the baseline"))
    header = ["backbone", "setup", "n", "error mean ± sd", "error 95% CI", "mean |Δ| [95% CI]",
              "paper mean |Δ|", "mean Δ [95% CI]", "p Wilcoxon", "p paired t"]
    rows = [[r["backbone"], f"`{r['setup']}` ({r['role']})", r["n"],
             f"{fmt(r['mean_error'])} ± {fmt(r['sd_error'])}",
             f"[{fmt(r['mean_error_ci_low'])}, {fmt(r['mean_error_ci_high'])}]",
             with_ci(r, "mean_abs_delta"), fmt(r["paper_mean_abs_delta"]), with_ci(r, "mean_delta"),
             fmt(r.get("p_wilcoxon"), 3), fmt(r.get("p_ttest"), 3)] for r in records(summary)]
    blocks.append(("table", header, rows))
    blocks.append(("p", "Δ = error(setup) − error(baseline) on the same seed, in percentage points; "
                        "the paper's metric is the mean of |Δ| over trials."))

    blocks.append(("h2", "The noise floor"))
    controls = summary[summary.role == "control"]
    if controls.empty:
        blocks.append(("p", f"No runs of the control `{control}` here, so no noise floor: the "
                            f"distinguishability tests below need it."))
    for r in records(controls):
        blocks.append(("p", f"Control `{r['setup']}` ({r['backbone']}): mean |Δ| = "
                            f"{with_ci(r, 'mean_abs_delta')} points over {int(r['n_paired'])} seeds: the "
                            f"difference two runs of the same function show by chance alone."))
    tested = summary[summary.role == "setup"]
    if "p_vs_control" in summary and not controls.empty:
        header = ["setup", "|Δ| − |Δ control| [95% CI]", "p signed-rank", "distinguishable",
                  f"p TOST (±{margin})", "equivalent", "seeds needed"]
        rows = [[f"`{r['setup']}`", with_ci(r, "mean_abs_delta_minus_control"),
                 fmt(r.get("p_vs_control"), 3), yes_no(r.get("distinguishable_from_noise")),
                 fmt(r.get("p_tost"), 3), yes_no(r.get("equivalent_within_margin")),
                 fmt(r.get("seeds_needed"), 0)] for r in records(tested)]
        blocks.append(("table", header, rows))
        plain = tested[tested.get("distinguishable_from_noise", pd.Series(dtype=object)).eq(False)]
        loud = tested[tested.get("distinguishable_from_noise", pd.Series(dtype=object)).eq(True)]
        blocks.append(("list", [
            f"Indistinguishable from noise at this n (p ≥ 0.05): "
            f"{', '.join(f'`{s}`' for s in plain.setup) or 'none'}.",
            f"Distinguishable from noise: {', '.join(f'`{s}`' for s in loud.setup) or 'none'}.",
            f"Equivalent to the baseline within ±{margin} points (TOST, alpha 0.05): "
            f"{', '.join(f'`{s}`' for s in tested[tested.equivalent_within_margin.eq(True)].setup) or 'none'}.",
            "Seeds needed: how many seeds a paired t-test would need to resolve the observed "
            "|Δ| − |Δ control| with power 0.8 at alpha 0.05, taking the observed mean and sd as "
            "true; never fewer than 6, below which the signed-rank test cannot reach p < 0.05.",
        ]))
    blocks.append(("h2", "Figures"))
    blocks += [("img", path) for path in figure_paths]
    return blocks


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts, with missing values (NaN, NA) as None."""
    return [{k: (None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v)
             for k, v in row.items()} for row in frame.to_dict("records")]


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *body in blocks:
        if kind in ("h1", "h2"):
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
            out.append(f"![{body[0].stem}]({body[0].name})")
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
        if kind in ("h1", "h2"):
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
            out.append(f"<p><img alt='{body[0].stem}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(out) + "\n</body></html>\n"


def analyze(experiment: str, tracking_uri: str = "sqlite:///mlflow.db", out: str | None = None,
            baseline: str = "separable", control: str = "equivalent", margin: float = 0.25,
            metric: str = "test/error", log_to_mlflow: bool = True) -> Path:
    """Write the report of ``experiment`` into ``out`` (default analysis/reports/<experiment>)."""
    out = Path(out or Path("analysis") / "reports" / experiment)
    frame = load_runs(experiment, tracking_uri)
    if frame.empty:
        raise AnalysisError(f"experiment '{experiment}' has no training runs yet")
    runs = clean(frame, metric)
    if runs.finished.empty:
        raise AnalysisError(f"experiment '{experiment}' has no FINISHED run with {metric}; "
                            f"statuses: {frame.status.value_counts().to_dict()}")
    summary = summarize(runs.finished, baseline, control, margin, metric)
    out.mkdir(parents=True, exist_ok=True)
    used = runs.finished
    paths = [figures.abs_delta(summary, out), figures.paired_dots(used, summary, metric, out),
             figures.error_vs_size(used, metric, out)]
    history = load_history(tracking_uri, used.run_id)
    if not history.empty:
        paths.insert(2, figures.learning_curves(history, used, out))
    blocks = build(experiment, runs, summary, paths, baseline, control, margin, metric)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "report.md").write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, f"hybrid-exp analysis: {experiment}"))
    if log_to_mlflow:
        client, experiment_id = client_and_experiment(experiment, tracking_uri)
        run = client.create_run(experiment_id, run_name="analysis", tags={KIND_TAG: "analysis"})
        for key, value in {"baseline": baseline, "control": control, "margin": margin,
                           "metric": metric}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_artifacts(run.info.run_id, str(out))
        client.set_terminated(run.info.run_id, "FINISHED")
    return out
