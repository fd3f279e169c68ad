"""python -m analysis --experiment NAME [--tracking-uri URI] [--out DIR] [--baseline separable]
[--control equivalent] [--margin 0.25] [--sesoi POINTS] [--metric test/error] [--publish DIR]
python -m analysis --runs BUNDLE [BUNDLE ...] [--out DIR]
python -m analysis --index results"""
import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="The paper's table, paired statistics, noise floor, figures and report "
                    "of one MLflow experiment of hybrid-exp runs.")
    parser.add_argument("--experiment", help="MLflow experiment name")
    parser.add_argument("--tracking-uri",
                        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///mlflow.db: the training default)")
    parser.add_argument("--out", help="output folder (default: analysis/reports/<experiment>)")
    parser.add_argument("--baseline", default="separable",
                        help="setup (or unit, per backbone) the others are paired with")
    parser.add_argument("--control", default="equivalent",
                        help="setup computing the baseline's function: the noise floor")
    parser.add_argument("--margin", type=float, default=0.25,
                        help="equivalence margin of the TOST, in percentage points; fix it before "
                             "looking at the data (the report states it)")
    parser.add_argument("--sesoi", type=float,
                        help="smallest effect of interest in points, for 'seeds needed' "
                             "(default: the margin)")
    parser.add_argument("--metric", default="test/error", help="metric to compare (in %%)")
    parser.add_argument("--publish", metavar="DIR",
                        help="also write a results bundle there (e.g. results/fig4-10ep-h100): the "
                             "report, every run, the predictions, provenance; small, self-contained. "
                             "With --runs BUNDLE: that bundle with its report written anew")
    parser.add_argument("--runs", nargs="+", metavar="BUNDLE",
                        help="regenerate the report from results bundles alone (no tracking store)")
    parser.add_argument("--index", metavar="RESULTS",
                        help="rewrite RESULTS/README.md (a line per bundle) and the README's "
                             "Results section (each bundle's headline table) from the bundles")
    args = parser.parse_args(argv)
    if args.runs and args.publish and len(args.runs) != 1:
        parser.error("--runs BUNDLE --publish DIR republishes one bundle: give one")
    if sum(map(bool, (args.experiment, args.runs, args.index))) != 1:
        parser.error("give one of --experiment NAME (a tracking store's experiment), --runs "
                     "BUNDLE (results bundles) or --index RESULTS (the results folder)")
    from hybrid_exp import process
    from hybrid_exp.errors import reported
    from hybrid_exp.redact import redact

    process.setup()

    # the analysis modules (pandas, matplotlib, mlflow) load inside: after --help; its errors as
    # argparse says its usage errors
    with reported(lead="error: ", status=2):
        if args.index:
            from analysis.results import write_index

            for path in write_index(args.index):
                print(f"wrote {path}")
            return 0
        if args.publish:  # a folder it may not write is refused before the report is written
            from analysis.bundle import writable

            writable(Path(args.publish))
        command = redact("python -m analysis " + " ".join(argv if argv is not None else sys.argv[1:]))
        if args.runs:
            from analysis.bundle import regenerate, republish

            out = regenerate(args.runs, args.out or Path("analysis") / "reports" / Path(args.runs[0]).name)
            if args.publish:
                print(f"published {republish(args.runs[0], args.publish, command)}")
        else:
            from analysis.report import analyze

            out = analyze(args.experiment, args.tracking_uri, args.out, args.baseline, args.control,
                          args.margin, args.metric, log_to_mlflow=not args.publish, sesoi=args.sesoi)
            if args.publish:  # the analysis run in the store carries the bundle too
                from analysis.bundle import publish
                from analysis.report import clean_or_explain, log_analysis
                from analysis.runs import load_runs

                bundle = publish(args.experiment, args.tracking_uri, args.publish, command,
                                 args.baseline, args.control, args.margin, args.metric, args.sesoi)
                used = clean_or_explain(args.experiment, load_runs(args.experiment, args.tracking_uri),
                                        args.metric).finished.run_id
                log_analysis(args.experiment, args.tracking_uri, out, list(used), {
                    "baseline": args.baseline, "control": args.control, "margin": args.margin,
                    "sesoi": args.margin if args.sesoi is None else args.sesoi, "metric": args.metric},
                    Path(bundle))
                print(f"published {bundle}")
    print(f"wrote {out / 'report.md'}, {out / 'report.html'} and {out / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
