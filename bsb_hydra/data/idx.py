"""Reader for the IDX format of (Fashion-)MNIST, gzipped or not."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from bsb_hydra.data import DataNotFoundError

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def load_idx_folder(root: Path, what: str, how_to_get: str) -> dict:
    """The four standard files from ``root``, each ``NAME`` or ``NAME.gz``."""
    out = {}
    missing = []
    for key, name in IDX_FILES.items():
        cands = [root / name, root / (name + ".gz")]
        found = next((p for p in cands if p.is_file()), None)
        if found is None:
            missing.append(name + "[.gz]")
        else:
            out[key] = read_idx(found)
    if missing:
        raise DataNotFoundError(
            f"{what}: {root} lacks {', '.join(missing)}. Expected the four standard IDX files "
            f"({', '.join(n + '[.gz]' for n in IDX_FILES.values())}). {how_to_get}"
        )
    for k in ("x_train", "x_test"):
        out[k] = (out[k].astype(np.float32) / 255.0)[:, None, :, :]
    return out
