"""Real training runs, tracked in a real MLflow SQLite store."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from analysis import load_runs
from hybrid_exp.dataset_files import load_cifar10
from hybrid_exp.errors import DataError, Diverged
from hybrid_exp.schema import git_diff
from hybrid_exp.train import train
from tests.helpers import SMALL, TINY


def real(cifar10_root, *overrides):
    return [f"data.root={cifar10_root}", "data.train_subset=2000", "data.val_size=500",
            "data.eval_size=1000", *TINY, *overrides]


def test_short_training_on_real_cifar10_learns_and_is_tracked(make_cfg, cifar10_root, monkeypatch):
    from hybrid_exp.module import Classifier

    tested, forward = [], Classifier.forward  # the images the test phase sends through the network
    monkeypatch.setattr(Classifier, "forward", lambda self, x: (
        tested.append(len(x)) if self._trainer and self._trainer.testing else None, forward(self, x))[1])
    cfg = make_cfg(*real(cifar10_root, "trainer.max_epochs=3"))
    metrics = train(cfg)[0].metrics
    assert sum(tested) == 10_000  # each test image once: the evaluation subset is among them
    assert metrics["test/error"] < 75, "chance is 90%: the network must clearly learn"

    runs = load_runs("hybrid-exp", cfg.logger.tracking_uri)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert (run.run_name, run.status, run.model, run.block, run.backbone, run.seed) == \
        ("separable-seed0", "FINISHED", "separable", "separable", "stacked", 0)
    assert run["test/error"] == pytest.approx(metrics["test/error"])
    assert run.params > 0 and run.mult_adds > run.params and len(run.config_hash) == 16

    client = MlflowClient(cfg.logger.tracking_uri)
    # MLflow 3's UI opens the experiment in its model-training view, not the GenAI one
    assert client.get_experiment_by_name("hybrid-exp").tags["mlflow.experimentKind"] == "custom_model_development"
    stored = client.get_run(run.run_id)
    assert stored.data.params["optim.lr"] == "0.1" and stored.data.params["seed"] == "0"
    assert stored.data.tags["execution"] == "eager"  # not compiled, no CUDA graph: on record
    (used,) = stored.inputs.dataset_inputs  # MLflow's own dataset record: the UI's Dataset column
    assert used.dataset.name == "CIFAR10 (2,000 training, 500 validation, 1,000 evaluation, 10,000 test)"
    assert used.dataset.digest == stored.data.tags["data_fingerprint"]
    assert str(cifar10_root) in used.dataset.source and used.tags[0].value == "training"
    history = client.get_metric_history(run.run_id, "val/error")
    assert [m.step for m in history] == [1, 2, 3]  # one point per epoch, step = epoch from 1
    for key in ("train/loss", "train/error", "val/loss", "lr", "epoch_seconds",
                "images_per_second", "test/loss"):
        assert key in stored.data.metrics, key
    dirty = ["git_diff.patch"] if git_diff() else []  # a checkout with uncommitted changes: what they are
    assert [a.path for a in client.list_artifacts(run.run_id)] == sorted(["config.yaml", *dirty, "model.pt",
                                                                         "test_predictions.npz"])
    assert 0 < stored.data.metrics["test_full/error"] < 100  # the whole 10,000-image test set

    # per-image evidence: each evaluation image's position in the test set, prediction, logits
    with np.load(client.download_artifacts(run.run_id, "test_predictions.npz")) as saved:
        indices, predicted, logits = saved["indices"], saved["predicted"], saved["logits"]
        assert (saved["labels"] == load_cifar10(cifar10_root)[3][saved["indices"]]).all()
    labels = load_cifar10(cifar10_root)[3]
    assert len(indices) == 1000 and (np.diff(indices) > 0).all() and logits.shape == (1000, 10)
    assert logits.dtype == np.float16 and (predicted == logits.astype(np.float32).argmax(1)).mean() > 0.99
    assert 100 * (predicted != labels[indices]).mean() == pytest.approx(metrics["test/error"])

    # the subset's metrics from the one pass equal a pass over the subset alone (evaluate: its
    # own batches of 256): the errors exactly, the loss to float32 round-off (other batches,
    # other kernels)
    from hybrid_exp.evaluate import evaluate

    for split, stage in (("subset", "test"), ("full", "test_full")):
        alone = evaluate(run.run_id, client, split)
        assert alone[f"evaluate/{split}/error"] == metrics[f"{stage}/error"]
        assert alone[f"evaluate/{split}/loss"] == pytest.approx(metrics[f"{stage}/loss"], rel=1e-5)


def test_seed_zero_is_reproducible_and_seed_one_differs(make_cfg):
    fast = ["data=synthetic", "data.train_subset=256", "data.val_size=64", "data.eval_size=128",
            *TINY, "trainer.max_epochs=1"]
    learned = lambda metrics: {k: v for k, v in metrics.items() if "loss" in k or "error" in k}
    first = learned(train(make_cfg(*fast, "seed=0"))[0].metrics)
    again = learned(train(make_cfg(*fast, "seed=0", "rerun=true"))[0].metrics)  # train it again
    other = learned(train(make_cfg(*fast, "seed=1"))[0].metrics)
    assert len(first) == 8 and first == again  # train, val, test subset, whole test set
    assert first["train/loss"] != other["train/loss"]


def test_variants_do_not_share_initial_weights(make_cfg):
    """Init draws from (seed, model config): the same seed gives different nets different streams."""
    from hybrid_exp.members import build_network

    stem = lambda cfg: build_network(cfg).stem[0].weight  # the training code's own seeding

    separable, standard = make_cfg("model=separable"), make_cfg("model=standard")
    assert not torch.equal(stem(separable), stem(standard))
    assert torch.equal(stem(separable), stem(make_cfg("model=separable")))


def test_divergence_fails_the_run_naming_epoch_and_step(make_cfg):
    cfg = make_cfg("data=synthetic", "data.train_subset=256", *TINY, "optim.lr=1e30")
    with pytest.raises(Diverged, match=r"non-finite loss at epoch 1, step \d+; lower optim.lr"):
        train(cfg)
    run = load_runs("hybrid-exp", cfg.logger.tracking_uri).iloc[0]
    assert run.status == "FAILED" and "non-finite loss at epoch 1" in run.error


def test_missing_data_stops_before_any_store_or_run_exists(make_cfg, tmp_path):
    """The data is read (and fingerprinted) before the store: no FAILED run beside the real ones."""
    cfg = make_cfg(f"data.root={tmp_path}/nowhere", "data.download=false", *TINY)
    with pytest.raises(DataError, match="no CIFAR-10 found"):
        train(cfg)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "checkpoints").exists()


def test_the_training_step_is_a_plain_sgd_loop_with_the_float_schedule(make_cfg, cifar10_root):
    """Manual optimization, the lr a device tensor the schedule writes each step: the same weights,
    bit for bit, as a plain loop with torch's LambdaLR on a float lr (validation in between)."""
    from hydra.utils import instantiate

    from hybrid_exp.fusion import per_member_cross_entropy
    from hybrid_exp.members import build_network
    from hybrid_exp.module import prepare_network, warmup_cosine

    cfg = make_cfg(*real(cifar10_root, "trainer.max_epochs=2", "optim.warmup_epochs=1"))
    train(cfg)
    (checkpoint,) = Path(cfg.checkpoint_dir).glob("*/last.ckpt")
    trained = torch.load(checkpoint, weights_only=True)["state_dict"]

    net = prepare_network(build_network(cfg), channels_last=True, compile=False)
    data = instantiate(cfg.data, seeds=[cfg.seed])
    data.setup()
    batches = data.train_dataloader()  # counts its epochs itself, without a trainer
    total, warmup = 2 * len(batches), len(batches)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=5e-4, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))
    for _ in range(2):
        for x, y in batches:
            optimizer.zero_grad()
            per_member_cross_entropy(net(x), y).sum().backward()
            optimizer.step()
            schedule.step()
    for key, value in net.state_dict().items():
        assert torch.equal(trained[f"net.{key}"], value), key


@pytest.mark.slow
def test_a_finished_run_stores_its_weights_and_evaluate_scores_them(make_cfg, cifar10_root):
    import subprocess
    import sys

    cfg = make_cfg(*real(cifar10_root, "trainer.max_epochs=2", "seed=[0,1]",  # an array: both stored
                         "callbacks=best_weights"))
    results = train(cfg)
    uri = cfg.logger.tracking_uri
    client = MlflowClient(uri)
    for result in results:
        assert "model.pt" in [a.path for a in client.list_artifacts(result.run_id)]
    evaluate = lambda *args: subprocess.run(
        [sys.executable, "-m", "hybrid_exp.evaluate", *args, "--tracking-uri", uri],
        capture_output=True, text=True, timeout=600)
    run = evaluate("separable-seed1", "--split", "full")  # by name; the weights load unfused
    assert run.returncode == 0, run.stderr[-2000:]
    stored = client.get_run(results[1].run_id).data.metrics
    assert stored["evaluate/full/error"] == pytest.approx(stored["test_full/error"], abs=0.1)
    run = evaluate(results[0].run_id, "--image-folder", str(cifar10_root / "test"))  # the same images
    assert run.returncode == 0, run.stderr[-2000:]
    stored = client.get_run(results[0].run_id).data.metrics
    assert stored["evaluate/image_folder/error"] == pytest.approx(stored["test_full/error"], abs=0.1)
    assert "separable-seed0" in run.stdout and "evaluate/image_folder/error" in run.stdout
    run = evaluate("separable-seed0", "--weights", "best.pt")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "evaluate/subset/best/error" in client.get_run(results[0].run_id).data.metrics
    missing = evaluate("standard-seed9")
    assert missing.returncode != 0 and "no run with id or name 'standard-seed9'" in missing.stderr


def test_callbacks_composed_in_config_join_the_trainer(make_cfg):
    """callbacks=early_stopping: a run whose val/error cannot improve by 100 points stops after
    its patience, and says so in its history; the resume checkpoint stays on."""
    cfg = make_cfg("data=synthetic", "data.train_subset=256", *TINY, "trainer.max_epochs=10",
                   "callbacks=early_stopping", "callbacks.early_stopping.patience=1",
                   "callbacks.early_stopping.min_delta=100")
    (result,) = train(cfg)
    assert result.status == "finished"
    history = MlflowClient(cfg.logger.tracking_uri).get_metric_history(result.run_id, "val/error")
    assert [m.step for m in history] == [1, 2]  # stopped after 2 of 10 epochs
    assert list(Path(cfg.checkpoint_dir).glob("*/last.ckpt"))


def test_best_weights_keep_each_members_best_epoch_and_survive_a_resume():
    """Member m's kept weights are those of the epoch of its lowest val/error, sliced to the
    unfused layout; the kept weights travel in the checkpoint's callback state."""
    from types import SimpleNamespace

    from hybrid_exp.callbacks import BestWeights
    from hybrid_exp.fusion import fuse

    net = fuse([torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)])
    errors = [(50.0, 40.0), (30.0, 45.0), (35.0, float("nan"))]  # best: member 0 epoch 2, member 1 epoch 1
    module = SimpleNamespace(net=net, members=2, failures={}, val_metrics=None)
    best, seen = BestWeights(), []
    for epoch, (e0, e1) in enumerate(errors):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(epoch)
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        module.val_metrics = [{"val/error": e0}, {"val/error": e1}]
        best.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), module)
    assert (best.best[0]["epoch"], best.best[0]["value"]) == (2, 30.0)  # epochs counted from 1
    assert (best.best[1]["epoch"], best.best[1]["value"]) == (1, 40.0)  # a NaN epoch is never best
    for member, epoch in ((0, 1), (1, 0)):  # the weights of that epoch (filled with its index)
        torch.nn.Linear(3, 2).load_state_dict(best.best[member]["state"])  # the unfused layout
        assert all(torch.all(v == epoch) for v in best.best[member]["state"].values())
    resumed = BestWeights()
    resumed.load_state_dict(torch.load(_saved(best.state_dict()), weights_only=True))
    assert resumed.best[0]["epoch"] == 2 and torch.equal(resumed.best[0]["state"]["weight"],
                                                          best.best[0]["state"]["weight"])


def test_best_weights_on_a_training_metric_is_refused_before_training(make_cfg):
    from hybrid_exp.checks import check_values
    from hybrid_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="best_weights: monitor a val/ metric.*monitor='train/loss'"):
        check_values(make_cfg("callbacks=best_weights", "callbacks.best_weights.monitor=train/loss"))


def test_a_fused_array_in_16_mixed_is_refused_in_one_sentence(make_cfg):
    from hybrid_exp.checks import check_config
    from hybrid_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="16-mixed cannot train a fused seed array"):
        check_config(make_cfg("seed=[0,1]", "trainer.precision=16-mixed", "model.width=8", "model.depth=1"))
    check_config(make_cfg("seed=0", "trainer.precision=16-mixed", "model.width=8", "model.depth=1"))  # one run may


def _saved(state):
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_best_weights_callback_stores_best_pt_without_changing_training(make_cfg):
    common = ["data=synthetic", "data.train_subset=256", *TINY, "trainer.max_epochs=3",
              "optim.lr=0.5", "seed=[0,1]"]
    plain_cfg = make_cfg(*common)
    plain = train(plain_cfg)
    cfg = make_cfg(*common, "callbacks=best_weights", "logger.experiment_name=with-best")
    from hybrid_exp.schema import config_hash
    assert config_hash(cfg) == config_hash(plain_cfg)  # storing best.pt is not a new config
    with_best = train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    for a, b in zip(plain, with_best):
        assert a.metrics["test/error"] == b.metrics["test/error"]  # training unchanged
        history = client.get_metric_history(b.run_id, "val/error")
        best = min(history, key=lambda m: (m.value, m.step))
        stored = client.get_run(b.run_id).data.metrics
        assert (stored["best/epoch"], stored["best/val/error"]) == (best.step, best.value)
        assert {"best.pt", "model.pt"} <= {x.path for x in client.list_artifacts(b.run_id)}
        assert "best.pt" not in {x.path for x in client.list_artifacts(a.run_id)}


def test_log_lines_print_above_the_live_bar_not_over_it():
    """While the rich bar is live, a console log handler writes through rich (which prints
    above the bar), and gets its own stream back afterwards."""
    import io
    import logging
    import sys

    import pytorch_lightning as pl
    from pytorch_lightning.demos.boring_classes import BoringModel

    from hybrid_exp.callbacks import EpochBar

    class Model(BoringModel):
        members, failures, metrics = 1, {}, [{}]

        def living_members(self):
            return [0]

    class LogsMidEpoch(pl.Callback):
        def on_train_batch_end(self, *args):
            logging.getLogger("hybrid_exp").warning("a line during training")

    screen = io.StringIO()
    handler = logging.StreamHandler(sys.__stdout__)
    logging.getLogger().addHandler(handler)
    try:
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                             enable_checkpointing=False, enable_model_summary=False,
                             callbacks=[EpochBar(console_kwargs={"file": screen, "force_terminal": True}),
                                        LogsMidEpoch()])
        trainer.fit(Model())
    finally:
        logging.getLogger().removeHandler(handler)
    assert "a line during training" in screen.getvalue()  # printed by rich, above the bar
    assert "Epoch 1/1" in screen.getvalue() and "Epoch 0" not in screen.getvalue()  # from 1
    assert handler.stream is sys.__stdout__


def test_a_non_finite_validation_or_test_metric_fails_the_run(make_cfg):
    """lr=1e4 for one epoch (in warm-up): the training loss stays finite (5e26) while the
    validation loss is NaN; a run must not FINISH with NaN metrics."""
    cfg = make_cfg("data=synthetic", "model.width=16", "model.depth=1", "trainer.max_epochs=1",
                   "optim.lr=1e4")
    with pytest.raises(Diverged, match=r"non-finite validation metric \(val/loss\) at epoch 1"):
        train(cfg)
    (run,) = load_runs("hybrid-exp", cfg.logger.tracking_uri).itertuples()
    assert run.status == "FAILED"
    error = MlflowClient(cfg.logger.tracking_uri).get_run(run.run_id).data.tags["error"]
    assert "non-finite validation metric" in error


def test_train_takes_its_names_from_the_config_without_hydra(make_cfg, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = make_cfg("data=synthetic", "data.train_subset=256", "data.val_size=64", "data.eval_size=128",
                   *TINY, "trainer.max_epochs=1")
    HydraConfig.instance().cfg = None  # a plain Python caller: no Hydra job around train()
    with open_dict(cfg):
        cfg.names = {"model": "my_separable", "block": "separable_bn"}
    [result] = train(cfg)
    tags = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id).data.tags
    assert (tags["setup"], tags["model"], tags["block"]) == ("my_separable+separable_bn", "my_separable", "separable_bn")


def test_train_from_a_notebook_names_its_runs_by_their_classes(tmp_path):
    """Hydra's compose API, then train(cfg), as in a notebook: no Hydra job, no names.* set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from hybrid_exp import config_dir
    from hybrid_exp.schema import config_hash

    HydraConfig.instance().cfg = None
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=reformulated_inception", "data=synthetic", "data.train_subset=256", "data.val_size=64",
            "data.eval_size=128", *TINY, "trainer.max_epochs=1",
            f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint_dir={tmp_path}/checkpoints"])
    HydraConfig.instance().cfg = None  # compose leaves its own behind; a notebook's kernel may not
    [result] = train(cfg)
    tags = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id).data.tags
    assert (tags["model"], tags["block"], tags["setup"]) == (
        "stacked", "reformulated_inception", "stacked+reformulated_inception")
    assert tags["config_hash"] == config_hash(cfg)  # run identity needs no Hydra runtime either


def test_a_batch_larger_than_a_synthetic_training_set_is_one_sentence_before_any_run(make_cfg, tmp_path):
    """data=synthetic has no size known before it is read: the check is where the splits are drawn."""
    cfg = make_cfg("data=synthetic", "data.train_subset=512", "data.batch_size=1024", *TINY[:2])
    with pytest.raises(DataError, match=r"^data.batch_size=1024 is larger than the 512 training images: "
                                        r"choose data.batch_size <= 512$"):
        train(cfg)
    assert not (tmp_path / "mlflow.db").exists()  # before the store: no run, FINISHED or not


def test_a_matched_preset_at_another_size_stops_before_any_run(make_cfg, tmp_path):
    """experiment=quick sets width 32 and depth 1: inception_matched is matched at width 36,
    depth 2 only; its name would claim a match it does not have."""
    from hybrid_exp.checks import check_match
    from hybrid_exp.errors import ConfigError

    cfg = make_cfg("model=inception_matched", "experiment=quick", "data=synthetic")
    with pytest.raises(ConfigError, match=r"^model=inception_matched matches the baseline's size at "
                                          r"model.width=36 only; model.width=32 un-matches it.*use "
                                          r"model=inception for other sizes"):
        train(cfg)
    assert not (tmp_path / "mlflow.db").exists()
    check_match(make_cfg("model=inception_matched"))  # at its own size: matched, no error


@pytest.mark.slow
def test_a_run_from_a_checkout_with_uncommitted_changes_keeps_them(make_cfg, monkeypatch, tmp_path):
    """The commit alone cannot say what a dirty checkout trained: its diff is the run's artifact."""
    from hybrid_exp import tracking

    change = "diff --git a/hybrid_exp/blocks.py b/hybrid_exp/blocks.py\n+# tried a variant\n"
    monkeypatch.setattr(tracking, "git_diff", lambda: change)
    cfg = make_cfg(*SMALL, "trainer.max_epochs=1")
    result = train(cfg)[0]
    saved = MlflowClient(cfg.logger.tracking_uri).download_artifacts(result.run_id, "git_diff.patch", str(tmp_path))
    assert Path(saved).read_text() == change


@pytest.mark.slow
def test_a_full_disk_under_the_checkpoints_is_one_sentence_and_the_run_resumes_after(small_disk, tmp_path):
    """No raw OSError: the run is interrupted (KILLED, saying why), and the same command, once
    there is space, finishes it in the same run."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "hybrid_exp", *SMALL, "model.width=32", "trainer.max_epochs=2",
               f"checkpoint_dir={small_disk}"]
    with open(small_disk / "filler", "wb", buffering=0) as filler:
        with pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 4096)
        filler.truncate(filler.tell() - 64 * 1024)  # room for the claim and run ids, not a checkpoint (~0.4 MB)
    full = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert lines[-1].startswith(f"no space left on the disk holding {small_disk}") and "free space there" in lines[-1]
    (run,) = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db").itertuples()
    assert run.status == "KILLED" and run.error.startswith("interrupted: no space left on the disk")
    (small_disk / "filler").unlink()
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    (resumed,) = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db").itertuples()
    assert (resumed.run_id, resumed.status) == (run.run_id, "FINISHED")


@pytest.mark.slow
def test_a_run_whose_artifacts_vanish_while_it_trains_does_not_end_finished(make_cfg, monkeypatch):
    """mlartifacts/ deleted mid-run: the evidence logged at the end recreates the folder, but the
    config.yaml logged at the start is gone: the run fails saying so, and a relaunch trains it."""
    import shutil

    import hybrid_exp.train as training

    stored = training.store_evidence

    def artifacts_deleted_first(module, net, data, runs, callbacks):
        shutil.rmtree(Path(make_cfg().logger.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts")
        stored(module, net, data, runs, callbacks)

    monkeypatch.setattr(training, "store_evidence", artifacts_deleted_first)
    cfg = make_cfg(*SMALL, "trainer.max_epochs=1")
    with pytest.raises(RuntimeError, match="config.yaml went missing from the store's artifacts"):
        result = train(cfg)[0]
        raise RuntimeError(result.error) if result.status == "failed" else AssertionError(result.status)
    (run,) = load_runs("hybrid-exp", cfg.logger.tracking_uri).itertuples()
    assert run.status == "FAILED"
    monkeypatch.setattr(training, "store_evidence", stored)
    assert train(cfg)[0].status == "finished"  # not skipped: nothing FINISHED



def test_a_modules_code_digest_ignores_its_docstrings_comments_and_layout_not_its_statements(tmp_path, monkeypatch):
    from hybrid_exp.schema import code_digest

    monkeypatch.syspath_prepend(str(tmp_path))
    versions = {"first": 'def f(x):\n    """Doubles."""\n    return 2 * x\n',
                "commented": '# a note\ndef f(x):\n    """Doubles x, now said better."""\n\n    return 2*x  # twice\n',
                "changed": 'def f(x):\n    """Doubles."""\n    return 3 * x\n'}
    digests = {}
    for name, text in versions.items():
        (tmp_path / f"unit_{name}.py").write_text(text)
        digests[name] = code_digest(f"unit_{name}")
    assert digests["first"] == digests["commented"] != digests["changed"]


@pytest.mark.slow
def test_an_edited_unit_is_trained_again_not_skipped_and_a_reworded_one_is_skipped(tmp_path):
    """A researcher edits the unit a finished grid trained: the relaunch says which module changed
    and trains it again; a comment alone changes nothing."""
    import os
    import shutil
    import subprocess
    import sys

    source = tmp_path / "source"
    shutil.copytree(Path(__file__).resolve().parent.parent / "hybrid_exp", source / "hybrid_exp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "hybrid_exp", *SMALL, "trainer.max_epochs=1"]
    env = {**os.environ, "PYTHONPATH": str(source)}
    run = lambda: subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    blocks = source / "hybrid_exp" / "blocks.py"
    blocks.write_text(blocks.read_text() + "\n# a comment about separable convolutions\n")
    reworded = run()
    assert reworded.returncode == 0 and "already FINISHED" in reworded.stderr + reworded.stdout
    blocks.write_text(blocks.read_text().replace("class Separable(", "class SeparableWithAScale(nn.Module):\n"
                                                  "    pass\n\n\nclass Separable(", 1))
    edited = run()
    out = edited.stderr + edited.stdout
    assert edited.returncode == 0 and "the code that builds and trains it changed since its FINISHED run" in out
    assert "(hybrid_exp.blocks): training it again" in out, out[-3000:]
    runs = load_runs("hybrid-exp", f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 2 and runs.code_fingerprint.nunique() == 2 and (runs.status == "FINISHED").all()


def test_the_progress_bar_shows_an_arrays_mean_and_sd_as_its_log_line_does():
    from types import SimpleNamespace

    from hybrid_exp.callbacks import EpochBar
    from hybrid_exp.module import members_summary

    metrics = [{"val/error": 10.0, "lr": 0.1}, {"val/error": 20.0, "lr": 0.1}, {"val/error": 90.0, "lr": 0.1}]
    array = SimpleNamespace(members=3, metrics=metrics, living_members=lambda: [0, 1])  # member 2 failed
    assert EpochBar().get_metrics(None, array) == {"val/error": "15 ± 7.1", "members": "mean ± sd over 2"}
    assert members_summary(metrics, [0, 1]) == {"val/error": "15 ± 7.1", "lr": "0.1"}  # the log line's values
    one = SimpleNamespace(members=1, metrics=metrics[:1], living_members=lambda: [0])
    assert EpochBar().get_metrics(None, one) == {"val/error": "10"}
