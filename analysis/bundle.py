"""Results bundles: what a reader needs to check a published table, and nothing else.

``python -m analysis --experiment NAME --publish results/<name>`` writes into one small folder:

- report.md with its figures (PNG), summary.csv, ranking.csv, similarity.csv, trend.csv, cka.csv:
  the report (cka.csv from the runs' `cka/*` metrics, `python -m hybrid_exp.similarity`);
- runs.csv: every training run of the experiment as the store holds it (identity tags, where
  and how it ran, params, every final metric, the config as JSON), counted or set aside;
- predictions.npz: each counted run's predicted class on the evaluation images (uint8), their
  labels and indices: enough to recompute agreement and kappa;
- history.csv: each counted run's validation error per epoch (the learning curves);
- provenance.json: the commits and versions that trained and analysed it, the machines, the
  commands as launched, when, the wall hours and device-hours it cost, the analysis options,
  and the sha256 of the three data files;
- diff-<hash>.patch: where runs trained from (or the analysis ran in) a checkout with
  uncommitted changes, those changes (``git diff HEAD``), one file per distinct diff, named in
  provenance.json with the runs they belong to.

``python -m analysis --runs results/<name> [more bundles]`` regenerates the report from bundles
alone (no MLflow store): the same summary.csv to the last digit. A bundle whose data files no
longer match its provenance is refused: it was edited after it was published.
"""
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.report import clean_or_explain, write_report
from analysis.runs import AnalysisError, epochs_from_one, fetch_runs, load_history, load_predictions, prepare
from hybrid_exp.device import machine
from hybrid_exp.redact import redact
from hybrid_exp.schema import GIT_DIFF, git_diff, git_sha, short_hash
from hybrid_exp.store import shared_client

RUNS, PREDICTIONS, HISTORY, PROVENANCE = "runs.csv", "predictions.npz", "history.csv", "provenance.json"
DATA_FILES = (RUNS, PREDICTIONS, HISTORY)
REPORT_FILES = ("report.md", "summary.csv", "ranking.csv", "similarity.csv", "trend.csv", "cka.csv")
VERSIONS = ("torch", "pytorch-lightning", "hydra-core", "mlflow", "optuna", "numpy", "scipy",
            "statsmodels", "pandas")


def publish(experiment: str, tracking_uri: str, folder: str | Path, command: str,
            baseline: str = "separable", control: str = "equivalent", margin: float = 0.25,
            metric: str = "test/error", sesoi: float | None = None) -> Path:
    """Write the bundle of ``experiment`` into ``folder``: a new one where ``folder`` is absent or
    empty; where it holds a bundle, a new one in its place, the old kept until the new is whole;
    any other folder is refused (``writable``) before anything is read or written."""
    folder = Path(folder)
    writable(folder)
    raw = fetch_runs(experiment, tracking_uri)
    runs = clean_or_explain(experiment, prepare(raw.copy()), metric)
    used = runs.finished.run_id
    predictions = load_predictions(tracking_uri, used)
    history = load_history(tracking_uri, used)
    options = {"baseline": baseline, "control": control, "margin": margin, "metric": metric,
               "sesoi": margin if sesoi is None else sesoi}
    with staged(folder) as staging:
        write_report_files(staging, experiment, runs, predictions, history, options)
        write_data(staging, raw, predictions, history)
        meta = provenance(experiment, raw, runs.finished, staging, command, options)
        meta["diffs"] = write_diffs(staging, tracking_uri, raw[raw.run_id.isin(set(used))])
        meta["sha256"].update({name: sha256(staging / name) for name in meta["diffs"]})
        (staging / PROVENANCE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def republish(source: str | Path, folder: str | Path, command: str) -> Path:
    """The bundle ``source`` with its report written anew by this version of the analysis, with
    the options it was published with, into ``folder`` (``source`` itself, to bring a published
    bundle up to date): its data files are copied byte for byte, its provenance keeps what
    trained it and records this analysis."""
    source, folder = Path(source), Path(folder)
    writable(folder)
    frame, predictions, history, meta = read(source)
    runs = clean_or_explain(meta["experiment"], frame, meta["options"]["metric"])
    with staged(folder) as staging:
        write_report_files(staging, meta["experiment"], runs, predictions, history, meta["options"])
        for name in (*DATA_FILES, *meta.get("diffs", {})):
            shutil.copyfile(source / name, staging / name)
        meta.update(published=now(), analysis_command=command,
                    analysis={"git_commit": git_sha(), "versions": versions(), "machine": machine()})
        (staging / PROVENANCE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


@contextlib.contextmanager
def staged(folder: Path):
    """A private folder beside ``folder`` to write a bundle into, put in ``folder``'s place
    (``replace``) once the block completes, and removed whatever happens."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))  # renamed whole
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp's folder is private; a bundle is for readers
        replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # made by mkdtemp above: ours


def write_report_files(staging: Path, experiment: str, runs, predictions: dict, history: pd.DataFrame,
                       options: dict) -> None:
    """The report's files a bundle holds (``REPORT_FILES`` and its figures as PNG) into ``staging``."""
    write_report(experiment, runs, predictions, history, staging / "report", **options)
    for name in REPORT_FILES:
        if (staging / "report" / name).exists():
            shutil.copy(staging / "report" / name, staging / name)
    for png in (staging / "report").glob("*.png"):
        shutil.copy(png, staging / png.name)
    shutil.rmtree(staging / "report")  # inside staging: ours


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def writable(folder: Path) -> None:
    """Refuse, in one sentence, a ``--publish`` folder whose contents publishing would lose:
    only an absent or empty folder, or a bundle this project wrote, may be written."""
    here = Path.cwd().resolve()
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise AnalysisError(f"--publish {folder}: it is a {'link' if folder.is_symlink() else 'file'}, "
                            f"not a folder for a bundle: give a new folder, e.g. results/<name>")
    if here == folder.resolve() or folder.resolve() in here.parents:
        raise AnalysisError(f"--publish {folder}: that is the working directory or a folder above it, "
                            f"which a bundle would replace: give a new folder, e.g. results/<name>")
    if not folder.exists() or not any(folder.iterdir()):
        return
    if not is_bundle(folder):
        raise AnalysisError(f"--publish {folder}: the folder holds files that are not a results bundle "
                            f"this project wrote, which publishing would replace: give a new or empty "
                            f"folder (e.g. {folder / 'new-bundle'}), or move those files away")


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a bundle ``publish`` wrote and nothing else: its provenance and
    data files, matching it, its report files, and the figures its report shows."""
    try:
        meta = json.loads((folder / PROVENANCE).read_text())
        matches = all(sha256(folder / name) == meta["sha256"][name] for name in DATA_FILES)
        report = (folder / "report.md").read_text() if (folder / "report.md").is_file() else ""
    except (OSError, ValueError, KeyError, TypeError):
        return False
    own = {PROVENANCE, *DATA_FILES, *REPORT_FILES, *meta.get("diffs", {})}
    return matches and all(path.is_file() and not path.is_symlink() and (
        path.name in own or path.suffix == ".png" and f"]({path.name})" in report)
        for path in folder.iterdir())


def replace(new: Path, folder: Path) -> None:
    """Put the bundle ``new`` at ``folder`` (absent, empty, or a bundle, by ``writable``): the old
    bundle is renamed aside first and deleted only once ``new`` stands in its place."""
    writable(folder)  # again: the folder may have changed while the report was written
    if folder.exists() and any(folder.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
        folder.rename(old / "bundle")
        try:
            new.rename(folder)
        except OSError:
            (old / "bundle").rename(folder)
            raise
        shutil.rmtree(old)  # the previous bundle, checked by writable above
    else:
        if folder.exists():
            folder.rmdir()  # empty: rmdir deletes nothing else
        new.rename(folder)


def write_data(folder: Path, raw: pd.DataFrame, predictions: dict, history: pd.DataFrame) -> None:
    """runs.csv (floats written to round-trip exactly, the config as JSON), predictions.npz and
    history.csv."""
    runs = raw.assign(config=raw.config.map(lambda c: json.dumps(c, sort_keys=True)),
                      start_time=raw.start_time.map(lambda t: t.isoformat()))
    runs.to_csv(folder / RUNS, index=False)  # in the store's order: the analysis sees the same
    arrays = {}
    for run_id, saved in sorted(predictions.items()):
        arrays[f"{run_id}.indices"] = saved["indices"].astype(np.uint16 if saved["indices"].max() < 2**16 else np.int64)
        arrays[f"{run_id}.labels"] = saved["labels"].astype(np.uint8 if saved["labels"].max() < 256 else np.int16)
        arrays[f"{run_id}.predicted"] = saved["predicted"].astype(arrays[f"{run_id}.labels"].dtype)
    np.savez_compressed(folder / PREDICTIONS, **arrays)
    history.to_csv(folder / HISTORY, index=False)


def provenance(experiment: str, raw: pd.DataFrame, used: pd.DataFrame, folder: Path, command: str,
               options: dict) -> dict:
    counted = raw[raw.run_id.isin(set(used.run_id))]
    starts = counted.start_time
    ends = starts + pd.to_timedelta(counted.train_seconds.fillna(0), unit="s")
    members = counted.array.map(lambda a: len(a.split(":", 1)[1].split()) if isinstance(a, str) else 1)
    distinct = lambda column: sorted(counted[column].dropna().unique().tolist()) if column in counted else []
    return {
        "experiment": experiment,
        "published": now(),
        "analysis_command": command,
        "options": options,
        "runs": {"in_store": len(raw), "counted": len(counted)},
        "training": {"git_commits": distinct("git_sha"), "torch": distinct("torch"),
                     "machines": distinct("machine"), "commands": distinct("command"),
                     "precisions": distinct("precision")},
        "first_start": starts.min().isoformat(), "last_end": ends.max().isoformat(),
        "wall_hours": (ends.max() - starts.min()).total_seconds() / 3600,
        # a fused array's runs share its device: each member counts 1/M of the time
        "device_hours": float((counted.train_seconds.fillna(0) / members).sum() / 3600),
        "analysis": {"git_commit": git_sha(), "versions": versions(), "machine": machine()},
        "float_columns": [c for c in raw if raw[c].dtype.kind == "f"],  # how runs.csv reads back
        "sha256": {name: sha256(folder / name) for name in DATA_FILES},
    }


def versions() -> dict[str, str | None]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_diffs(folder: Path, tracking_uri: str, counted: pd.DataFrame) -> dict[str, list[str]]:
    """What the commits alone cannot say: the uncommitted changes the counted runs trained with
    (a run from a dirty checkout stores its ``git diff``) and the analysing checkout's own, one
    file per distinct diff: {file name: the run ids (or 'analysis') it belongs to}."""
    client, found = shared_client(tracking_uri), {}
    dirty = counted.run_id[counted.get("git_sha", pd.Series(dtype=str)).fillna("").str.endswith("+dirty")]
    with tempfile.TemporaryDirectory() as scratch:
        for run_id in dirty:
            if GIT_DIFF in {a.path for a in client.list_artifacts(run_id)}:
                text = Path(client.download_artifacts(run_id, GIT_DIFF, scratch)).read_text()
                found.setdefault(text, []).append(run_id)
    if own := redact(git_diff()):  # as a run stores its own: no URL password
        found.setdefault(own, []).append("analysis")
    files = {}
    for text, owners in found.items():
        name = f"diff-{short_hash(text)[:12]}.patch"
        (folder / name).write_text(text)
        files[name] = owners
    return files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read(folder: str | Path) -> tuple[pd.DataFrame, dict, pd.DataFrame, dict]:
    """(runs as ``load_runs`` gives them, predictions, history, provenance) of one bundle; a
    bundle whose data files do not match its provenance is refused in one sentence."""
    folder = Path(folder)
    if not (folder / PROVENANCE).is_file():
        raise AnalysisError(f"{folder} is no results bundle (no {PROVENANCE}): write one with "
                            f"python -m analysis --experiment NAME --publish {folder}")
    for name in (PROVENANCE, *DATA_FILES):  # its own files only: a link could point anywhere
        path = folder / name
        if path.is_symlink() or (path.exists() and path.resolve().parent != folder.resolve()):
            raise AnalysisError(f"{path} is a link, and a bundle is read from its own files only: "
                                f"copy the file into the bundle, or publish it again")
    try:
        meta = json.loads((folder / PROVENANCE).read_text())
        digests, floats = dict(meta["sha256"]), set(meta["float_columns"])
        if "experiment" not in meta or "metric" not in dict(meta.get("options") or {}):  # regenerate reads them
            raise KeyError("experiment, options.metric")
    except (ValueError, KeyError, TypeError) as e:
        raise AnalysisError(f"{folder / PROVENANCE} is not a bundle's provenance ({type(e).__name__}: "
                            f"{str(e)[:200]}): publish the bundle again from its tracking store") from None
    for name in DATA_FILES:
        if not (folder / name).is_file() or sha256(folder / name) != digests.get(name):
            raise AnalysisError(f"{folder / name} does not match {folder / PROVENANCE} (sha256 "
                                f"differs or the file is missing): the bundle was changed after it was "
                                f"published; publish it again from its tracking store")
    # text stays text (a hash of digits, a seed tag), numbers are the metrics' exact floats
    columns = pd.read_csv(folder / RUNS, nrows=0).columns
    raw = pd.read_csv(folder / RUNS, float_precision="round_trip",
                      dtype={c: float if c in floats else str for c in columns})
    raw["config"] = raw.config.map(json.loads)
    raw["start_time"] = pd.to_datetime(raw.start_time, format="ISO8601")
    predictions = read_predictions(folder / PREDICTIONS)
    history = epochs_from_one(pd.read_csv(folder / HISTORY, float_precision="round_trip"))
    return prepare(raw), predictions, history, meta


# All runs' indices, labels and predicted classes together: 1,000 runs of CIFAR-10's 10,000 test
# images, with room to spare. A bundle of more is refused before anything is expanded.
MAX_PREDICTIONS = 50_000_000


def read_predictions(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{run id: {indices, labels, predicted}} of a bundle's predictions.npz: integer arrays
    only, their declared sizes summed and bounded before any is expanded (a small file can
    declare billions of entries)."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = 0
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = header(member)
                if dtype.kind not in "iu":
                    raise AnalysisError(f"{path} holds {info.filename} of {dtype}, but a bundle's predictions "
                                        f"are integers: publish the bundle again from its tracking store")
                declared += math.prod(shape)
        if declared > MAX_PREDICTIONS:
            raise AnalysisError(f"{path} declares {declared:,} entries, more than the {MAX_PREDICTIONS:,} any "
                                f"bundle this project publishes holds: refusing to expand it")
        predictions = {}
        with np.load(path) as saved:
            for key in saved.files:
                run_id, field = key.rsplit(".", 1)
                predictions.setdefault(run_id, {})[field] = saved[key].astype(np.int64)
        return predictions
    except AnalysisError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise AnalysisError(f"{path} cannot be read as a bundle's predictions ({type(e).__name__}: "
                            f"{str(e)[:200]}): publish the bundle again from its tracking store") from None


def regenerate(folders: list[str | Path], out: str | Path) -> Path:
    """The report of one or more bundles (several machines' runs of one experiment, say), from
    the bundles alone, with the analysis options the first was published with."""
    frames, predictions, histories, metas = [], {}, [], []
    for folder in folders:
        frame, found, history, meta = read(folder)
        frames.append(frame)
        predictions.update(found)
        histories.append(history)
        metas.append(meta)
    frame = pd.concat(frames, ignore_index=True)
    name = " + ".join(meta["experiment"] for meta in metas)
    options = metas[0]["options"]
    runs = clean_or_explain(name, frame, options["metric"])
    out = Path(out)
    write_report(name, runs, predictions, pd.concat(histories, ignore_index=True), out, **options)
    return out
