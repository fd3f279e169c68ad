"""Passwords never shown: redact() on every shape of URL and override, and the environment
variables the SLURM launcher hides them in (the end-to-end checks, with a real PostgreSQL and
server: test_tracking_server.py, test_slurm.py)."""
import os
import re

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hybrid_exp.redact import SECRET, hide_in_environment, redact, redact_tree


def test_redact_hides_passwords_in_urls_and_nothing_else():
    assert redact("postgresql+psycopg://mlflow:s3cr:t@db:5432/optuna") == "postgresql+psycopg://mlflow:***@db:5432/optuna"
    assert redact("http://admin:pw@host/x and https://u:v@h") == "http://admin:***@host/x and https://u:***@h"
    assert redact("sqlite:////tmp/a:b/mlflow.db") == "sqlite:////tmp/a:b/mlflow.db"
    assert redact("http://host:5000") == "http://host:5000"
    assert redact_tree({"a": ["mysql://u:p@h/d", 3], "b": None}) == {"a": ["mysql://u:***@h/d", 3], "b": None}


@pytest.mark.parametrize("password", ["s3cr3tMarker", "s3/cr3t", "s3'cr\"3t", "s3 cr3t", "s3%2Fcr%203t",
                                      "s3:cr3t"])
def test_redact_hides_every_shape_of_password_and_hydras_escaped_colon(password):
    for url, shown in [(f"postgresql://optuna:{password}@127.0.0.1:5432/db", "postgresql://optuna:***@127.0.0.1:5432/db"),
                       (f"postgresql://optuna\\:{password}@127.0.0.1\\:5432/db", "postgresql://optuna\\:***@127.0.0.1\\:5432/db"),
                       (f"postgresql+psycopg\\://optuna\\:{password}@127.0.0.1\\:5432/db",  # a sweep's job
                        "postgresql+psycopg\\://optuna\\:***@127.0.0.1\\:5432/db")]:
        for text in (url, f"hydra.sweeper.storage={url}", f"- logger.tracking_uri='{url}' seed=1"):
            redacted = redact(text)
            assert password not in redacted and shown in redacted, (text, redacted)


@pytest.mark.parametrize("password", ["s3cr3tMarker", "s3/cr3t", "s3 cr3t", "s3%2Fcr%203t", "s3:cr3t", "s3,c=r(3)t"])
def test_a_password_hidden_in_the_environment_resolves_back_from_a_config_and_an_override(password, monkeypatch):
    """What the SLURM launcher pickles for its jobs: the URL with an oc.env interpolation in
    place of the password, which the job (inheriting the environment) resolves back."""
    for name in [k for k in os.environ if k.startswith(SECRET)]:
        monkeypatch.delenv(name)
    url = f"postgresql+psycopg://optuna:{password}@127.0.0.1:5432/db"
    hidden = hide_in_environment(url)
    assert password not in hidden and hide_in_environment(url) == hidden  # one variable per password
    assert OmegaConf.create({"uri": hidden}).uri == url
    monkeypatch.setenv("KEEP", "1")  # names stay unique whatever else the environment holds
    escaped = "logger.tracking_uri=" + re.sub(r"([\\()\[\]{}:=, \t])", r"\\\1", url)  # as Hydra's sweeper writes it
    hidden = hide_in_environment(escaped, override=True)
    assert password not in hidden
    override = OverridesParser.create().parse_override(hidden)
    assert OmegaConf.create({"uri": override.value()}).uri == url
    assert hide_in_environment(hidden, override=True) == hidden  # hidden already: left alone


def test_a_config_handed_to_slurm_jobs_holds_no_password_and_resolves_as_before(monkeypatch):
    from hydra_plugins.hybrid_exp_launcher.slurm import hide_credentials

    for name in [k for k in os.environ if k.startswith(SECRET)]:
        monkeypatch.delenv(name)
    url = "postgresql+psycopg://optuna:s3cr3t@127.0.0.1:5432/db"
    config = OmegaConf.create({
        "logger": {"tracking_uri": url, "experiment_name": "x", "same": "${logger.tracking_uri}"},
        "stores": [url, 3, None], "width": "???",
        "hydra": {"overrides": {"task": ["logger.tracking_uri=" + url.replace(":", "\\:"), "seed=1"]}}})
    hide_credentials(config)
    written = OmegaConf.to_yaml(config)
    assert "s3cr3t" not in written and "???" in written  # a missing value stays missing
    assert config.logger.tracking_uri == url and config.logger.same == url and config.stores[0] == url
    override = OverridesParser.create().parse_override(config.hydra.overrides.task[0])
    assert OmegaConf.create({"uri": override.value()}).uri == url



def test_a_run_that_fails_after_composition_shows_no_password_on_the_terminal_or_in_a_file(tmp_path):
    """Hydra's own "Error executing job with overrides: [...]" line quotes the command line; the
    process's streams hide every URL password (process.setup), and the run's tags do too."""
    import subprocess
    import sys

    marker = f"marker{os.getpid()}pw"  # made here: not in this file's text (a dirty checkout's diff)
    run = subprocess.run([sys.executable, "-m", "hybrid_exp", "data=synthetic", "model.width=8", "model.depth=1",
                          "trainer.max_epochs=1", f"tags=[postgresql://u:{marker}@127.0.0.1/db]",
                          "trainer.gradient_clip_val=abc"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1 and "Error executing job with overrides" in run.stderr, run.stderr[-2000:]
    assert "postgresql://u:***@127.0.0.1/db" in run.stderr and marker not in run.stdout + run.stderr
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "mlflow.db" for path in written)
    assert not [path for path in written if marker.encode() in path.read_bytes()]


def test_the_redacted_stream_hides_passwords_and_is_the_stream_otherwise():
    import io

    from hybrid_exp.redact import RedactedStream

    screen = io.StringIO()
    stream = RedactedStream(screen)
    assert stream.write("at http://alice:pw@host:5000/x\n") == len("at http://alice:pw@host:5000/x\n")
    stream.write("plain\n")
    assert screen.getvalue() == "at http://alice:***@host:5000/x\nplain\n" and stream.getvalue() == screen.getvalue()
