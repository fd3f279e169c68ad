"""analysis on a real MLflow store: synthetic runs with hand-computed numbers, then a real grid."""
import statistics
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

from analysis import AnalysisError, clean, load_runs
from analysis import stats
from analysis.report import analyze
from analysis.runs import label_setups
from tests.conftest import PARALLEL, TINY

BASE = [10.0, 11.0, 12.0, 13.0, 14.0]  # separable, seeds 0-4
INCEPTION = [11.0, 10.5, 13.0, 12.0, 15.0]  # deltas 1, -0.5, 1, -1, 1
EQUIVALENT = {0: 10.2, 1: 10.9, 2: 12.1, 4: 14.0}  # seed 3 missing; deltas 0.2, -0.1, 0.1, 0
HYBRID = [10.5, 11.5, 12.5, 13.0, 14.5]  # deltas 0.5, 0.5, 0.5, 0, 0.5 (plus an older duplicate)
RESNEXT = {1: 12.0, 2: 12.0, 3: 14.0, 4: 15.0}  # seed 0 FAILED; deltas 1, 0, 1, 1


def read_summary(out):
    return pd.read_csv(out / "summary.csv", dtype={"seeds": str, "unpaired_seeds": str}).set_index("setup")


def log_run(client, experiment_id, setup, seed, error, status="FINISHED", start=0, knobs=None,
            backbone="stacked", block=None):
    run = client.create_run(experiment_id, run_name=f"{setup}-seed{seed}", start_time=1_000 + start,
                            tags={"setup": setup, "model": setup, "block": block or setup,
                                  "backbone": backbone, "seed": str(seed),
                                  "config_hash": f"{setup}-{seed}-{knobs}"})
    run_id = run.info.run_id
    sizes = {"params": str(1000 * (1 + len(setup))), "mult_adds": str(50_000 * len(setup)),
             **(knobs or {})}
    for key, value in sizes.items():
        client.log_param(run_id, key, value)
    if error is not None:
        for epoch in range(3):  # a learning curve ending at the final error
            client.log_metric(run_id, "val/error", error + 10 * (2 - epoch), step=epoch)
        client.log_metric(run_id, "test/error", error, step=3)
    client.set_terminated(run_id, status, end_time=2_000 + start)
    return run_id


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("fig4", artifact_location=(tmp_path / "artifacts").as_uri())
    for seed in range(5):
        log_run(client, exp, "separable", seed, BASE[seed])
        log_run(client, exp, "inception", seed, INCEPTION[seed])
        log_run(client, exp, "hybrid", seed, HYBRID[seed], start=100)
    log_run(client, exp, "hybrid", 0, 99.0, start=0)  # an older run of the same config: dropped
    for seed, error in EQUIVALENT.items():
        log_run(client, exp, "equivalent", seed, error)
    for seed, error in RESNEXT.items():
        log_run(client, exp, "resnext", seed, error)
    failed = log_run(client, exp, "resnext", 0, 50.0, status="FAILED")
    client.set_tag(failed, "error", "Diverged: non-finite loss")
    return uri, tmp_path


def test_every_number_of_the_table(store):
    uri, tmp_path = store
    out = analyze("fig4", uri, str(tmp_path / "report"))
    table = read_summary(out)

    assert table.loc["separable", "role"] == "baseline" and table.loc["equivalent", "role"] == "control"
    assert table.n.to_dict() == {"equivalent": 4, "hybrid": 5, "inception": 5, "resnext": 4,
                                 "separable": 5}
    assert table.loc["inception", "mean_error"] == pytest.approx(61.5 / 5)
    assert table.loc["inception", "sd_error"] == pytest.approx(statistics.stdev(INCEPTION))
    # the paper's metric: mean |delta| paired by seed
    assert table.loc["inception", "mean_abs_delta"] == pytest.approx((1 + 0.5 + 1 + 1 + 1) / 5)
    assert table.loc["inception", "mean_delta"] == pytest.approx((1 - 0.5 + 1 - 1 + 1) / 5)
    assert table.loc["hybrid", "mean_abs_delta"] == pytest.approx(2.0 / 5)  # the newest seed-0 run
    assert table.loc["equivalent", "mean_abs_delta"] == pytest.approx(0.4 / 4)
    assert table.loc["equivalent", "n_paired"] == 4
    assert str(table.loc["equivalent", "unpaired_seeds"]) == "3"
    assert table.loc["resnext", "mean_abs_delta"] == pytest.approx(3 / 4)  # FAILED seed 0 left out
    assert str(table.loc["resnext", "unpaired_seeds"]) == "0"
    assert table.loc["inception", "paper_mean_abs_delta"] == 0.83
    assert table.loc["hybrid", "paper_mean_abs_delta"] == 0.12
    # noise floor: inception's |delta| minus the control's on seeds 0, 1, 2, 4
    excess = [1 - 0.2, 0.5 - 0.1, 1 - 0.1, 1 - 0.0]
    assert table.loc["inception", "mean_abs_delta_minus_control"] == pytest.approx(np.mean(excess))
    assert table.loc["inception", "p_vs_control"] == pytest.approx(2 / 16)  # exact: all 4 positive
    assert not table.loc["inception", "distinguishable_from_noise"]
    assert table.loc["inception", "seeds_needed"] == 6  # a large effect: the signed-rank minimum

    # p-values cross-checked against scipy
    inc, base = np.array(INCEPTION), np.array(BASE)
    assert table.loc["inception", "p_ttest"] == pytest.approx(scipy_stats.ttest_rel(inc, base).pvalue)
    assert table.loc["inception", "p_wilcoxon"] == pytest.approx(scipy_stats.wilcoxon(inc - base).pvalue)
    d = inc - base
    tost = max(scipy_stats.ttest_1samp(d, -0.25, alternative="greater").pvalue,
               scipy_stats.ttest_1samp(d, 0.25, alternative="less").pvalue)
    assert table.loc["inception", "p_tost"] == pytest.approx(tost)
    # bootstrap CIs: scipy's percentile bootstrap agrees up to resampling noise
    ours = (table.loc["inception", "mean_abs_delta_ci_low"], table.loc["inception", "mean_abs_delta_ci_high"])
    theirs = scipy_stats.bootstrap((np.abs(d),), np.mean, method="percentile", n_resamples=10_000,
                                   random_state=1).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.11)
    assert ours[0] <= 0.9 <= ours[1]


def test_report_lists_what_was_set_aside_and_embeds_the_figures(store):
    uri, tmp_path = store
    out = analyze("fig4", uri, str(tmp_path / "report"))
    report = (out / "report.md").read_text()
    assert "Duplicate" in report and "`hybrid-seed0`" in report
    assert "FAILED, not averaged in: `resnext-seed0`" in report and "Diverged" in report
    assert "pairing of `equivalent`: 3" in report and "pairing of `resnext`: 0" in report
    assert "Indistinguishable from noise at this n (p ≥ 0.05): `hybrid`, `inception`, `resnext`" in report
    html = (out / "report.html").read_text()
    for name in ("abs_delta", "paired_seeds", "learning_curves", "error_vs_size"):
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert svg.stat().st_size > 5000 and f"![{name}]({name}.png)" in report
        assert f"alt='{name}' src='data:image/png;base64," in html
    assert "<img" in html and "src='abs_delta.png'" not in html  # self-contained


def test_rerun_gives_identical_numbers_and_is_logged_to_mlflow(store):
    uri, tmp_path = store
    first = (analyze("fig4", uri, str(tmp_path / "a")) / "summary.csv").read_text()
    second = (analyze("fig4", uri, str(tmp_path / "b")) / "summary.csv").read_text()
    assert first == second
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fig4").experiment_id],
                              "tags.`hybrid_exp.kind` = 'analysis'")
    assert len(runs) == 2
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {
        "report.md", "report.html", "summary.csv", "abs_delta.png", "abs_delta.svg"}
    assert len(load_runs("fig4", uri)) == 25  # the analysis runs are not training runs


def test_statistics_helpers_against_scipy_and_by_hand():
    d = np.array([0.4, -0.1, 0.3, 0.5, 0.2, 0.6, -0.2, 0.3])
    assert stats.paired_t(d) == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    assert stats.wilcoxon([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)  # exact, by hand
    assert stats.bootstrap_ci(d) == stats.bootstrap_ci(d)  # seeded
    assert all(np.isnan(stats.bootstrap_ci([1.0])))
    n = stats.seeds_needed(d)
    power = lambda k: (scipy_stats.nct.sf(scipy_stats.t.ppf(0.975, k - 1), k - 1,
                                          d.mean() / d.std(ddof=1) * np.sqrt(k))
                       + scipy_stats.nct.cdf(-scipy_stats.t.ppf(0.975, k - 1), k - 1,
                                             d.mean() / d.std(ddof=1) * np.sqrt(k)))
    assert power(n) >= 0.8 > power(n - 1)
    assert stats.seeds_needed([0.1, -0.1]) == np.inf
    assert stats.min_signed_rank_n(0.05) == 6 and 2 / 2**6 < 0.05 <= 2 / 2**5


def test_one_seed_gives_the_table_without_cis_and_says_why(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("single", artifact_location=(tmp_path / "a").as_uri())
    log_run(client, exp, "separable", 0, 10.0)
    log_run(client, exp, "inception", 0, 11.0)
    out = analyze("single", uri, str(tmp_path / "report"), log_to_mlflow=False)
    table = read_summary(out)
    assert table.loc["inception", "mean_abs_delta"] == 1.0
    assert np.isnan(table.loc["inception", "mean_abs_delta_ci_low"])
    assert np.isnan(table.loc["inception", "p_ttest"])
    assert "Only one seed per setup: the table has no confidence intervals" in (out / "report.md").read_text()


def test_fig5_and_fig6_pair_within_each_backbone_by_unit(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("fig56", artifact_location=(tmp_path / "a").as_uri())
    for seed, (with_sep, without) in enumerate([(6.0, 7.5), (6.5, 7.7)]):
        log_run(client, exp, "fractalnet+separable", seed, with_sep, backbone="fractalnet", block="separable")
        log_run(client, exp, "fractalnet+standard", seed, without, backbone="fractalnet", block="standard")
        log_run(client, exp, "darknet+separable", seed, with_sep + 1, backbone="darknet", block="separable")
        log_run(client, exp, "darknet+standard", seed, without + 5, backbone="darknet", block="standard")
    table = read_summary(analyze("fig56", uri, str(tmp_path / "r"), log_to_mlflow=False))
    assert table.loc["fractalnet+separable", "role"] == "baseline"
    assert table.loc["darknet+separable", "role"] == "baseline"
    assert table.loc["fractalnet+standard", "mean_delta"] == pytest.approx((1.5 + 1.2) / 2)
    assert table.loc["darknet+standard", "mean_delta"] == pytest.approx((5.5 + 5.2) / 2)
    assert table.loc["darknet+standard", "mean_error_ci_low"] <= 12.6 <= table.loc["darknet+standard", "mean_error_ci_high"]


def test_bad_input_says_what_exists(store):
    uri, tmp_path = store
    with pytest.raises(AnalysisError, match="no experiment 'nope'.*existing: .*fig4"):
        analyze("nope", uri)
    with pytest.raises(AnalysisError, match="no runs of the baseline 'densenet'.*setups present: "
                                            "equivalent, hybrid, inception, resnext, separable"):
        analyze("fig4", uri, str(tmp_path / "r"), baseline="densenet")
    run = subprocess.run([sys.executable, "-m", "analysis", "--experiment", "nope",
                          "--tracking-uri", uri], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: no experiment 'nope'")


def test_setups_whose_knobs_vary_are_told_apart():
    frame = pd.DataFrame({"setup": ["grouped"] * 3 + ["separable"], "seed": [0, 1, 0, 0],
                          "config": [{"model.block.groups": "1", "seed": "0"},
                                     {"model.block.groups": "1", "seed": "1"},
                                     {"model.block.groups": "4", "seed": "0"}, {"seed": "0"}]})
    assert list(label_setups(frame).setup) == ["grouped[groups=1]", "grouped[groups=1]",
                                               "grouped[groups=4]", "separable"]


def test_command_on_a_real_grid(tmp_path, cifar10_root):
    grid = subprocess.run(
        [sys.executable, "-m", "hybrid_exp", "-m", "model=separable,equivalent,inception",
         "seed=0,1", f"data.root={cifar10_root}", "data.train_subset=1000", "data.val_size=200",
         "data.eval_size=500", *TINY, "trainer.max_epochs=1", PARALLEL],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert grid.returncode == 0, grid.stderr[-3000:]
    run = subprocess.run([sys.executable, "-m", "analysis", "--experiment", "hybrid-exp"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "analysis" / "reports" / "hybrid-exp"
    table = read_summary(out)
    assert set(table.index) == {"separable", "equivalent", "inception"}
    assert (table.n == 2).all() and table.loc["inception", "n_paired"] == 2
    assert table.loc["equivalent", "role"] == "control"
    assert "Control `equivalent` (stacked): mean |Δ| =" in (out / "report.md").read_text()
    assert len(clean(load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")).finished) == 6
