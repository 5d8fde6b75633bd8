"""MNIST from a user's folder of the standard IDX files (data.root=PATH or MNIST_DIR)."""
from pathlib import Path

from bsb_hydra.data import DATASETS, Dataset, DataNotFoundError
from bsb_hydra.data.idx import IDX_FILES, load_idx_folder


@DATASETS.register("mnist")
def load(cfg, seed: int) -> Dataset:
    if not cfg.root:
        raise DataNotFoundError(
            "data=mnist needs data.root=PATH (or MNIST_DIR) naming a folder with the standard files "
            + ", ".join(n + "[.gz]" for n in IDX_FILES.values())
        )
    d = load_idx_folder(Path(cfg.root), "data=mnist", "Place the MNIST IDX files there.")
    return Dataset("mnist", d["x_train"], d["y_train"], d["x_test"], d["y_test"], 10, [str(i) for i in range(10)],
                   source=f"idx files in {cfg.root}", test_split="t10k (the 10,000-image test split)")
