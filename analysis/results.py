"""The published results, indexed from the bundles themselves (``python -m analysis --index
results``): ``results/README.md``, a line per bundle, and the project README's *Results*
section, each bundle's headline table with its protocol, machine and cost beside it. Nothing
here is typed by hand: a test checks the README against the bundles."""
import json
from pathlib import Path

import pandas as pd

from analysis.bundle import PROVENANCE
from analysis.report import protocol_heading, protocol_words

README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- results: python -m analysis --index results -->"
END = "<!-- end of results -->"


def bundles(results: Path) -> list[Path]:
    return sorted(p.parent for p in Path(results).glob(f"*/{PROVENANCE}"))


def cost(meta: dict) -> str:
    return f"{meta['device_hours']:.2f} device-hours ({meta['wall_hours']:.2f} h wall)"


def fmt(x, digits: int = 2) -> str:
    return "–" if pd.isna(x) else f"{x:.{digits}f}"


def ci(row, name: str) -> str:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    return fmt(row.get(name)) + ("" if pd.isna(low) else f" [{fmt(low)}, {fmt(high)}]")


def headline(bundle: Path) -> str:
    """One bundle's section: what, where, how much, and its table per protocol."""
    meta = json.loads((bundle / PROVENANCE).read_text())
    summary = pd.read_csv(bundle / "summary.csv")
    cka = pd.read_csv(bundle / "cka.csv") if (bundle / "cka.csv").exists() else pd.DataFrame()
    machines = "; ".join(meta["training"]["machines"]) or "not recorded"
    lines = [f"### `{bundle.name}`", "",
             f"Experiment `{meta['experiment']}`, {meta['runs']['counted']} runs on {machines}; "
             f"{cost(meta)}, trained {meta['first_start'][:10]}. Regenerate it: "
             f"`python -m analysis --runs results/{bundle.name}`; the report: "
             f"[results/{bundle.name}/report.md](results/{bundle.name}/report.md)."]
    for protocol, rows in summary.groupby("protocol", sort=False):
        others = list(summary.protocol.unique())
        lines += ["", f"{protocol_heading(protocol, others, rows)}.", "",
                  "| setup | seeds | not finished | params × | mult-adds × | test error % (mean ± sd) "
                  "| mean Δ [95% CI] | mean Δ, whole test set [95% CI] | mean \\|Δ\\| | paper mean \\|Δ\\| |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows.to_dict("records"):
            role = "" if r["role"] == "setup" else f" ({r['role']})"
            lines.append(f"| `{r['setup']}`{role} | {r['n']} | {fmt(r.get('not_finished'), 0)} | "
                         f"{fmt(r.get('params_ratio'))} | {fmt(r.get('mult_adds_ratio'))} | "
                         f"{fmt(r['mean_error'])} ± {fmt(r['sd_error'])} | "
                         f"{ci(r, 'mean_delta') if 'mean_delta' in r else '–'} | "
                         f"{ci(r, 'full_mean_delta') if 'full_mean_delta' in r else '–'} | "
                         f"{fmt(r.get('mean_abs_delta'))} | {fmt(r['paper_mean_abs_delta'])} |")
        lines += cka_lines(cka[cka.protocol_hash == rows.protocol_hash.iloc[0]] if not cka.empty else cka)
    return "\n".join(lines)


def cka_lines(cka: pd.DataFrame) -> list[str]:
    """The bundle's linear CKA with the baseline (``cka.csv``), a column per point, beside two
    baseline runs; nothing where it has none."""
    if cka.empty:
        return []
    points = list(dict.fromkeys(cka.point))
    reference = cka.drop_duplicates("point").set_index("point")
    lines = ["", "Linear CKA with the baseline's representations (mean [95% CI] over seeds; "
                 "`python -m hybrid_exp.similarity`):", "",
             "| setup | " + " | ".join(f"`{p}`" for p in points) + " |", "| --- |" + " ---: |" * len(points),
             "| two baseline runs (reference: mean [lowest, highest]) | " + " | ".join(
                 f"{fmt(reference.loc[p, 'reference'])} [{fmt(reference.loc[p, 'reference_min'])}, "
                 f"{fmt(reference.loc[p, 'reference_max'])}]" for p in points) + " |"]
    for setup, rows in cka.groupby("setup", sort=True):
        rows = rows.set_index("point")
        lines.append(f"| `{setup}` | " + " | ".join(ci(rows.loc[p], "cka") if p in rows.index else "–"
                                                     for p in points) + " |")
    return lines


def readme_section(results: Path) -> str:
    body = "\n\n".join(headline(b) for b in bundles(results)) or "No results published yet."
    return f"{START}\n{body}\n{END}"


def index(results: Path) -> str:
    """results/README.md: a line per bundle."""
    rows = ["# Results bundles", "",
            "Each folder is one published result, written by `python -m analysis --experiment NAME "
            "--publish results/<name>` and regenerated from itself alone by `python -m analysis "
            "--runs results/<name>`. This page and the README's *Results* section are written by "
            "`python -m analysis --index results`.", "",
            "| bundle | experiment | protocol | machine | cost |", "| --- | --- | --- | --- | --- |"]
    for bundle in bundles(results):
        meta = json.loads((bundle / PROVENANCE).read_text())
        protocols = pd.read_csv(bundle / "summary.csv").protocol.unique()
        rows.append(f"| [`{bundle.name}`]({bundle.name}/report.md) | `{meta['experiment']}`, "
                    f"{meta['runs']['counted']} runs | {'; '.join(map(protocol_words, protocols))} | "
                    f"{'; '.join(meta['training']['machines']) or 'not recorded'} | {cost(meta)} |")
    return "\n".join(rows) + "\n"


def write_index(results: str | Path, readme: Path = README) -> list[Path]:
    results = Path(results)
    (results / "README.md").write_text(index(results))
    text = readme.read_text()
    if START not in text:
        raise ValueError(f"{readme} has no {START} marker for the Results section")
    head, rest = text.split(START, 1)
    readme.write_text(head + readme_section(results) + rest.split(END, 1)[1])
    return [results / "README.md", readme]
