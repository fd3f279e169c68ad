"""python -m analysis --experiment NAME [--tracking-uri URI] [--out DIR] [--baseline separable]
[--control equivalent] [--margin 0.25] [--sesoi POINTS] [--metric test/error]"""
import argparse
import os
import sys



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="The paper's table, paired statistics, noise floor, figures and report "
                    "of one MLflow experiment of hybrid-exp runs.")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
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
    args = parser.parse_args(argv)
    from analysis.report import analyze  # heavy (pandas, matplotlib, mlflow): after --help
    from analysis.runs import AnalysisError

    try:
        out = analyze(args.experiment, args.tracking_uri, args.out, args.baseline, args.control,
                      args.margin, args.metric, sesoi=args.sesoi)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'report.md'}, {out / 'report.html'} and {out / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
