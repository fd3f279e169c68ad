"""hybrid-exp: variant x seed experiment grids for Ghosh (2017), arXiv 1701.04489."""
from pathlib import Path


def config_dir() -> str:
    """conf/ of a source checkout, else the copy a wheel installs as hybrid_exp/conf. Here, not
    in the CLI: importing the CLI registers Hydra plugins and a resolver."""
    source = Path(__file__).resolve().parent.parent / "conf"
    return str(source if source.is_dir() else Path(__file__).resolve().parent / "conf")
