"""Results bundles: published from a real MLflow store, regenerated from themselves alone to the
last digit, refused when edited, combined across machines; the README's Results section is the
bundles' own tables."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import AnalysisError
from analysis.bundle import publish, regenerate, republish
from analysis.results import README, readme_section, write_index
from tests.helpers import BASE, PAPER_SIX, REPO, log_run, new_experiment, small_real_grid

RESULTS = REPO / "results"


def log_store(tmp_path, name="fig4", seeds=range(5)):
    """The paper's six setups with predictions, an older duplicate and a FAILED run."""
    uri, client, exp = new_experiment(tmp_path, name)
    rng = np.random.default_rng(0)
    labels, indices = rng.integers(0, 10, 300), np.sort(rng.choice(10000, 300, replace=False))
    for setup, shift in PAPER_SIX.items():
        for seed in seeds:
            predicted = np.where(rng.random(300) < 0.85, labels, (labels + 1) % 10)
            log_run(client, exp, setup, seed, BASE[seed % 5] + shift + 0.013 * seed, start=10 * seed,
                    predictions={"indices": indices, "labels": labels, "predicted": predicted})
    log_run(client, exp, "hybrid", seeds[0], 99.0, start=-5)  # older: set aside as a duplicate
    log_run(client, exp, "resnext", 9, 50.0, status="FAILED")
    return uri


def test_a_bundle_is_small_complete_and_regenerates_its_summary_to_the_last_digit(tmp_path):
    uri = log_store(tmp_path)
    bundle = publish("fig4", uri, tmp_path / "results" / "fig4-test", "python -m analysis ...")
    files = {p.name for p in bundle.iterdir()}
    assert {"report.md", "summary.csv", "ranking.csv", "runs.csv", "predictions.npz", "history.csv",
            "provenance.json", "abs_delta.png"} <= files
    assert sum(p.stat().st_size for p in bundle.iterdir()) < 2 * 2**20
    runs = pd.read_csv(bundle / "runs.csv")
    assert len(runs) == 32 and {"run_id", "setup", "seed", "config_hash", "test/error", "train_seconds"} <= set(runs)
    with np.load(bundle / "predictions.npz") as saved:
        assert len(saved.files) == 3 * 30 and saved[saved.files[0]].dtype in (np.uint8, np.uint16)
    meta = json.loads((bundle / "provenance.json").read_text())
    assert meta["runs"] == {"in_store": 32, "counted": 30} and meta["options"]["margin"] == 0.25
    assert meta["device_hours"] > 0 and meta["analysis"]["versions"]["mlflow"]
    again = regenerate([bundle], tmp_path / "again")
    assert (again / "summary.csv").read_text() == (bundle / "summary.csv").read_text()
    assert (again / "ranking.csv").read_text() == (bundle / "ranking.csv").read_text()
    assert (again / "similarity.csv").read_text() == (bundle / "similarity.csv").read_text()
    report = (again / "report.md").read_text()
    assert "Duplicate" in report and "FAILED, not averaged in: `resnext-seed9`" in report


def test_a_bundle_keeps_the_uncommitted_changes_its_runs_trained_with(tmp_path):
    uri = log_store(tmp_path)
    client = MlflowClient(uri)
    run_id = client.search_runs([client.get_experiment_by_name("fig4").experiment_id],
                                "tags.setup = 'inception' and tags.seed = '2'")[0].info.run_id
    change = "diff --git a/hybrid_exp/blocks.py b/hybrid_exp/blocks.py\n+# tried a variant\n"
    client.set_tag(run_id, "git_sha", "0123abc+dirty")  # as a run from a dirty checkout is tagged
    client.log_text(run_id, change, "git_diff.patch")
    bundle = publish("fig4", uri, tmp_path / "b", "")
    meta = json.loads((bundle / "provenance.json").read_text())
    name = next(name for name, owners in meta["diffs"].items() if owners == [run_id])
    assert (bundle / name).read_text() == change and meta["sha256"][name]
    republish(bundle, bundle, "")  # still a bundle this project wrote: brought up to date in place
    assert (bundle / name).read_text() == change


def test_a_bundle_edited_after_publishing_is_refused(tmp_path):
    bundle = publish("fig4", log_store(tmp_path), tmp_path / "b", "python -m analysis ...")
    runs = (bundle / "runs.csv").read_text()
    (bundle / "runs.csv").write_text(runs.replace("11.6", "10.6", 1))
    with pytest.raises(AnalysisError, match="runs.csv does not match .*provenance.json.*publish it again"):
        regenerate([bundle], tmp_path / "r")
    with pytest.raises(AnalysisError, match="no results bundle"):
        regenerate([tmp_path], tmp_path / "r")


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """One bundle of the paper's six setups, published once: each test forges a copy."""
    folder = tmp_path_factory.mktemp("published")
    return publish("fig4", log_store(folder), folder / "bundle", "")


def forged(bundle: Path, name: str, content: bytes | None = None, link: Path | None = None) -> None:
    """``name`` in ``bundle`` replaced (by ``content``, or a link to ``link``), and its sha256 in
    the provenance recomputed, as a forger would."""
    import hashlib

    path = bundle / name
    path.unlink()
    if link is not None:
        path.symlink_to(link)
    else:
        path.write_bytes(content)
    meta = json.loads((bundle / "provenance.json").read_text())
    meta["sha256"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / "provenance.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("case, sentence", [
    ("a link out of the bundle", "history.csv is a link, and a bundle is read from its own files only"),
    ("predictions that expand past the bound", "declares 300,000,000 entries, more than the 50,000,000"),
    ("predictions of objects", "holds .* of object, but a bundle's predictions are integers"),
    ("no zip", "predictions.npz cannot be read as a bundle's predictions"),
    ("a provenance that is no JSON", "provenance.json is not a bundle's provenance"),
    ("a provenance without its hashes", "provenance.json is not a bundle's provenance \\(KeyError"),
])
def test_a_hostile_bundle_is_refused_in_one_sentence_before_it_is_expanded(published, tmp_path, case, sentence):
    import io
    import shutil

    bundle = Path(shutil.copytree(published, tmp_path / "b"))
    if case == "a link out of the bundle":
        outside = tmp_path / "elsewhere.csv"
        outside.write_text((bundle / "history.csv").read_text())
        forged(bundle, "history.csv", link=outside)
    elif case == "predictions that expand past the bound":
        buffer = io.BytesIO()  # 300 M zeros compress to ~300 KB
        np.savez_compressed(buffer, **{"run.predicted": np.zeros(300_000_000, dtype=np.uint8)})
        forged(bundle, "predictions.npz", buffer.getvalue())
    elif case == "predictions of objects":
        buffer = io.BytesIO()
        np.savez(buffer, **{"run.predicted": np.array([{"a": 1}], dtype=object)})
        forged(bundle, "predictions.npz", buffer.getvalue())
    elif case == "no zip":
        forged(bundle, "predictions.npz", b"not a zip file")
    elif case == "a provenance that is no JSON":
        (bundle / "provenance.json").write_text("{not json")
    else:
        meta = json.loads((bundle / "provenance.json").read_text())
        del meta["sha256"]
        (bundle / "provenance.json").write_text(json.dumps(meta))
    done = subprocess.run([sys.executable, "-m", "analysis", "--runs", str(bundle)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().count("\n") == 0 and re.search(sentence, done.stderr), done.stderr


def test_bundles_from_two_machines_combine_into_one_report(tmp_path):
    first = publish("fig4", log_store(tmp_path / "a", seeds=range(3)), tmp_path / "a" / "bundle", "")
    second = publish("fig4", log_store(tmp_path / "b", seeds=range(3, 6)), tmp_path / "b" / "bundle", "")
    summary = pd.read_csv(regenerate([first, second], tmp_path / "both") / "summary.csv").set_index("setup")
    assert (summary.n == 6).all() and summary.loc["inception", "n_paired"] == 6


def test_the_command_line_publishes_and_regenerates(tmp_path):
    uri = log_store(tmp_path)
    run = lambda *args: subprocess.run([sys.executable, "-m", "analysis", *args], cwd=tmp_path,
                                       capture_output=True, text=True, timeout=300)
    published = run("--experiment", "fig4", "--tracking-uri", uri, "--publish", "results/fig4-cli")
    assert published.returncode == 0, published.stderr[-2000:]
    assert "published results/fig4-cli" in published.stdout
    client = MlflowClient(uri)  # one analysis run in the store, the bundle's files with it
    (logged,) = client.search_runs([client.get_experiment_by_name("fig4").experiment_id],
                                   "tags.`hybrid_exp.kind` = 'analysis'")
    files = {a.path for a in client.list_artifacts(logged.info.run_id, "bundle")}
    assert {"bundle/runs.csv", "bundle/provenance.json", "bundle/report.md"} <= files
    assert "the results bundle `fig4-cli` under bundle/" in logged.data.tags["mlflow.note.content"]
    again = run("--runs", "results/fig4-cli")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "analysis/reports/fig4-cli/summary.csv").read_text() == \
        (tmp_path / "results/fig4-cli/summary.csv").read_text()
    both = run("--experiment", "fig4", "--runs", "results/fig4-cli")
    assert both.returncode == 2 and "give one of --experiment NAME" in both.stderr


def test_publishing_replaces_only_a_bundle_and_keeps_it_until_the_new_one_is_whole(tmp_path):
    uri = log_store(tmp_path)
    results = tmp_path / "results"
    (results / "empty").mkdir(parents=True)
    bundle = publish("fig4", uri, results / "empty", "")  # an empty folder takes a bundle
    (results / "notes.md").write_text("mine")
    first = (bundle / "provenance.json").read_text()
    with pytest.raises(AnalysisError, match="no experiment"):  # fails before the new one is whole
        publish("absent", uri, bundle, "")
    assert (bundle / "provenance.json").read_text() == first
    publish("fig4", uri, bundle, "")  # a bundle this project wrote is replaced
    assert (bundle / "provenance.json").read_text() != first
    assert sorted(p.name for p in results.iterdir()) == ["empty", "notes.md"]  # no old copy left behind
    (bundle / "mine.png").write_bytes(b"mine")  # a file no bundle holds: no longer only a bundle
    with pytest.raises(AnalysisError, match="holds files that are not a results bundle this project wrote"):
        publish("fig4", uri, bundle, "")
    (bundle / "mine.png").unlink()
    (bundle / "runs.csv").write_text("edited")  # a bundle edited since: someone's work
    with pytest.raises(AnalysisError, match="not a results bundle"):
        publish("fig4", uri, bundle, "")
    for folder, why in ((results, "holds files that are not a results bundle"),  # results/ itself
                        (results / "notes.md", "it is a file")):
        with pytest.raises(AnalysisError, match=why):
            publish("fig4", uri, folder, "")
    assert (results / "notes.md").read_text() == "mine" and (bundle / "runs.csv").read_text() == "edited"


@pytest.mark.parametrize("target", [".", "..", "{work}"])
def test_publish_refuses_the_working_directory_and_its_parents_and_deletes_nothing(tmp_path, target):
    uri = log_store(tmp_path / "store")
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "mine.txt").write_text("mine")
    target = target.format(work=work)  # the working directory by its absolute path
    done = subprocess.run([sys.executable, "-m", "analysis", "--experiment", "fig4", "--tracking-uri", uri,
                           "--publish", target], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith(f"error: --publish {target}: ") and \
        "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (work / "data" / "mine.txt").read_text() == "mine" and not (work / "analysis").exists()


def test_the_index_and_the_readme_section_come_from_the_bundles(tmp_path):
    results = tmp_path / "results"
    publish("fig4", log_store(tmp_path), results / "fig4-test", "")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results: python -m analysis --index results -->\nold\n<!-- end of results -->\ntail\n")
    write_index(results, readme)
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "### `fig4-test`" in text
    assert "| `inception` | 5 | 0 | 1.00 | 1.00 | 13.03 ± 1.60 |" in text  # BASE + 1.0 + 0.013 * seed, seeds 0-4
    assert "Protocol: 190 epochs, all training images, 6,000 test images, CIFAR10" in text
    assert "[`fig4-test`](fig4-test/report.md)" in (results / "README.md").read_text()


def test_the_readme_shows_every_published_bundle_as_generated(tmp_path):
    """README.md's Results section is what `python -m analysis --index results` writes."""
    assert list(RESULTS.glob("*/provenance.json")), "results/ holds no bundle"
    assert readme_section(RESULTS) in README.read_text()
    for bundle in RESULTS.glob("*/provenance.json"):
        regenerated = regenerate([bundle.parent], tmp_path / bundle.parent.name)
        assert (regenerated / "summary.csv").read_text() == (bundle.parent / "summary.csv").read_text()


@pytest.mark.slow
def test_a_real_grid_publishes_and_regenerates_identically(tmp_path, cifar10_root):
    small_real_grid(tmp_path, cifar10_root)
    bundle = publish("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "results/real", "")
    meta = json.loads((bundle / "provenance.json").read_text())
    assert meta["training"]["machines"][0].startswith("CPU") and meta["training"]["commands"]
    assert all("python -m hybrid_exp" in c for c in meta["training"]["commands"])
    again = regenerate([bundle], tmp_path / "again")
    assert (again / "summary.csv").read_text() == (bundle / "summary.csv").read_text()
