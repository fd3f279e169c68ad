"""hybrid-exp: variant x seed experiment grids for Ghosh (2017), arXiv 1701.04489."""
from pathlib import Path


def config_dir() -> str:
    """The Hydra configs, hybrid_exp/conf (also reachable as conf/ in a checkout). Here, not
    in the CLI: importing the CLI sets up the Hydra app's process (hybrid_exp.process)."""
    return str(Path(__file__).resolve().parent / "conf")


def class_folders(root: str) -> int:
    """The number of class folders in ``<root>/train``: ``data=image_folder``'s
    ``num_classes`` by default (``${class_folders:${data.root}}``), known before any image is
    read, as the network's output size must be."""
    from hybrid_exp.errors import ConfigError

    train = Path(root).expanduser() / "train"
    count = sum(p.is_dir() for p in train.iterdir()) if train.is_dir() else 0
    if count < 2:
        raise ConfigError(f"data.root={root} holds {'no' if not count else 'one'} class folder in "
                          f"{train}: lay the images out as <root>/train/<class>/*.png|jpg and "
                          f"<root>/test/<class>/*.png|jpg, two classes at least")
    return count

