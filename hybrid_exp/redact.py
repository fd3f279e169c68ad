"""Credentials never reach a run, a log or a saved config: ``scheme://user:password@host`` is
written ``scheme://user:***@host`` in MLflow params and artifacts, the composed-config tree,
Hydra's saved configs (``.hydra/*.yaml``, ``multirun.yaml``) and the sweep's results. Pass
passwords through the environment instead (MLFLOW_TRACKING_PASSWORD, PGPASSWORD): the URLs then
work as logged."""
import re
from pathlib import Path

# scheme://user:password@host in every form a URL credential takes: the password up to the
# first '@' on its line (slashes, quotes, spaces, percent-escapes and ':' included), and the
# ':' written '\:' as Hydra escapes it in sweep overrides (overrides.yaml, override_dirname).
CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s'\"\\]*)(?P<sep>\\?:)"
                         r"(?:(?!://)[^@\n])+?@")


def redact(text: str) -> str:
    return CREDENTIALS.sub(r"\g<scheme>\g<user>\g<sep>***@", text)


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
