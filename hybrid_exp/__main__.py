"""``python -m hybrid_exp [overrides]`` trains once; ``-m`` launches a grid (Hydra multirun)."""
from pathlib import Path

import hydra
from omegaconf import DictConfig


def config_dir() -> str:
    """conf/ of a source checkout, else the copy a wheel installs as hybrid_exp/conf."""
    source = Path(__file__).resolve().parent.parent / "conf"
    return str(source if source.is_dir() else Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> float:
    from hybrid_exp.train import train  # imported late: `--help` and config errors stay fast

    return train(cfg)["test/error"]


if __name__ == "__main__":
    main()
