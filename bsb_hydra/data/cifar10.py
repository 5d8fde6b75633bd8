"""CIFAR-10 from a user's standard ``cifar-10-batches-py`` folder (data.root=PATH or CIFAR10_DIR).

That format is Python pickles. They are read with an unpickler that can build only plain data
(dicts, lists, bytes, str, numbers) and numpy arrays: a file that names any other callable is
refused, so a tampered batch cannot run code."""
import io
import pickle
from pathlib import Path

import numpy as np

from bsb_hydra.data import DATASETS, Dataset, DataNotFoundError

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]


# The only globals a CIFAR-10 batch may name: numpy's array reconstruction.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class UnsafePickleError(pickle.UnpicklingError):
    pass


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path):
        super().__init__(f, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.path} is not a plain CIFAR-10 batch: it asks to load {module}.{name}, "
                                f"which a data file never needs; refusing to unpickle it")


def load_pickle(path: Path):
    """Unpickle a data file, allowing plain data and numpy arrays only."""
    with open(path, "rb") as f:
        return _DataOnlyUnpickler(io.BytesIO(f.read()), path).load()


def _read(root: Path, names):
    xs, ys = [], []
    for n in names:
        d = load_pickle(root / n)
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
        names = [n.decode() for n in load_pickle(meta)[b"label_names"]]
    xtr, ytr = _read(root, TRAIN)
    xte, yte = _read(root, TEST)
    return Dataset("cifar10", xtr, ytr, xte, yte, 10, names, source=f"cifar-10-batches-py in {root}",
                   test_split="test_batch (10,000 images)")
