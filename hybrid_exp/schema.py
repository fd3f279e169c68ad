"""The run schema, read by training (hybrid_exp.tracking writes it) and by the analysis (which
rebuilds it from a run's params where older runs lack its tags). Plain data: no torch, no MLflow.

A run's identity is its config hash (the resolved config without ``UNHASHED_KEYS``); its setup
the same without the seed; its protocol the ``PROTOCOL_KEYS`` part: what setups are compared
under. The ``data_fingerprint`` tag names the pixels a run saw (the decoded dataset's digest):
the same config on other pixels (the official files, a JPEG copy) is another experiment.
"""
import hashlib

# Keys that say where things are, or how they are logged, launched or executed: not what is
# trained (precision stays hashed, resolved: bf16 and fp32 runs are different experiments).
UNHASHED_KEYS = ("names", "logger", "tags", "grid", "data.root", "data.download", "rerun", "checkpoint_dir", "objective",
                 "optuna", "trainer.compile", "trainer.benchmark", "trainer.channels_last",
                 "trainer.cuda_graph", "trainer.system_metrics", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                 "trainer.log_every_n_steps", "trainer.profiler", "trainer.default_root_dir",
                 "trainer.enable_autolog_hparams", "trainer.model_registry", "trainer.enable_checkpointing",
                 "trainer.num_sanity_val_steps", "callbacks.best_weights")
# Keys added after runs were logged, left out of the hash at their default: a new option
# leaves every finished config's hash as it was.
DEFAULTS_OUT_OF_HASH = {"optim.depthwise_weight_decay": None}
# The final metrics every run logs (errors in %): what a job's ``objective`` may name.
METRICS = tuple(f"{split}/{kind}" for split in ("train", "val", "test", "test_full")
                for kind in ("loss", "error")) + ("lr", "epoch_seconds", "images_per_second")
# What a setup is compared under: runs of different setups pair only on the same protocol.
PROTOCOL_KEYS = ("data", "optim", "trainer.max_epochs", "trainer.precision", "trainer.accelerator")
# Tags every training run carries: what it is, its identity, and where and how it ran (the
# machine, torch, the job's command, the array it was fused in, eager or compiled: a results
# bundle's provenance).
TAGS = ("setup", "model", "block", "backbone", "seed", "precision", "config_hash", "setup_hash",
        "protocol", "protocol_hash", "data_fingerprint", "git_sha", "error", "array", "machine",
        "torch", "command", "execution")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hashed(key: str) -> bool:
    """Whether a flattened config key ('optim.lr') is part of what a run trains."""
    return not any(key == k or key.startswith(k + ".") for k in UNHASHED_KEYS)


def protocol_text(flat: dict[str, str]) -> str:
    """'data.batch_size=128, ..., trainer.precision=32-true' from a flattened config."""
    protocol = {k: v for k, v in flat.items() if hashed(k) and (
        k in PROTOCOL_KEYS or k.startswith(tuple(f"{p}." for p in PROTOCOL_KEYS)))}
    return ", ".join(f"{k}={v}" for k, v in sorted(protocol.items()))
