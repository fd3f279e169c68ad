"""The house's shape: no import circle (at module or function level), one family of user errors."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("hybrid_exp", "hydra_plugins", "analysis")


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the packages (a package is its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The house's modules ``name`` imports anywhere in its file (a function's body too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package up
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known and target != name}
    return found


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph``, as the modules along it, or None."""
    state, stack = {}, []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return stack[stack.index(other):] + [other]
            if other not in state and (found := visit(other)):
                return found
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_circle_finder_finds_a_circle():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back_even_inside_a_function():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = circle(graph)
    assert found is None, "import circle: " + " -> ".join(found)


@pytest.mark.parametrize("module", ["hybrid_exp.checks", "hybrid_exp.dataset_files", "hybrid_exp.store",
                                    "hybrid_exp.module", "analysis.runs", "analysis.figures",
                                    "hydra_plugins.hybrid_exp_sweeper.optuna_sweeper"])
def test_errors_are_raised_from_the_one_family_not_defined_again(module):
    """Every exception class a user can meet lives in hybrid_exp.errors."""
    tree = ast.parse(modules()[module].read_text())
    defined = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
               and any(getattr(base, "id", "").endswith(("Error", "Exception")) for base in node.bases)]
    assert defined == []


def test_only_the_errors_module_turns_an_error_into_a_sentence_and_an_exit():
    """A sentence reaches the terminal through errors.reported/leave alone: no entry point calls
    sys.exit or raises SystemExit with a message of its own."""
    found = []
    for name, path in modules().items():
        if name == "hybrid_exp.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("SystemExit", "sys.exit") and node.args \
                    and not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, int)) \
                    and ast.unparse(node.args[0]) != "main()":
                found.append(f"{name}:{node.lineno}")
    assert found == []


def test_every_name_taken_from_a_house_module_is_there():
    """``from hybrid_exp import tracking`` then ``tracking.connect``: a name that moved away is an
    AttributeError only where that line runs (a sweep's parent run, say); found here at once."""
    import importlib

    missing = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules():
                        aliases[alias.asname or alias.name] = full
                    elif not hasattr(importlib.import_module(node.module), alias.name):
                        missing.append(f"{name}:{node.lineno} from {node.module} import {alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if not hasattr(importlib.import_module(aliases[node.value.id]), node.attr):
                    missing.append(f"{name}:{node.lineno} {node.value.id}.{node.attr}")
    assert missing == []
