"""Fashion-MNIST from Debian's dataset-fashion-mnist package: 60k train / 10k test, 28x28."""
from pathlib import Path

from bsb_hydra.data import DATASETS, Dataset
from bsb_hydra.data.idx import load_idx_folder

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


@DATASETS.register("fashion_mnist")
def load(cfg, seed: int) -> Dataset:
    root = Path(cfg.root) if cfg.root else DEBIAN_DIR
    d = load_idx_folder(root, "data=fashion_mnist",
                        "Install it with: sudo apt-get install -y dataset-fashion-mnist (or `make setup`).")
    source = f"debian:dataset-fashion-mnist ({root})" if root == DEBIAN_DIR else f"idx files in {root}"
    return Dataset("fashion_mnist", d["x_train"], d["y_train"], d["x_test"], d["y_test"], 10, CLASSES,
                   source=source, test_split="t10k (the 10,000-image test split)")
