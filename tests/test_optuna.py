"""hydra/sweeper=optuna: persistent, resumable, pruning, parallel, failure-tolerant sweeps."""
import subprocess
import sys

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient

from analysis import load_runs
from hydra_plugins.hybrid_exp_sweeper.optuna_sweeper import distribution

SWEEP = ["hydra/sweeper=optuna", "hydra.sweeper.n_jobs=2", "hydra.launcher.n_jobs=2",
         "hydra.sweeper.sampler.seed=0", "model.width=8", "model.depth=1", "data.batch_size=64",
         "optim.warmup_epochs=0"]
SYNTHETIC = ["data=synthetic", "data.train_subset=256", "data.val_size=64", "data.eval_size=64"]


def sweep(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hybrid_exp", "-m", *SWEEP, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1200)


def trials(tmp_path):
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{tmp_path}/optuna.db")
    return study, study.trials


@pytest.mark.parametrize("text, expected", [
    ("interval(0.1, 0.5)", optuna.distributions.FloatDistribution(0.1, 0.5)),
    ("tag(log, interval(1e-5, 1e-3))", optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)),
    ("tag(int, interval(1, 8))", optuna.distributions.IntDistribution(1, 8)),
    ("range(16, 65, 16)", optuna.distributions.IntDistribution(16, 64, step=16)),
    ("choice(32, 64, 96)", optuna.distributions.CategoricalDistribution([32, 64, 96])),
    ("separable,hybrid", optuna.distributions.CategoricalDistribution(["separable", "hybrid"])),
    # as hydra-optuna-sweeper reads them (its own test cases)
    ("choice(true, false)", optuna.distributions.CategoricalDistribution([True, False])),
    ("choice('hello', 'world')", optuna.distributions.CategoricalDistribution(["hello", "world"])),
    ("shuffle(range(1,3))", optuna.distributions.CategoricalDistribution([1, 2])),
    ("range(1,3)", optuna.distributions.IntDistribution(1, 3)),  # the end included
    ("interval(1, 5)", optuna.distributions.FloatDistribution(1, 5)),
    ("int(interval(1, 5))", optuna.distributions.IntDistribution(1, 5)),
    ("tag(log, interval(1, 5))", optuna.distributions.FloatDistribution(1, 5, log=True)),
    ("tag(log, int(interval(1, 5)))", optuna.distributions.IntDistribution(1, 5, log=True)),
    ("range(0.5, 5.5, step=1)", optuna.distributions.FloatDistribution(0.5, 5.5, step=1)),
])
def test_search_space_follows_hydras_grammar(text, expected):
    (override,) = OverridesParser.create().parse_overrides([f"key={text}"])
    assert distribution(override) == expected


def sweeper(**kwargs):
    from omegaconf import OmegaConf

    from hydra_plugins.hybrid_exp_sweeper.optuna_sweeper import OptunaSweeper

    made = OptunaSweeper(optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner(), **kwargs)
    made.config = OmegaConf.create({"model": {"width": 16}})
    return made


def test_a_key_pinned_on_the_command_line_leaves_the_search_space():
    search = sweeper(params={"model.width": "choice(32, 64)", "optim.lr": "interval(0.1, 0.5)"})
    space, fixed = search.search_space(["model.width=64", "seed=3"])
    assert set(space) == {"optim.lr"} and fixed == ["model.width=64", "seed=3"]
    space, fixed = search.search_space(["optim.lr=0.2"])
    assert set(space) == {"model.width"} and fixed == ["optim.lr=0.2"]


def conditional_space(cfg, trial):
    """A custom search space: momentum is searched only for wide networks."""
    if trial.params["model.width"] >= 64:
        trial.suggest_float("optim.momentum", 0.8, 0.99)
    assert cfg.model.width == 16  # the sweep's config is handed over


def test_custom_search_space_adds_conditional_parameters():
    search = sweeper(params={"model.width": "choice(32, 64)"},
                     custom_search_space="tests.test_optuna.conditional_space")
    space, _ = search.search_space([])
    study = optuna.create_study()
    asked = [search.ask(study, space) for _ in range(12)]
    for trial in asked:
        assert ("optim.momentum" in trial.params) == (trial.params["model.width"] == 64)
    assert {t.params["model.width"] for t in asked} == {32, 64}


def test_the_study_run_names_its_storage_without_a_password_and_from_anywhere(tmp_path, monkeypatch):
    from hydra_plugins.hybrid_exp_sweeper.optuna_sweeper import dashboard_url

    monkeypatch.chdir(tmp_path)
    assert dashboard_url("sqlite:///optuna.db") == f"sqlite:///{tmp_path}/optuna.db"
    assert dashboard_url("sqlite:////abs/optuna.db") == "sqlite:////abs/optuna.db"
    assert "secret" not in dashboard_url("postgresql://me:secret@db:5432/optuna")


def test_the_grid_sampler_needs_values_it_can_enumerate():
    from hydra_plugins.hybrid_exp_sweeper.optuna_sweeper import grid_values

    assert grid_values("k", optuna.distributions.IntDistribution(1, 3)) == [1, 2, 3]
    assert grid_values("k", optuna.distributions.CategoricalDistribution(["a", "b"])) == ["a", "b"]
    with pytest.raises(ValueError, match="so optim.lr needs choice"):
        grid_values("optim.lr", optuna.distributions.FloatDistribution(0.1, 0.5))


@pytest.mark.slow
def test_the_grid_sampler_tries_every_combination_once(tmp_path):
    run = sweep(*SYNTHETIC, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=10",
                "model.width=choice(8,16)", "optim.lr=choice(0.05,0.1)",
                "trainer.max_epochs=1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    study, done = trials(tmp_path)
    assert len(done) == 4 and all(t.state.name == "COMPLETE" for t in done)  # capped at the grid
    assert sorted((t.params["model.width"], t.params["optim.lr"]) for t in done) == [
        (8, 0.05), (8, 0.1), (16, 0.05), (16, 0.1)]
    best = next(tmp_path.glob("multirun/*/*/best.yaml")).read_text()  # what its values were tuned under
    results = yaml.safe_load(next(tmp_path.glob("multirun/*/*/optimization_results.yaml")).read_text())
    assert "# tuned under: data._target_=hybrid_exp.data.Synthetic" in best and "trainer.max_epochs=1" in best
    assert results["protocol"] in best and "optim.momentum=0.9" in results["protocol"]


@pytest.mark.slow
def test_sweep_on_real_cifar10_is_tracked_and_resumes_running_only_missing_trials(tmp_path, cifar10_root):
    real = [f"data.root={cifar10_root}", "data.train_subset=500", "data.val_size=200",
            "data.eval_size=200", "trainer.max_epochs=2", "optim.lr=tag(log, interval(0.01, 0.3))",
            "optim.weight_decay=tag(log, interval(1e-5, 1e-3))"]
    first = sweep(*real, "hydra.sweeper.n_trials=6", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    study, done = trials(tmp_path)
    assert [t.state.name for t in done] == ["COMPLETE"] * 6
    results = yaml.safe_load(next(tmp_path.glob("multirun/*/*/optimization_results.yaml")).read_text())
    assert results["best_value"] == study.best_value and set(results["best_params"]) == {
        "optim.lr", "optim.weight_decay"}
    best = next(tmp_path.glob("multirun/*/*/best.yaml")).read_text()
    assert best.startswith("# @package _global_") and "optim:" in best
    shown = study.best_trial  # the log's last word: which trial, its value, its parameters
    assert (f"Best: trial {shown.number}, val/error {shown.value:.4g} with optim.lr={shown.params['optim.lr']} "
            f"optim.weight_decay={shown.params['optim.weight_decay']} (of 6 trials") in first.stdout + first.stderr

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = load_runs("hybrid-exp", uri)
    assert len(runs) == 6 and (runs.status == "FINISHED").all()
    client = MlflowClient(uri)
    tags = [client.get_run(r).data.tags for r in runs.run_id]
    assert sorted(int(t["optuna.trial_number"]) for t in tags) == list(range(6))
    assert sorted(runs.run_name) == [f"separable-trial{i}-seed0" for i in range(6)]  # told apart
    parents = {t["mlflow.parentRunId"] for t in tags}
    assert len(parents) == 1
    parents_id = parents.pop()
    parent_tags = client.get_run(parents_id).data.tags
    assert parent_tags["optuna.study_name"] == study.study_name
    assert parent_tags["optuna.storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"  # opens from anywhere
    assert f"`optuna-dashboard sqlite:///{tmp_path / 'optuna.db'}`" in parent_tags["mlflow.note.content"]

    resumed = sweep(*real, "hydra.sweeper.n_trials=8", cwd=tmp_path)  # the same command, more trials
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, done = trials(tmp_path)
    assert len(done) == 8 and all(t.state.name == "COMPLETE" for t in done)
    assert "6 of 8 trials done" in resumed.stderr + resumed.stdout
    assert len(load_runs("hybrid-exp", uri)) == 8  # exactly 2 new trials ran
    assert len({tuple(t.params.values()) for t in done}) == 8  # none replayed an earlier one
    assert client.get_run(parents_id).info.status == "FINISHED"


@pytest.mark.slow
def test_pruner_stops_hopeless_trials_through_the_storage(tmp_path, cifar10_root):
    run = sweep(f"data.root={cifar10_root}", "data.train_subset=500", "data.val_size=200",
                "data.eval_size=200", "trainer.max_epochs=3", "optim.lr=choice(0.2,0.00001)",
                "hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=4",
                "rerun=true",  # a repeated config trains again (else it reuses its stored result)
                "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                "+hydra.sweeper.pruner.upper=85.0", "+hydra.sweeper.pruner.n_warmup_steps=2",
                cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    _, done = trials(tmp_path)
    states = {t.params["optim.lr"]: t.state.name for t in done}
    assert states == {0.2: "COMPLETE", 0.00001: "PRUNED"}, [(t.params, t.state) for t in done]
    pruned = [t for t in done if t.state.name == "PRUNED"]
    assert all(t.last_step == 2 for t in pruned)  # reported epochs 1 and 2 (steps = epochs), then stopped
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    killed = runs[runs.status == "KILLED"]
    assert len(killed) == len(pruned)
    assert all("pruned by Optuna at epoch 2" in client.get_run(r).data.tags["pruned"] for r in killed.run_id)
    logged = run.stdout + run.stderr + "".join(p.read_text() for p in tmp_path.rglob("*.log"))
    said = [line for line in logged.splitlines() if "KILLED: pruned by Optuna" in line]
    assert said and all("[INFO]" in line for line in said)  # the sweep working as meant: no ERROR


@pytest.mark.slow
def test_failing_trial_fails_the_trial_not_the_sweep_up_to_max_failure_rate(tmp_path):
    (tmp_path / "tolerant").mkdir()
    (tmp_path / "strict").mkdir()
    tolerant = sweep(*SYNTHETIC, "trainer.max_epochs=1", "optim.lr=choice(0.1,1e30)",
                     "hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=4",
                     "hydra.sweeper.max_failure_rate=0.9", cwd=tmp_path / "tolerant")
    assert tolerant.returncode == 0, tolerant.stderr[-3000:]
    _, done = trials(tmp_path / "tolerant")
    assert {t.state.name for t in done} == {"COMPLETE", "FAIL"}
    assert all(t.params["optim.lr"] == 1e30 for t in done if t.state.name == "FAIL")

    strict = sweep(*SYNTHETIC, "trainer.max_epochs=1", "optim.lr=choice(1e30)",
                   "hydra.sweeper.n_trials=4", cwd=tmp_path / "strict")
    assert strict.returncode != 0
    assert "Traceback" not in strict.stderr
    stopped = next(line for line in strict.stderr.splitlines() if "trials failed" in line)
    assert "2 of 2 trials failed, more than hydra.sweeper.max_failure_rate=0.0; trial 1: " in stopped
    assert "non-finite loss" in stopped  # the trial's own error, not only a count
    _, done = trials(tmp_path / "strict")
    assert len(done) == 2  # stopped after the first batch
    client = MlflowClient(f"sqlite:///{tmp_path / 'strict'}/mlflow.db")
    (study_run,) = client.search_runs([client.get_experiment_by_name("hybrid-exp").experiment_id],
                                      "tags.`hybrid_exp.kind` = 'study'")
    assert study_run.info.status == "FAILED"  # ended with the sweep, not left RUNNING


@pytest.mark.slow
def test_several_objectives_give_a_pareto_front(tmp_path):
    run = sweep(*SYNTHETIC, "trainer.max_epochs=1", "optim.lr=tag(log, interval(0.01, 0.3))",
                "objective=[val/error,val/loss]", "hydra.sweeper.direction=[minimize,minimize]",
                "hydra/sweeper/sampler=nsgaii", "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    study, done = trials(tmp_path)
    assert all(len(t.values) == 2 for t in done)
    results = yaml.safe_load(next(tmp_path.glob("multirun/*/*/optimization_results.yaml")).read_text())
    assert {s["trial"] for s in results["solutions"]} == {t.number for t in study.best_trials}


def test_tuning_without_a_validation_split_stops_with_a_clear_message(tmp_path):
    run = sweep(*SYNTHETIC, "data.val_size=0", "hparams_search=separable_optuna", cwd=tmp_path)
    assert run.returncode != 0
    assert "data.val_size=0 holds none out: set data.val_size" in run.stderr
    assert not (tmp_path / "optuna.db").exists()


def test_a_misspelt_objective_stops_the_sweep_before_any_trial(tmp_path):
    """objective=val/eror used to fall back to test/error: a sweep tuning on the test subset."""
    run = sweep(*SYNTHETIC, "hparams_search=separable_optuna", "objective=val/eror", cwd=tmp_path)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "objective=val/eror names no metric a run logs: did you mean objective=val/error?" in run.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_objective_no_run_logged_is_no_value_rather_than_the_test_error():
    from omegaconf import OmegaConf

    from hybrid_exp.job import objective

    metrics = {"test/error": 12.0, "train/loss": 0.5}  # a run without a validation split
    assert objective(OmegaConf.create({"objective": "val/error"}), metrics) is None
    assert objective(OmegaConf.create({"objective": ["val/error", "train/loss"]}), metrics) == [None, 0.5]


@pytest.mark.parametrize("group, option", [
    *[("sampler", s) for s in ("tpe", "random", "cmaes", "qmc", "gp", "nsgaii")],
    *[("pruner", p) for p in ("none", "median", "hyperband")]])
def test_every_sampler_and_pruner_preset_builds(group, option):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hybrid_exp import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=optuna", f"hydra/sweeper/{group}={option}"],
                      return_hydra_config=True)
    built = instantiate(cfg.hydra.sweeper[group])
    base = optuna.samplers.BaseSampler if group == "sampler" else optuna.pruners.BasePruner
    assert isinstance(built, base)


def test_a_trials_value_reads_the_same_in_its_trial_line_the_summary_and_the_best_line(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from hybrid_exp.job import JobRecord, Result
    from hydra_plugins.hybrid_exp_launcher.summary import results_table
    from hydra_plugins.hybrid_exp_sweeper.optuna_sweeper import trial_value

    JobRecord("separable", [Result(0, "finished", {"test/error": 31.25, "val/error": 29.8765}, "r")], 0, 60.0
              ).write(tmp_path)
    job = JobReturn(overrides=["optim.lr=0.1", "seed=0"], cfg=OmegaConf.create({"objective": "val/error"}),
                    hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}}),
                    status=JobStatus.COMPLETED, _return_value=29.8765)
    header, row = results_table([job])
    assert header.split()[-1] == "val/error" and row.split()[-1] == "29.88" and "31.25" in row
    assert trial_value(OmegaConf.create({"objective": "val/error"}), [29.8765]) == "val/error 29.88"
