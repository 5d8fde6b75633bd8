"""``python -m bsb_hydra [-m] [overrides...]``: one cell per Hydra job."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bsb_hydra.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from bsb_hydra.pipeline import run_cell

    run_cell(cfg)


if __name__ == "__main__":
    main()
