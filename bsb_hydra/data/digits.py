"""scikit-learn's 8x8 digits (1797 images, values 0-16): tiny, for quick checks."""
import numpy as np

from bsb_hydra.data import DATASETS, Dataset, stratified_split


@DATASETS.register("digits")
def load(cfg, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    b = load_digits()
    x = (b.images.astype(np.float32) / 16.0)[:, None, :, :]
    xtr, xte, ytr, yte = stratified_split(x, b.target, cfg.test_fraction, seed)
    return Dataset("digits", xtr, ytr, xte, yte, 10, [str(i) for i in range(10)],
                   source="pypi:scikit-learn load_digits()", test_split=f"stratified {cfg.test_fraction:g} split, seed {seed}")
