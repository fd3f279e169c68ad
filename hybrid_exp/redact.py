"""Credentials never reach a run, a log or a saved config: ``scheme://user:password@host`` is
written ``scheme://user:***@host`` in MLflow params and artifacts, the composed-config tree,
Hydra's saved configs (``.hydra/*.yaml``, ``multirun.yaml``) and the sweep's results. Pass
passwords through the environment instead (MLFLOW_TRACKING_PASSWORD, PGPASSWORD): the URLs then
work as logged. A grid submitted to a cluster moves them there itself (``hide_in_environment``)."""
import os
import re
from pathlib import Path

# scheme://user:password@host in every form a URL credential takes: the password up to the
# first '@' on its line (slashes, quotes, spaces, percent-escapes and ':' included), and each
# ':' written '\:' as Hydra escapes it in sweep overrides (overrides.yaml, override_dirname).
CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][\w+.-]*\\?://)(?P<user>[^:/@\s'\"\\]*)(?P<sep>\\?:)"
                         r"(?P<password>(?:(?!://)[^@\n])+?)@")
SECRET = "HYBRID_EXP_SECRET_"  # the environment variables that hold them for cluster jobs


def redact(text: str) -> str:
    return CREDENTIALS.sub(r"\g<scheme>\g<user>\g<sep>***@", text)


class RedactedStream:
    """A text stream that writes what it is given with every URL password hidden: the process's
    stdout and stderr (hybrid_exp.process), so that no library's line (Hydra's "Error executing
    job with overrides", a traceback quoting a URL) shows one."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text) if "@" in text else text)
        return len(text)

    def __getattr__(self, name: str):  # isatty, fileno, flush, encoding: the stream's own
        return getattr(self.stream, name)


def redact_tree(node):
    """A plain (resolved) config container with every string redacted."""
    if isinstance(node, dict):
        return {k: redact_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [redact_tree(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def redact_files(folder: Path) -> None:
    """Rewrite the YAML files directly in ``folder`` (Hydra's saved configs) without credentials."""
    for path in Path(folder).glob("*.yaml"):
        text = path.read_text()
        if CREDENTIALS.search(text):
            path.write_text(redact(text))


def hide_in_environment(text: str, override: bool = False) -> str:
    """``text`` with each URL password written ``${oc.env:HYBRID_EXP_SECRET_<n>}`` and the
    password itself in this process's environment under that name: a job submitted from here
    inherits the environment and resolves the URL back, while what the launcher pickles for it
    holds no password. ``override``: the text is a Hydra override, where special characters
    are backslash-escaped (the environment gets the password as it is meant)."""
    def hide(match: re.Match) -> str:
        password = match["password"]
        if password.startswith("${"):  # an interpolation (oc.env) already
            return match[0]
        if override:
            password = re.sub(r"\\([\\()\[\]{}:=, \t])", r"\1", password)
        name = next((k for k, v in os.environ.items() if k.startswith(SECRET) and v == password), None)
        if name is None:
            name = f"{SECRET}{sum(k.startswith(SECRET) for k in os.environ)}"
            os.environ[name] = password
        return f"{match['scheme']}{match['user']}{match['sep']}${{oc.env:{name}}}@"
    return CREDENTIALS.sub(hide, text)
