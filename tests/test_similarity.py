"""Representation similarity: the minibatch linear CKA estimator against direct computations, its
invariances, the points it reads from each backbone, and on a real grid from the store to the
report."""
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hybrid_exp.similarity import POOLED, MinibatchCKA, hsic, linear_cka, representations


def minibatch_cka(x, y, batch):
    total = MinibatchCKA()
    for start in range(0, len(x), batch):
        total.update(torch.as_tensor(x[start:start + batch]), torch.as_tensor(y[start:start + batch]))
    return total.value()


def u_statistic_hsic(k, l):
    """The unbiased HSIC as the U-statistic over distinct 4-tuples (Song et al. 2012), by brute force."""
    n, total = len(k), 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    return total * np.prod(range(n - 3, n + 1)) ** -1.0


def full_gram_cka(x, y):
    """The textbook linear CKA of the whole set: centred features, Frobenius norms (biased)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def test_the_minibatch_estimator_against_direct_float64_computations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5))
    y = x @ rng.normal(size=(5, 3)) + rng.normal(size=(8, 3))
    k, l = x @ x.T, y @ y.T
    assert hsic(torch.as_tensor(k), torch.as_tensor(l)).item() == pytest.approx(u_statistic_hsic(k, l), rel=1e-10)
    one_batch = u_statistic_hsic(k, l) / np.sqrt(u_statistic_hsic(k, k) * u_statistic_hsic(l, l))
    assert minibatch_cka(x, y, 8) == pytest.approx(one_batch, rel=1e-10)  # one batch: the unbiased CKA
    # over batches of several sizes the estimate is the whole set's CKA, within its sampling noise
    shared = rng.normal(size=(3000, 6))
    x, y = shared @ rng.normal(size=(6, 40)), shared @ rng.normal(size=(6, 30)) + rng.normal(size=(3000, 30))
    for batch in (100, 500, 3000):
        assert minibatch_cka(x, y, batch) == pytest.approx(full_gram_cka(x, y), abs=0.02), batch


def test_cka_is_one_on_itself_and_invariant_to_rotation_and_isotropic_scaling():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 20)), rng.normal(size=(400, 12))
    y[:, :5] += x[:, :5]
    rotation = np.linalg.qr(rng.normal(size=(20, 20)))[0]
    assert minibatch_cka(x, x, 100) == pytest.approx(1.0, abs=1e-12)
    base = minibatch_cka(x, y, 100)
    assert 0.05 < base < 0.95
    assert minibatch_cka(x @ rotation, y, 100) == pytest.approx(base, abs=1e-10)
    assert minibatch_cka(3.7 * x, y, 100) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("overrides, points", [
    (["model.width=8", "model.depth=2"], ["stage1", "stage2", "stage3", POOLED]),
    (["model=fractalnet", "model.columns=2", "model.widths=[8,8,8]", "model.dropout=[0,0,0]"],
     ["stage1", "stage2", "stage3", POOLED]),
    (["model=darknet_cifar"], None)])
def test_each_backbone_gives_its_stage_ends_and_pooled_features(make_cfg, overrides, points):
    from hybrid_exp.registry import build

    net = build(make_cfg(*overrides), "model").eval()
    found = representations(net, torch.randn(4, 3, 32, 32))
    assert list(found)[-1] == POOLED and found[POOLED].shape[0] == 4 and found[POOLED].dim() == 2
    assert points is None or list(found) == points
    assert all(f"stage{i + 1}" in found for i in range(len(net.stage_ends())))


def test_equivalent_and_separable_with_mapped_weights_give_cka_one_at_every_point(make_cfg):
    """The control computes the baseline's function: with the baseline's weights mapped into its
    towers, its representations are the baseline's at every point; with its own draw, not."""
    from hybrid_exp.registry import build

    torch.manual_seed(0)
    separable = build(make_cfg("model.width=8"), "model").double().eval()
    equivalent = build(make_cfg("model=equivalent", "model.width=8"), "model").double().eval()
    own = {point: value for point, value in linear_cka(
        separable, equivalent, [(torch.randn(50, 3, 32, 32, dtype=torch.float64), None)]).items()}
    with torch.no_grad():
        for mine, theirs in zip(equivalent.parameters(), separable.parameters(), strict=True):
            mine.copy_(theirs.view_as(mine))
    batches = [(torch.randn(50, 3, 32, 32, dtype=torch.float64), None) for _ in range(3)]
    mapped = linear_cka(separable, equivalent, batches)
    assert list(mapped) == ["stage1", "stage2", "stage3", POOLED]
    assert all(value == pytest.approx(1.0, abs=1e-9) for value in mapped.values()), mapped
    assert own["stage1"] < 0.999  # other random weights: other representations


def log_run(client, experiment, setup, seed, cka=None, reference=None):
    """A finished run as training logs it, with the CKA metrics the similarity step adds."""
    protocol = "data.eval_size=200"
    run = client.create_run(experiment, run_name=f"{setup}-seed{seed}", tags={
        "setup": setup, "model": setup, "block": setup, "backbone": "stacked", "seed": str(seed),
        "protocol": protocol, "protocol_hash": "p1", "setup_hash": setup, "config_hash": f"{setup}{seed}"})
    for key, value in {"seed": seed, "params": 1000, "mult_adds": 50_000}.items():
        client.log_param(run.info.run_id, key, str(value))
    client.log_metric(run.info.run_id, "test/error", 10.0 + seed)
    for prefix, values in (("cka", cka), ("cka_reference", reference)):
        for point, value in (values or {}).items():
            client.log_metric(run.info.run_id, f"{prefix}/{point}", value)
    client.set_terminated(run.info.run_id, "FINISHED")


def test_the_report_sets_each_setups_cka_beside_two_baseline_runs_and_says_what_the_intervals_show(tmp_path):
    from mlflow.tracking import MlflowClient

    from analysis.report import analyze

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("cka", artifact_location=(tmp_path / "a").as_uri())
    rng = np.random.default_rng(0)
    references, setups = {"stage1": [], "pooled": []}, {"stage1": [], "pooled": []}
    for seed in range(6):
        reference = {"stage1": 0.90 + 0.01 * rng.normal(), "pooled": 0.80 + 0.01 * rng.normal()}
        inception = {"stage1": 0.70 + 0.01 * rng.normal(), "pooled": 0.80 + 0.001 * rng.normal()}
        for point in reference:
            references[point].append(reference[point])
            setups[point].append(inception[point])
        log_run(client, experiment, "separable", seed, reference=reference)
        log_run(client, experiment, "inception", seed, cka=inception)
        log_run(client, experiment, "equivalent", seed, cka={"stage1": 0.99, "pooled": 0.80})
    out = analyze("cka", uri, str(tmp_path / "r"), log_to_mlflow=False)
    table = pd.read_csv(out / "cka.csv").set_index(["setup", "point"])
    assert list(table.index.get_level_values("point").unique()) == ["stage1", "pooled"]
    assert table.loc[("inception", "stage1"), "n_seeds"] == 6 and table.loc[("inception", "stage1"), "n_reference"] == 6
    assert table.loc[("inception", "stage1"), "reference_min"] == pytest.approx(min(references["stage1"]))
    assert table.loc[("inception", "stage1"), "cka"] == pytest.approx(np.mean(setups["stage1"]))
    report = (out / "report.md").read_text()
    assert ("`inception`'s mean CKA with the baseline lies below the lowest value two baseline runs reach "
            "at `stage1`; within the range of two baseline runs at `pooled`") in report
    assert ("`equivalent`'s mean CKA with the baseline lies above the highest value two baseline runs "
            "reach at `stage1`") in report
    assert "Davari et al. 2023" in report and (out / "cka_by_depth.png").stat().st_size > 5000


@pytest.mark.slow
def test_a_real_grid_gets_its_cka_table_and_figure_and_a_run_without_weights_is_named(tmp_path, cifar10_root):
    """A fused grid of three setups x 5 seeds on real images; one run's weights removed: that
    run is named and set aside; every other comparison is logged, read by the analysis; a fused
    member's stored weights give its run's own predictions (taken apart exactly)."""
    from mlflow.tracking import MlflowClient

    from hybrid_exp.evaluate import stored_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    grid = subprocess.run(
        [sys.executable, "-m", "hybrid_exp", "-m", "model=separable,equivalent,inception", "seed=range(5)",
         f"data.root={cifar10_root}", "data.train_subset=500", "data.val_size=200", "data.eval_size=200",
         "model.width=8", "model.depth=1", "trainer.max_epochs=1", "data.batch_size=64",
         f"logger.tracking_uri={uri}", "logger.experiment_name=cka", "hydra.launcher.n_jobs=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert grid.returncode == 0, grid.stderr[-3000:]
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("cka").experiment_id])}
    assert runs["inception-seed3"].data.tags.get("array")  # seeds fused
    member = runs["inception-seed3"]
    net, data, _ = stored_run(member.info.run_id, client, torch.device("cpu"))
    data.setup()
    x, _ = next(iter(data.batches("test")))
    with np.load(client.download_artifacts(member.info.run_id, "test_predictions.npz", str(tmp_path))) as saved:
        assert (net(x).argmax(1).numpy() == saved["predicted"][:len(x)]).mean() > 0.98
    missing = runs["equivalent-seed2"]
    Path(missing.info.artifact_uri.removeprefix("file://"), "model.pt").unlink()

    step = subprocess.run([sys.executable, "-m", "hybrid_exp.similarity", "--experiment", "cka",
                           "--tracking-uri", uri], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert step.returncode == 0, step.stderr[-3000:]
    assert "set aside, equivalent-seed2: run " in step.stdout and "has no model.pt" in step.stdout
    assert "14 comparisons logged" in step.stdout  # 2 x 5 setups (one set aside) + 5 references
    logged = client.get_run(runs["inception-seed0"].info.run_id)
    assert {"cka/stage1", "cka/stage2", "cka/stage3", "cka/pooled"} <= set(logged.data.metrics)
    assert logged.data.tags["cka.baseline_run"] == runs["separable-seed0"].info.run_id
    assert "has no model.pt" in client.get_run(missing.info.run_id).data.tags["cka.error"]
    assert 0 < logged.data.metrics["cka/stage1"] <= 1

    report = subprocess.run([sys.executable, "-m", "analysis", "--experiment", "cka", "--tracking-uri", uri],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    out = tmp_path / "analysis/reports/cka"
    text = (out / "report.md").read_text()
    assert "Representation similarity with the baseline (linear CKA)" in text
    cka = pd.read_csv(out / "cka.csv")
    assert set(cka.setup) == {"equivalent", "inception"} and set(cka.point) == {"stage1", "stage2", "stage3", "pooled"}
    assert (cka[cka.setup == "equivalent"].n_seeds == 4).all()  # the run without weights: not counted
    assert (out / "cka_by_depth.png").stat().st_size > 5000


def test_an_unknown_experiment_is_one_sentence_naming_those_there(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).create_experiment("fig4", artifact_location=(tmp_path / "a").as_uri())
    run = subprocess.run([sys.executable, "-m", "hybrid_exp.similarity", "--experiment", "fig3",
                          "--tracking-uri", uri], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        f"no experiment 'fig3' in {uri}; existing: Default, fig4"]
