"""CIFAR-10 from a user's standard ``cifar-10-batches-py`` folder (data.root=PATH or CIFAR10_DIR)."""
import pickle
from pathlib import Path

import numpy as np

from bsb_hydra.data import DATASETS, Dataset, DataNotFoundError

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]


def _read(root: Path, names):
    xs, ys = [], []
    for n in names:
        with open(root / n, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[b"labels"], np.int64))
    return (np.concatenate(xs).astype(np.float32) / 255.0), np.concatenate(ys)


@DATASETS.register("cifar10")
def load(cfg, seed: int) -> Dataset:
    hint = "data=cifar10 needs data.root=PATH (or CIFAR10_DIR) naming the standard cifar-10-batches-py folder"
    if not cfg.root:
        raise DataNotFoundError(hint + f" with {', '.join(TRAIN + TEST)}")
    root = Path(cfg.root)
    missing = [n for n in TRAIN + TEST if not (root / n).is_file()]
    if missing:
        raise DataNotFoundError(f"{hint}; {root} lacks {', '.join(missing)}")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = root / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as f:
            names = [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
    xtr, ytr = _read(root, TRAIN)
    xte, yte = _read(root, TEST)
    return Dataset("cifar10", xtr, ytr, xte, yte, 10, names)
