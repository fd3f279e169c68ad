"""analysis on a real MLflow store: synthetic runs with hand-computed numbers, then a real grid."""
import statistics
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

from analysis import AnalysisError, clean, load_runs, stats
from analysis.report import analyze, duplicate_lines, network_words
from analysis.runs import label_setups
from analysis.table import agreement, trend
from tests.helpers import BASE, PAPER, PAPER_SIX, log_run, new_experiment, small_real_grid

INCEPTION = [11.0, 10.5, 13.0, 12.0, 15.0]  # deltas 1, -0.5, 1, -1, 1
EQUIVALENT = {0: 10.2, 1: 10.9, 2: 12.1, 4: 14.0}  # seed 3 missing; deltas 0.2, -0.1, 0.1, 0
HYBRID = [10.5, 11.5, 12.5, 13.0, 14.5]  # deltas 0.5, 0.5, 0.5, 0, 0.5 (plus an older duplicate)
RESNEXT = {1: 12.0, 2: 12.0, 3: 14.0, 4: 15.0}  # seed 0 FAILED; deltas 1, 0, 1, 1
TRYOUT = {**PAPER, "trainer.max_epochs": "2"}


def read_summary(out):
    frame = pd.read_csv(out / "summary.csv", dtype={"seeds": str, "setup_only_seeds": str,
                                                    "baseline_only_seeds": str})
    return frame.set_index("setup")


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
    table = read_summary(analyze("fig4", uri, str(tmp_path / "report"), margin=1.0, sesoi=0.5))

    assert table.loc["separable", "role"] == "baseline" and table.loc["equivalent", "role"] == "control"
    assert table.n.to_dict() == {"equivalent": 4, "hybrid": 5, "inception": 5, "resnext": 4,
                                 "separable": 5}
    assert table.loc["inception", "mean_error"] == pytest.approx(61.5 / 5)
    assert table.loc["inception", "sd_error"] == pytest.approx(statistics.stdev(INCEPTION))
    inc, base = np.array(INCEPTION), np.array(BASE)
    d = inc - base
    # the primary result: the signed mean delta, its t interval, paired t, Pratt signed-rank
    assert table.loc["inception", "mean_delta"] == pytest.approx(d.mean())
    low, high = scipy_stats.t.interval(0.95, 4, d.mean(), scipy_stats.sem(d))
    assert (table.loc["inception", "mean_delta_ci_low"], table.loc["inception", "mean_delta_ci_high"]) \
        == pytest.approx((low, high))
    assert table.loc["inception", "p_ttest"] == pytest.approx(scipy_stats.ttest_rel(inc, base).pvalue)
    assert table.loc["inception", "p_signed_rank"] == pytest.approx(
        scipy_stats.wilcoxon(d, zero_method="pratt").pvalue)
    tost = max(scipy_stats.ttest_1samp(d, -1.0, alternative="greater").pvalue,
               scipy_stats.ttest_1samp(d, 1.0, alternative="less").pvalue)
    assert table.loc["inception", "p_tost"] == pytest.approx(tost)
    # Holm over the three compared setups (hybrid, inception, resnext), by hand
    raw = table.loc[["hybrid", "inception", "resnext"], "p_ttest"].to_numpy()
    order = np.argsort(raw)
    holm = np.maximum.accumulate(np.minimum(1, raw[order] * np.array([3, 2, 1])))
    assert table.loc[["hybrid", "inception", "resnext"], "p_ttest_holm"].to_numpy()[order] == pytest.approx(holm)
    # the paper's metric, a description
    assert table.loc["inception", "mean_abs_delta"] == pytest.approx((1 + 0.5 + 1 + 1 + 1) / 5)
    assert table.loc["hybrid", "mean_abs_delta"] == pytest.approx(2.0 / 5)  # the newest seed-0 run
    assert table.loc["equivalent", "mean_abs_delta"] == pytest.approx(0.4 / 4)
    assert "mean_abs_delta_ci_low" not in table  # a description: no interval at any n
    assert np.isnan(table.loc["equivalent", "abs_mean_delta_ci_low"])  # 4 seeds: no interval
    assert str(table.loc["equivalent", "baseline_only_seeds"]) == "3"
    assert table.loc["resnext", "mean_abs_delta"] == pytest.approx(3 / 4)  # FAILED seed 0 left out
    assert table.loc["inception", "paper_mean_abs_delta"] == 0.83  # the paper's protocol here
    # the noise floor: one-sided, inception's |delta| minus the control's on seeds 0, 1, 2, 4
    excess = [1 - 0.2, 0.5 - 0.1, 1 - 0.1, 1 - 0.0]
    assert table.loc["inception", "mean_abs_delta_minus_control"] == pytest.approx(np.mean(excess))
    assert table.loc["inception", "p_vs_control"] == pytest.approx(1 / 16)  # exact: all 4 positive
    # seeds needed: from the stated effect (0.5) and the control's sd of delta, not the observed one
    sd = statistics.stdev([0.2, -0.1, 0.1, 0.0])
    n = table.loc["inception", "seeds_needed"]
    power = lambda k: (scipy_stats.nct.sf(scipy_stats.t.ppf(0.975, k - 1), k - 1, 0.5 / sd * np.sqrt(k))
                       + scipy_stats.nct.cdf(-scipy_stats.t.ppf(0.975, k - 1), k - 1, 0.5 / sd * np.sqrt(k)))
    assert n == 6 or power(n) >= 0.8 > power(n - 1)
    assert table.loc["hybrid", "seeds_needed"] == n  # the same for every setup: it is a design number


def test_tied_duplicates_are_resolved_by_one_total_order_whatever_the_stores_order(tmp_path):
    """Two FINISHED runs of one config and seed that started and ended together: the larger run
    id is kept, however the store returns them; the report names both values."""
    uri, client, exp = new_experiment(tmp_path, "fig4")
    ids = [log_run(client, exp, "separable", 0, error, start=7) for error in (10.0, 11.0)]
    frame = load_runs("fig4", uri)
    kept = {clean(order).finished.run_id.item() for order in (frame, frame.iloc[::-1])}
    assert kept == {max(ids)}
    runs = clean(frame)
    [line] = duplicate_lines(runs, "test/error")
    assert line.startswith(f"Duplicate of `separable-seed0` ({max(ids)}), same config and seed, the "
                           f"one that ended last is kept (ties: the later start, then the larger run id)")
    errors = dict(zip(ids, (10.0, 11.0)))
    assert line.endswith(f"({min(ids)}); test/error {errors[min(ids)]:.2f} here, {errors[max(ids)]:.2f} in the kept run")


def test_the_tables_say_what_survived_which_code_ran_how_big_and_how_protocols_differ(tmp_path):
    """A diverged run, two commits (one dirty), setups of other size, and two protocols that
    differ only in data.eval_seed: each said where a reader looks."""
    uri, client, exp = new_experiment(tmp_path, "walk")
    for eval_seed in ("0", "1"):
        protocol = {**PAPER, "data.eval_seed": eval_seed}
        for seed in range(5):
            for setup, error in (("separable", BASE[seed]), ("inception", INCEPTION[seed])):
                run = log_run(client, exp, setup, seed, error, protocol=protocol)
                client.set_tag(run, "git_sha", "a" * 40 if setup == "separable" else "b" * 40 + "+dirty")
                client.set_tag(run, "execution", "eager" if eval_seed == "0" or seed < 3 else "compiled")
                if eval_seed == "1":  # the modules that build and train them edited between setups
                    client.set_tag(run, "code_fingerprint", "c0de" * 4 if setup == "separable" else "f00d" * 4)
        log_run(client, exp, "inception", 5, None, status="FAILED", protocol=protocol)
    out = analyze("walk", uri, str(tmp_path / "r"), log_to_mlflow=False)
    report, table = (out / "report.md").read_text(), pd.read_csv(out / "summary.csv")
    assert "## Protocol: 190 epochs, all training images, 6,000 test images, CIFAR10, ? on ?, data.eval_seed=0; training step eager\n" in report
    assert ", data.eval_seed=1; training step compiled or eager\n" in report  # the headings alone tell the two protocols apart
    assert report.count("ran their training step 2 ways (compiled, eager): the same function, not bit-identical") == 1
    assert report.count("come from 2 code states (aaaaaaa, bbbbbbb+dirty; '+dirty'") == 2
    assert report.count("were built and trained by 2 versions of the modules that do it (code fingerprints "
                        "c0dec0de, f00df00d; each run's code_files tag names the modules)") == 1
    assert report.count("left out of every number below, which describes the survivors: `inception` 1 of 6.") == 2
    inception = table[table.setup == "inception"].iloc[0]
    assert inception.not_finished == 1 and inception.n == 5 and inception.n_paired == 5
    assert inception.params_ratio == pytest.approx((1000 * 10) / (1000 * 10))  # log_run: 1000 x (1 + len)
    assert inception.mult_adds_ratio == pytest.approx(len("inception") / len("separable"))
    assert "| stacked | `inception` (setup) | 5 | 1 | 5 | 1.00 | 1.00 |" in report


def test_the_network_size_is_said_against_the_default_in_words():
    group = lambda width, depth, backbone="stacked": pd.DataFrame(
        {"width": [width], "depth": [depth], "backbone": [backbone]})
    assert network_words(group("32", "1")) == (
        "; network width 32, depth 1: half the default width and depth (64 and 2, what "
        "`experiment=fig4` trains; the paper does not give its network's size)")
    assert ": the default size (64 and 2" in network_words(group("64", "2"))
    assert ": 0.5x the default width and 1x its depth (" in network_words(group("32", "2"))
    assert network_words(group("32 64", "1")) == "; network width 32 or 64, depth 1"  # no one relation
    assert network_words(group("", "", "fractalnet")) == ""


def test_the_whole_test_set_is_analysed_beside_the_subset_on_the_runs_that_scored_it(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "whole")
    full = {"separable": [9.0, 9.5, 10.0, 10.5, 11.0], "inception": [9.5, 9.8, 10.6, 10.9, 11.5],
            "equivalent": [9.1, 9.4, 10.0, 10.6, 11.0]}
    for seed in range(5):
        for setup, errors in full.items():
            log_run(client, exp, setup, seed, BASE[seed] + (setup != "separable") * 0.3 * (-1) ** seed,
                    full=errors[seed])
        log_run(client, exp, "hybrid", seed, HYBRID[seed])  # an older run: no whole-set metric
    out = analyze("whole", uri, str(tmp_path / "report"), log_to_mlflow=False)
    table = read_summary(out)
    d = np.array(full["inception"]) - np.array(full["separable"])
    assert table.loc["inception", "full_mean_delta"] == pytest.approx(d.mean())
    assert table.loc["inception", "full_sd_delta"] == pytest.approx(d.std(ddof=1))
    low, high = scipy_stats.t.interval(0.95, 4, d.mean(), scipy_stats.sem(d))
    assert (table.loc["inception", "full_mean_delta_ci_low"], table.loc["inception", "full_mean_delta_ci_high"]) \
        == pytest.approx((low, high))
    # one compared setup scored the whole set: Holm over one test is the test itself
    assert table.loc["inception", "full_p_ttest_holm"] == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    assert table.loc["inception", "mean_delta"] == pytest.approx(0.3 * (1 - 1 + 1 - 1 + 1) / 5)  # the subset's
    assert np.isnan(table.loc["hybrid", "full_mean_delta"]) and table.loc["hybrid", "mean_delta"] > 0
    report = (out / "report.md").read_text()
    section = report.split("### The same on the whole test set")[1].split("###")[0]
    assert "`inception` (setup)" in section and "`hybrid`" not in section
    control = np.array(full["equivalent"]) - np.array(full["separable"])
    ratios = sorted([d.std(ddof=1) / 0.3 / np.sqrt(1.2), control.std(ddof=1) / 0.3 / np.sqrt(1.2)])
    assert f"smaller on the whole set for 2 of 2 setups (whole set over subset: {ratios[0]:.2f} to {ratios[1]:.2f})" in section
    assert "only the subset's table above is ever set beside the paper's values" in section


def test_report_lists_what_was_set_aside_and_embeds_the_figures_with_captions(store):
    uri, tmp_path = store
    out = analyze("fig4", uri, str(tmp_path / "report"))
    report = (out / "report.md").read_text()
    assert "Duplicate of `hybrid-seed0`" in report and f"; test/error 99.00 here, {HYBRID[0]:.2f} in the kept run" in report
    assert "FAILED, not averaged in: `resnext-seed0`" in report and "Diverged" in report
    assert "Baseline seeds with no `equivalent` run, left out of its pairing: 3" in report
    assert "Baseline seeds with no `resnext` run, left out of its pairing: 0" in report
    assert "over 4 seeds, sd of its Δ 0.13" in report  # the control's run-to-run noise
    assert "equivalence ±0.25 points (TOST)" in report and "trained under: `data._target_=" in report
    assert "## Protocol: 190 epochs, all training images, 6,000 test images, CIFAR10" in report
    sd = statistics.stdev([0.2, -0.1, 0.1, 0.0])  # the control's deltas: the powers come from them
    # Holm over 3 setups: the t-test's power lies between levels 0.05/3 and 0.05; over 4 seeds the
    # one-sided signed-rank p is at least 1/16 > 0.05: no outcome is "farther", so power 0
    t_low, t_high = stats.power_paired_t(0.25, sd, 4, 0.05 / 3), stats.power_paired_t(0.25, sd, 4)
    assert stats.power_vs_control(0.25, sd, 4) == 0.0
    assert (f"at 4 seeds and Holm over 3 setups, the signed-rank test on |Δ| − |Δ control| has 0% "
            f"power against a 0.25-point shift (simulated), where the paired t-test on Δ above has "
            f"{100 * t_low:.0f}%-{100 * t_high:.0f}%") in report and "The paper's ranking" in report
    # resnext shares 3 seeds with the control: none of the three reads "no"
    assert report.count("| cannot be shown at n = 4 |") == 2 and "| cannot be shown at n = 3 |" in report
    html = (out / "report.html").read_text()
    for name in ("abs_delta", "paired_seeds", "learning_curves", "error_vs_size"):
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert svg.stat().st_size > 5000 and f"![{name}]({name}.png)" in report
        assert f"alt='{name}' src='data:image/png;base64," in html
    assert report.count("\n*") >= 4 and html.count("<figcaption>") >= 4  # every figure captioned
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
    used = client.download_artifacts(runs[0].info.run_id, "used_runs.txt", str(tmp_path))
    kept = clean(load_runs("fig4", uri)).finished
    assert sorted(open(used).read().split()) == sorted(kept.run_id)  # what it summarises, by id
    assert f"over {len(kept)} finished training runs" in runs[0].data.tags["mlflow.note.content"]
    assert "config_hash" not in runs[0].data.tags  # so no grid ever skips on it
    third = (analyze("fig4", uri, str(tmp_path / "c")) / "summary.csv").read_text()
    assert third == first  # two analysis runs in the store change nothing a third reads


def test_t_intervals_cover_95_percent_of_normal_data_at_10_seeds_and_none_below_5():
    rng = np.random.default_rng(0)
    samples = rng.normal(0.3, 0.5, size=(4000, 10))
    covered = [low <= 0.3 <= high for low, high in map(stats.t_interval, samples)]
    assert np.mean(covered) >= 0.93
    assert all(np.isnan(stats.t_interval([1.0, 2.0, 3.0, 4.0])))


def seed_errors(rng, p_image, n, shift=0.0, regime="images"):
    """Test errors (%) of ``n`` seeds' runs on one fixed evaluation subset whose images are
    misclassified with probabilities ``p_image`` + ``shift`` points: each image independently
    (``images``), or with a whole-run offset of sd 1 point on top (``runs``: runs differ)."""
    offset = rng.normal(0, 1.0, (n, 1)) if regime == "runs" else 0.0
    return (rng.random((n, len(p_image))) < p_image + (shift + offset) / 100).mean(1) * 100


@pytest.mark.parametrize("regime", ["images", "runs"])
def test_every_interval_the_report_prints_covers_95_percent_in_both_variance_regimes(regime):
    """Coverage over 400 simulated experiments of 5 and 10 seeds, for the target the report names
    (this evaluation subset): the error's mean, mean Δ, |mean Δ| (mean Δ's interval folded) and
    |Δ| − |Δ control| (also the form of the ranking's differences); and the claim the report makes
    of mean |Δ|, which it prints without one: a t interval on |Δ| covers less than 95% at 5 seeds."""
    rng = np.random.default_rng(7)
    p_image = rng.uniform(0.1, 0.6, 300)  # no probability leaves [0, 1] under the shifts below
    reps = 400
    for n, shift in ((5, 0.0), (10, 0.0), (5, 1.5), (10, 1.5)):
        truth = {"error": p_image.mean() * 100 + shift, "delta": shift, "abs_mean": abs(shift)}
        big = [seed_errors(rng, p_image, 4000, s, regime) for s in (0.0, 0.0, shift)]
        truth["excess"] = (np.abs(big[2] - big[0]) - np.abs(big[1] - big[0])).mean()
        truth["mean_abs"] = np.abs(big[2] - big[0]).mean()
        covered = {k: 0 for k in truth}
        for _ in range(reps):
            base, control, setup = (seed_errors(rng, p_image, n, s, regime) for s in (0.0, 0.0, shift))
            delta = setup - base
            low, high = stats.t_interval(delta)
            found = {"error": stats.t_interval(setup), "delta": (low, high),
                     "abs_mean": stats.abs_interval(low, high),
                     "excess": stats.t_interval(np.abs(delta) - np.abs(control - base)),
                     "mean_abs": stats.t_interval(np.abs(delta))}
            for k, (lo, hi) in found.items():
                covered[k] += lo - 1e-9 <= truth[k] <= hi + 1e-9
        for k in ("error", "delta", "excess"):
            assert 0.92 <= covered[k] / reps <= 0.98, (regime, n, shift, k, covered[k] / reps)
        assert covered["abs_mean"] >= covered["delta"], (regime, n, shift)  # at least mean Δ's
        if n == 5 and shift == 0.0:
            assert covered["mean_abs"] / reps < 0.95, (regime, covered["mean_abs"] / reps)


def seed_predictions(rng, p_image, labels, n, regime):
    """Predicted classes of ``n`` seeds' runs, wrong (a uniformly drawn other class) with the
    probabilities of ``seed_errors``."""
    offset = rng.normal(0, 1.0, (n, 1)) if regime == "runs" else 0.0
    wrong = rng.random((n, len(p_image))) < p_image + offset / 100
    return np.where(wrong, (labels + rng.integers(1, 10, (n, len(labels)))) % 10, labels)


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["images", "runs"])
def test_the_trend_agreement_and_kappa_intervals_cover_95_percent_in_both_variance_regimes(regime):
    """The report's other intervals, computed by the report's own functions on simulated runs of
    5 and 10 seeds: the trend's slope per doubling (true slope 0.4 points) and the prediction
    agreement and error consistency with the baseline (truth: their mean over 3,000 seeds)."""
    rng = np.random.default_rng(11)
    p_image = rng.uniform(0.1, 0.6, 300)
    labels, levels, reps = rng.integers(0, 10, 300), (1, 2, 4, 8), 400

    def similarity(n):
        base, setup = seed_predictions(rng, p_image, labels, n, regime), seed_predictions(rng, p_image, labels, n, regime)
        runs = pd.DataFrame({"setup": ["b"] * n + ["s"] * n, "seed": [*range(n)] * 2,
                             "run_id": [f"b{i}" for i in range(n)] + [f"s{i}" for i in range(n)]})
        predictions = {f"{name}{i}": {"indices": np.arange(300), "labels": labels, "predicted": runs_of[i]}
                       for name, runs_of in (("b", base), ("s", setup)) for i in range(n)}
        return agreement(runs, "b", predictions, "p", "stacked")[0]

    big = [similarity(3000)]  # one experiment of 3,000 seeds: the per-seed means, to ±0.1%
    truth = {"agreement": big[0]["agreement"], "kappa": big[0]["kappa"], "mean_slope": 0.4}
    for n in (5, 10):
        covered = {k: 0 for k in truth}
        for _ in range(reps):
            found = similarity(n)
            errors = {k: seed_errors(rng, p_image, n, 0.4 * np.log2(k), regime) for k in levels}
            runs = pd.DataFrame([{"setup": f"grouped[channels_per_group={k}]", "seed": s, "test/error": e[s]}
                                 for k, e in errors.items() for s in range(n)])
            found.update(trend(runs, "test/error", "p", "stacked")[0])
            for k in truth:
                covered[k] += found[f"{k}_ci_low"] - 1e-9 <= truth[k] <= found[f"{k}_ci_high"] + 1e-9
        for k in truth:
            assert 0.92 <= covered[k] / reps <= 0.98, (regime, n, k, covered[k] / reps)


def test_the_seeds_needed_range_and_the_power_bounds_hold_by_simulation():
    """The sd's chi-square interval covers 95%; the power of a Holm-adjusted test over m setups
    lies between its power at alpha / m and at alpha (simulated with m = 3, two of them null)."""
    rng = np.random.default_rng(3)
    sds = [stats.sd_interval(np.std(rng.normal(0, 0.4, 6), ddof=1), 6) for _ in range(2000)]
    assert 0.93 <= np.mean([low <= 0.4 <= high for low, high in sds]) <= 0.97
    n, sd, effect = 8, 0.4, 0.4
    deltas = rng.normal(0, sd, (3000, 3, n)) + np.array([effect, 0, 0])[None, :, None]
    p = scipy_stats.ttest_1samp(deltas, 0, axis=2).pvalue
    order = np.argsort(p, axis=1)  # Holm by hand, vectorised: stats.holm is checked elsewhere
    steps = np.maximum.accumulate(np.minimum(1, np.take_along_axis(p, order, 1) * [3, 2, 1]), axis=1)
    holm = np.empty_like(p)
    np.put_along_axis(holm, order, steps, 1)
    assert holm[0] == pytest.approx(stats.holm(p[0]))
    power = np.mean(holm[:, 0] < 0.05)
    assert stats.power_paired_t(effect, sd, n, 0.05 / 3) - 0.02 <= power <= stats.power_paired_t(effect, sd, n) + 0.02
    assert stats.power_vs_control(0.25, 0.4, 4) == 0.0  # 1/2^4 >= 0.05: no outcome reaches it


def test_statistics_helpers_against_the_libraries_and_by_hand():
    d = np.array([0.4, -0.1, 0.3, 0.5, 0.2, 0.6, -0.2, 0.3])
    assert stats.paired_t(d) == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    assert stats.signed_rank([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)  # exact, by hand
    assert stats.signed_rank([1.0, 2.0, 3.0, 4.0, 5.0], "greater") == pytest.approx(1 / 32)
    with_zeros = [0.0, 0.0, 1 / 60, 2 / 60, -1 / 60, 3 / 60]  # Pratt keeps zeros in the ranking
    assert stats.signed_rank(with_zeros) == pytest.approx(
        scipy_stats.wilcoxon(with_zeros, zero_method="pratt").pvalue)
    assert stats.holm([0.01, 0.04, np.nan, 0.03]) == pytest.approx([0.03, 0.06, np.nan, 0.06], nan_ok=True)
    assert stats.seeds_needed(0.5, 0.5) == 10  # effect size 1: a paired t-test needs 10 at 0.8
    assert stats.seeds_needed(5.0, 0.1) == 6  # never below the signed-rank minimum
    assert np.isnan(stats.seeds_needed(0.5, np.nan))
    assert stats.min_signed_rank_n(0.05) == 6 and 2 / 2**6 < 0.05 <= 2 / 2**5
    assert stats.error_consistency([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0  # the same errors
    assert stats.error_consistency([1, 0, 1, 0], [1, 1, 0, 0]) == pytest.approx(0.0)  # chance


def test_one_seed_gives_the_table_without_cis_and_says_why(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "single")
    log_run(client, exp, "separable", 0, 10.0)
    log_run(client, exp, "inception", 0, 11.0)
    out = analyze("single", uri, str(tmp_path / "report"), log_to_mlflow=False)
    table = read_summary(out)
    assert table.loc["inception", "mean_abs_delta"] == 1.0
    assert np.isnan(table.loc["inception", "mean_delta_ci_low"])
    assert np.isnan(table.loc["inception", "p_ttest"])
    assert "Fewer than 5 seeds per setup: no intervals" in (out / "report.md").read_text()


def test_a_tryout_is_never_paired_with_a_baseline_of_another_protocol(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "mixed")
    for seed in range(5):
        log_run(client, exp, "separable", seed, BASE[seed])  # 190 epochs
        log_run(client, exp, "inception", seed, 40.0 + seed, protocol=TRYOUT)  # a 2-epoch try-out
        log_run(client, exp, "separable", seed, 41.0 + seed, protocol=TRYOUT)
        log_run(client, exp, "hybrid", seed, 60.0, protocol={**TRYOUT, "trainer.max_epochs": "1"})
    out = analyze("mixed", uri, str(tmp_path / "r"), log_to_mlflow=False)
    frame = pd.read_csv(out / "summary.csv")
    assert frame.protocol_hash.nunique() == 3
    tryout = frame[frame.protocol.str.contains("trainer.max_epochs=2")].set_index("setup")
    assert tryout.loc["inception", "mean_delta"] == pytest.approx(-1.0)  # against its own baseline
    assert np.isnan(tryout.loc["inception", "paper_mean_abs_delta"])  # not the paper's protocol
    hybrid = frame[frame.setup == "hybrid"].iloc[0]
    assert hybrid.role == "unpaired" and np.isnan(hybrid.get("mean_delta", np.nan))
    report = (out / "report.md").read_text()
    assert "`hybrid` (stacked): no `separable` run under the same protocol to pair with" in report
    assert "2 epochs, not the paper's 190: the runs are far from converged" in report


def test_a_baseline_only_experiment_gets_a_sentence(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "alone")
    for seed in range(3):
        log_run(client, exp, "separable", seed, BASE[seed])
    out = analyze("alone", uri, str(tmp_path / "r"), log_to_mlflow=False)
    assert "Only the baseline ran under this protocol: there is nothing to compare" in (out / "report.md").read_text()


def test_the_papers_ranking_and_functional_similarity(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "rank")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 600)
    indices = np.arange(600) * 3
    base_pred = np.where(rng.random(600) < 0.8, labels, (labels + 1) % 10)
    for seed in range(6):
        def predicted(flip):  # the baseline's predictions, a share of them changed
            changed = rng.random(600) < flip
            return np.where(changed, (base_pred + 2) % 10, base_pred)
        log_run(client, exp, "separable", seed, 10.0, predictions={
            "indices": indices, "labels": labels, "predicted": base_pred})
        for setup, offset, flip in (("hybrid", 0.1, 0.05), ("resnext", 0.6, 0.2), ("inception", 1.0, 0.3)):
            log_run(client, exp, setup, seed, 10.0 + offset + 0.01 * seed, predictions={
                "indices": indices, "labels": labels, "predicted": predicted(flip)})
    out = analyze("rank", uri, str(tmp_path / "r"), log_to_mlflow=False)
    ranking = pd.read_csv(out / "ranking.csv")
    assert list(zip(ranking.closer, ranking.farther)) == [("hybrid", "resnext"), ("resnext", "inception")]
    assert ranking.mean_difference.to_numpy() == pytest.approx([0.5, 0.4])
    assert ranking.supported.all()
    similarity = pd.read_csv(out / "similarity.csv").set_index("setup")
    assert similarity.loc["hybrid", "agreement"] == pytest.approx(95, abs=2)
    assert similarity.loc["inception", "agreement"] == pytest.approx(70, abs=3)
    assert similarity.loc["hybrid", "kappa"] > similarity.loc["resnext", "kappa"] > similarity.loc["inception", "kappa"]
    assert "Functional similarity with the baseline" in (out / "report.md").read_text()
    assert (out / "similarity.png").stat().st_size > 5000


def test_fig5_and_fig6_pair_within_each_backbone_by_unit(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "fig56")
    for seed, (with_sep, without) in enumerate([(6.0, 7.5), (6.5, 7.7), (6.2, 7.6), (6.1, 7.9), (6.3, 7.4)]):
        log_run(client, exp, "fractalnet+separable", seed, with_sep, backbone="fractalnet", block="separable")
        log_run(client, exp, "fractalnet+standard", seed, without, backbone="fractalnet", block="standard")
        log_run(client, exp, "darknet+separable", seed, with_sep + 1, backbone="darknet", block="separable")
        log_run(client, exp, "darknet+standard", seed, without + 5, backbone="darknet", block="standard")
    table = read_summary(analyze("fig56", uri, str(tmp_path / "r"), log_to_mlflow=False))
    assert table.loc["fractalnet+separable", "role"] == "baseline"
    assert table.loc["darknet+separable", "role"] == "baseline"
    assert table.loc["fractalnet+standard", "mean_delta"] == pytest.approx((1.5 + 1.2 + 1.4 + 1.8 + 1.1) / 5)
    assert table.loc["darknet+standard", "mean_delta"] == pytest.approx((5.5 + 5.2 + 5.4 + 5.8 + 5.1) / 5)
    mean = table.loc["darknet+standard", "mean_error"]
    assert table.loc["darknet+standard", "mean_error_ci_low"] < mean < table.loc["darknet+standard", "mean_error_ci_high"]


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


def test_setups_are_told_apart_by_their_setup_hash_and_labelled_by_their_knobs():
    frame = pd.DataFrame({"setup": ["grouped"] * 4 + ["separable"], "seed": [0, 1, 0, 1, 0],
                          "protocol_hash": "p",
                          "setup_hash": ["g1", "g1", "g4", "g4", "s"],
                          "config": [{"model.block.groups": "1", "seed": "0", "rerun": "false"},
                                     {"model.block.groups": "1", "seed": "1", "rerun": "true"},
                                     {"model.block.groups": "4", "seed": "0", "rerun": "false"},
                                     {"model.block.groups": "4", "seed": "1", "rerun": "false"},
                                     {"seed": "0"}]})
    # rerun differs between runs of one setup: not a knob; seed varies within setups: not either
    assert list(label_setups(frame).setup) == ["grouped[groups=1]", "grouped[groups=1]",
                                               "grouped[groups=4]", "grouped[groups=4]", "separable"]
    same = frame.assign(setup_hash="g")  # one setup_hash: one setup, whatever else was logged
    assert set(label_setups(same).setup) == {"grouped", "separable"}


@pytest.mark.slow
def test_command_on_a_real_grid(tmp_path, cifar10_root):
    small_real_grid(tmp_path, cifar10_root)
    run = subprocess.run([sys.executable, "-m", "analysis", "--experiment", "hybrid-exp"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "analysis" / "reports" / "hybrid-exp"
    table = read_summary(out)
    assert set(table.index) == {"separable", "equivalent", "inception"}
    assert (table.n == 2).all() and table.loc["inception", "n_paired"] == 2
    assert table.loc["equivalent", "role"] == "control"
    assert table.protocol_hash.nunique() == 1 and "trainer.max_epochs=1" in table.protocol.iloc[0]
    report = (out / "report.md").read_text()
    assert "Control `equivalent` (stacked): mean |Δ| =" in report
    assert "Functional similarity with the baseline" in report  # from the runs' predictions
    assert len(clean(load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")).finished) == 6


def test_the_papers_values_appear_only_for_its_dataset(tmp_path):
    """190 epochs and the 6000-image subset, but CIFAR-100: the paper's CIFAR-10 numbers are
    not shown beside it."""
    uri, client, exp = new_experiment(tmp_path, "c100")
    cifar100 = {**PAPER, "data._target_": "hybrid_exp.data.CIFAR100", "data.num_classes": "100"}
    for seed in range(5):
        log_run(client, exp, "separable", seed, BASE[seed], protocol=cifar100)
        log_run(client, exp, "inception", seed, INCEPTION[seed], protocol=cifar100)
    out = analyze("c100", uri, str(tmp_path / "r"), log_to_mlflow=False)
    table = read_summary(out)
    assert table.loc["inception", "mean_delta"] == pytest.approx(np.mean(np.subtract(INCEPTION, BASE)))
    assert np.isnan(table.loc["inception", "paper_mean_abs_delta"])


def log_six(client, exp, protocol, offset=0.0, seeds=range(5), **kwargs):
    for setup, shift in PAPER_SIX.items():
        for seed in seeds:
            noise = 0.02 * ((seed * 7 + len(setup)) % 5 - 2)  # small, fixed, per run
            log_run(client, exp, setup, seed, offset + BASE[seed] + shift + noise * (setup != "separable"),
                    protocol=protocol, **kwargs)


def test_a_tryout_beside_the_paper_runs_keeps_the_papers_names_values_and_ranking(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "hybrid-exp")
    log_six(client, exp, PAPER)
    log_six(client, exp, TRYOUT, offset=30.0)  # experiment=quick, then experiment=paper
    out = analyze("hybrid-exp", uri, str(tmp_path / "r"), log_to_mlflow=False)
    frame = pd.read_csv(out / "summary.csv")
    assert not frame.setup.str.contains(r"\[").any()  # one config per protocol: plain names
    paper = frame[frame.protocol.str.contains("max_epochs=190")].set_index("setup")
    tryout = frame[frame.protocol.str.contains("max_epochs=2(?:,|$)")].set_index("setup")
    assert set(paper.index) == set(tryout.index) == set(PAPER_SIX)
    assert paper.loc["inception", "paper_mean_abs_delta"] == 0.83 and np.isnan(tryout.loc["inception", "paper_mean_abs_delta"])
    for setup, shift in PAPER_SIX.items():
        if setup != "separable":
            assert paper.loc[setup, "mean_delta"] == pytest.approx(shift, abs=0.05)
            assert tryout.loc[setup, "mean_delta"] == pytest.approx(shift, abs=0.05)  # its own baseline
    ranking = pd.read_csv(out / "ranking.csv")
    assert len(ranking) == 6 and ranking.groupby("protocol_hash").size().tolist() == [3, 3]
    assert ranking.supported.all()
    report = (out / "report.md").read_text()
    assert "`inception[" not in report and report.count("### The paper's ranking") == 2


def test_one_config_on_a_cpu_and_a_gpu_is_two_protocols_each_with_plain_names(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "two-machines")
    cpu = {**PAPER, "trainer.precision": "32-true", "trainer.accelerator": "cpu"}
    gpu = {**PAPER, "trainer.precision": "bf16-mixed", "trainer.accelerator": "cuda"}
    log_six(client, exp, cpu)
    log_six(client, exp, gpu, offset=0.5)
    frame = pd.read_csv(analyze("two-machines", uri, str(tmp_path / "r"), log_to_mlflow=False) / "summary.csv")
    assert frame.protocol_hash.nunique() == 2 and set(frame.setup) == set(PAPER_SIX)
    for _, table in frame.groupby("protocol_hash"):  # one precision and device per table
        assert table.protocol.str.contains("trainer.precision=32-true").all() != \
            table.protocol.str.contains("trainer.precision=bf16-mixed").all()
        assert table.set_index("setup").loc["inception", "mean_delta"] == pytest.approx(1.0, abs=0.05)


def log_untagged(client, exp, model, seed, error, epochs):
    """A run of an older version: no schema tags (no setup, hashes, protocol), its config as params."""
    run = client.create_run(exp, run_name=f"{model}-seed{seed}", start_time=1_000,
                            tags={"model": model, "block": model, "backbone": "stacked", "seed": str(seed)})
    params = {**PAPER, "trainer.max_epochs": str(epochs), "seed": str(seed), "data.root": f"/data/{seed}",
              "model.block._target_": f"hybrid_exp.blocks.{model.title()}", "model.width": "64",
              "params": "1000", "mult_adds": "5000"}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, "test/error", error)
    client.set_terminated(run.info.run_id, "FINISHED", end_time=2_000)
    return run.info.run_id


def test_runs_without_schema_tags_get_their_setup_and_protocol_back_from_their_params(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "old")
    for seed in range(5):
        for epochs, offset in ((2, 30.0), (190, 0.0)):
            log_untagged(client, exp, "separable", seed, offset + BASE[seed], epochs)
            log_untagged(client, exp, "inception", seed, offset + BASE[seed] + 1.0 + 0.1 * seed, epochs)
    lost = client.create_run(exp, run_name="who-knows")  # no tags, no params: cannot be placed
    client.log_metric(lost.info.run_id, "test/error", 50.0)
    client.set_terminated(lost.info.run_id, "FINISHED")
    runs = clean(load_runs("old", uri))
    assert len(runs.finished) == 20 and runs.duplicates.empty  # 2 setups x 2 epochs x 5 seeds
    out = analyze("old", uri, str(tmp_path / "r"), log_to_mlflow=False)
    frame = pd.read_csv(out / "summary.csv")
    assert frame.protocol_hash.nunique() == 2  # 2 and 190 epochs never paired
    inception = frame[frame.setup == "inception"]
    assert inception.mean_delta.to_numpy() == pytest.approx([1.2, 1.2])  # 1 + 0.1 * mean seed
    report = (out / "report.md").read_text()
    assert "Cannot be placed" in report and "`who-knows`" in report and "Duplicate" not in report
    assert "trainer.max_epochs=2" in " ".join(frame.protocol) and "data.root" not in " ".join(frame.protocol)


def test_runs_on_two_data_sources_are_never_paired_or_merged(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "pixels")
    official, jpeg = "a1b2c3d4e5f60718", "0f1e2d3c4b5a6978"
    for seed in range(5):
        for fingerprint, offset in ((official, 0.0), (jpeg, 2.0)):
            for setup, shift in (("separable", 0.0), ("inception", 0.5)):
                run_id = log_run(client, exp, setup, seed, offset + BASE[seed] + shift)
                client.set_tag(run_id, "data_fingerprint", fingerprint)
    frame = pd.read_csv(analyze("pixels", uri, str(tmp_path / "r"), log_to_mlflow=False) / "summary.csv")
    assert frame.protocol_hash.nunique() == 2 and (frame.n == 5).all()  # same config hash, not merged
    assert frame[frame.setup == "inception"].mean_delta.to_numpy() == pytest.approx([0.5, 0.5])
    assert {official, jpeg} == {p.rsplit("data fingerprint=", 1)[1] for p in frame.protocol}


def test_figures_draw_one_run_per_point_per_protocol_and_refuse_to_average(tmp_path):
    from analysis.figures import AveragingRefused, one_per_point, paired_points
    from analysis.table import summarize

    uri, client, exp = new_experiment(tmp_path, "facets")
    log_six(client, exp, PAPER)
    log_six(client, exp, TRYOUT, offset=30.0)
    used = clean(load_runs("facets", uri)).finished
    points = paired_points(used, summarize(used).summary, "test/error")
    assert len(points) == 2
    for protocol, table in points.items():
        offset = 30.0 if "max_epochs=190" not in used[used.protocol_hash == protocol].protocol.iloc[0] else 0.0
        assert table["separable"].tolist() == pytest.approx([offset + b for b in BASE])  # never a mean
        assert table.columns[0] == "separable"  # the baseline first
    with pytest.raises(AveragingRefused, match="would average them"):
        one_per_point(pd.concat([used, used]), ["protocol_hash", "setup", "seed"])


def test_the_noise_floor_words_come_from_the_data_and_the_distance_is_unbiased(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "words")
    rng = np.random.default_rng(3)
    for seed in range(10):
        base = 10 + rng.normal(0, 0.3)
        log_run(client, exp, "separable", seed, base)
        log_run(client, exp, "equivalent", seed, 10 + rng.normal(0, 0.3))
        log_run(client, exp, "hybrid", seed, 10 + rng.normal(0, 0.3))
    out = analyze("words", uri, str(tmp_path / "r"), log_to_mlflow=False, margin=0.25)
    table, report = read_summary(out), (out / "report.md").read_text()
    ctrl = table.loc["equivalent"]
    assert ctrl.power_ttest_at_sesoi == pytest.approx(stats.power_paired_t(0.25, ctrl.sd_delta, 10))
    assert f"has {100 * ctrl.power_ttest_at_sesoi:.0f}%" in report
    assert ctrl.noise_abs_delta == pytest.approx(ctrl.sd_delta * np.sqrt(2 / np.pi))
    assert f"TOST p {ctrl.p_tost:.3f}" in report and "need not be shown equivalent" in report
    hybrid = table.loc["hybrid"]  # no true difference: the distance is near 0, mean |Δ| is not
    assert abs(hybrid.mean_delta) < hybrid.mean_abs_delta
    assert hybrid.abs_mean_delta_ci_low <= abs(hybrid.mean_delta) <= hybrid.abs_mean_delta_ci_high
    assert "shown" in report and "| yes (p" not in report and "| no (p" not in report
    assert "a reference level" not in report or "not a ceiling" in report


def test_the_cardinality_continuum_gets_one_trend_test_over_log2_channels_per_group(tmp_path):
    uri, client, exp = new_experiment(tmp_path, "cardinality")
    for seed in range(6):
        log_run(client, exp, "separable", seed, BASE[seed % 5])
        for k in (1, 2, 4, 8, 16):  # error grows by 0.3 points per doubling, plus a seed offset
            log_run(client, exp, "grouped", seed, 10 + 0.3 * np.log2(k) + 0.1 * seed,
                    knobs={"model.block.channels_per_group": str(k)})
    out = analyze("cardinality", uri, str(tmp_path / "r"), log_to_mlflow=False)
    trend = pd.read_csv(out / "trend.csv").iloc[0]
    assert trend.levels == "1 2 4 8 16" and trend.n_seeds == 6
    assert trend.mean_slope == pytest.approx(0.3)
    assert "Trend over channels per group" in (out / "report.md").read_text()


def test_figures_draw_no_error_bars_where_no_interval_was_computed():
    from analysis.figures import errorbars

    few = pd.DataFrame({"mean_delta": [1.0, 2.0], "mean_delta_ci_low": [np.nan, np.nan],
                        "mean_delta_ci_high": [np.nan, np.nan]})
    assert errorbars(few, "mean_delta") == {}  # fewer than 5 seeds: no caps at all
    enough = few.assign(mean_delta_ci_low=[0.5, 1.0], mean_delta_ci_high=[1.5, 2.5])
    bars = errorbars(enough, "mean_delta")
    assert bars["capsize"] == 3 and bars["yerr"].tolist() == [[0.5, 1.0], [0.5, 0.5]]
