"""``python -m hybrid_exp.variants_table``: regenerate the generated tables in docs/variants.md.

The table lists every ``model=`` preset at its default size (and the FractalNet and DarkNet
presets with separable units too), with parameter counts and multiply-adds measured on the built
network, so the numbers can never drift from the code.
"""
import re
from pathlib import Path

from hydra import compose, initialize_config_dir

from hybrid_exp import config_dir
from hybrid_exp.module import complexity
from hybrid_exp.registry import build

DOC = Path(__file__).resolve().parent.parent / "docs" / "variants.md"
START, END = "<!-- generated: python -m hybrid_exp.variants_table -->", "<!-- end of generated table -->"


def presets() -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / "model").glob("*.yaml"))


def table() -> str:
    """Every preset with its own unit; the other backbones (Figs. 5-6) with separable units too."""
    rows = ["| `model=` | backbone | unit (`model/block`) | params | multiply-adds (32x32) |",
            "| --- | --- | --- | ---: | ---: |"]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        for name in presets():
            for swap in ([], ["model/block=separable"]):
                cfg = compose("config", overrides=[f"model={name}", *swap], return_hydra_config=True)
                backbone = cfg.model._target_.rpartition(".")[2].lower()
                if swap and backbone == "stacked":
                    continue  # a stacked preset with separable units is model=separable
                counts = complexity(build(cfg, "model"))
                rows.append(f"| `{name}` | {backbone} | `{cfg.hydra.runtime.choices['model/block']}` | "
                            f"{counts['params']:,} | {counts['mult_adds']:,} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` with the part between the markers replaced by a freshly generated table."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{DOC} lacks the markers {START} ... {END}")
    return pattern.sub(lambda _: f"{START}\n{table()}\n{END}", text)


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
    print(f"wrote {DOC}")
