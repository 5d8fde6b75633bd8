"""A user's arrays in one ``.npz`` file (``data=npz data.path=FILE.npz``): ``x_train, y_train, x_test,
y_test`` (labelled), or just ``x`` (unlabelled: size, latency, memory and fidelity to fp32, no
accuracy; calibration draws from ``x`` too).

``x`` may be images (N, C, H, W), (N, H, W, C) (read as channels-last when the last axis is 1 or 3 and
axis 1 is not) or (N, H, W) (one channel); uint8 images are scaled to [0, 1], float ones taken as
they are; integer (N, L) arrays are token ids; float (N, F) arrays are feature rows. The image
transforms (resize, channels, mean/std) apply to ``x`` as for every image set, never to ``y``.

``y`` is what the task reads (bsb_hydra/tasks), one entry per sample of any shape:
class ids 0..K-1 (N,) for classification (K = ``len(data.class_names)`` when given, else the largest
label + 1); integer masks (N, H, W) for segmentation; float images (N, C, H, W) or float targets
(N, ...) for image_to_image and regression; boxes (N, M, 5) float (x1, y1, x2, y2, class; class -1
pads) for detection."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
from omegaconf import MISSING

from bsb_hydra.config.base import InputError
from bsb_hydra.config.data import ImageDataConfig
from bsb_hydra.data import DATASETS, Dataset

LABELLED = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class NpzDataConfig(ImageDataConfig):
    name: str = "npz"
    path: str = MISSING  # the .npz file (the arrays this module's docstring lists)
    # Names of the classes 0..K-1 (per-class accuracy reads them); null = "0", "1", ...
    class_names: Optional[List[str]] = None


def as_inputs(a: np.ndarray, key: str, path) -> np.ndarray:
    """A user's x array in the layout every backend is fed: NCHW float images in [0, 1], int64 ids or
    float feature rows."""
    if a.dtype == object or a.ndim < 2:
        raise InputError(f"data.path={str(path)!r}: {key} has shape {a.shape} and dtype {a.dtype}; expected samples "
                         "along axis 0: images (N, C, H, W), (N, H, W, C) or (N, H, W), token ids (N, L) or "
                         "features (N, F)")
    if np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint8:
        return a.astype(np.int64)  # token ids
    x = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


@DATASETS.register("npz", schema=NpzDataConfig)
def load(cfg, seed: int) -> Dataset:
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise InputError(f"data.path={str(cfg.path)!r}: no such file")
    try:
        f = np.load(path, allow_pickle=False)
        keys = set(f.files)
    except Exception as e:
        raise InputError(f"data.path={str(cfg.path)!r} is not a readable .npz file ({type(e).__name__}: "
                         f"{str(e).strip()[:200]})") from None
    source = f"npz file {path}"
    if set(LABELLED) <= keys:
        arrays = {k: f[k] for k in LABELLED}
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if y.ndim == 0 or len(x) != len(y) or y.dtype == object or not (
                    np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
                raise InputError(f"data.path={str(cfg.path)!r}: y_{split} must hold one label per sample of x_{split} "
                                 f"({len(x)}), integer (classes, masks) or float (targets, images, boxes); it has "
                                 f"shape {y.shape} and dtype {y.dtype}")
        xtr, xte = as_inputs(arrays["x_train"], "x_train", path), as_inputs(arrays["x_test"], "x_test", path)
        if xtr.shape[1:] != xte.shape[1:]:
            raise InputError(f"data.path={str(cfg.path)!r}: x_train samples have shape {xtr.shape[1:]}, x_test "
                             f"samples {xte.shape[1:]}")
        ytr, yte = arrays["y_train"], arrays["y_test"]
        if ytr.shape[1:] != yte.shape[1:] or np.issubdtype(ytr.dtype, np.integer) != np.issubdtype(yte.dtype, np.integer):
            raise InputError(f"data.path={str(cfg.path)!r}: y_train is {ytr.dtype}{list(ytr.shape[1:])} per sample, "
                             f"y_test {yte.dtype}{list(yte.shape[1:])}: they must match")
        if ytr.ndim > 1 or not np.issubdtype(ytr.dtype, np.integer):  # masks, targets, boxes: the task reads them
            # masks keep their integer type (uint8 masks of 1200 224-px images: 60 MB, not 480 as int64)
            ytr = ytr if np.issubdtype(ytr.dtype, np.integer) else ytr.astype(np.float32)
            yte = yte if np.issubdtype(yte.dtype, np.integer) else yte.astype(np.float32)
            k = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1 if np.issubdtype(ytr.dtype, np.integer) else None
            names = list(cfg.class_names) if cfg.class_names else ([str(i) for i in range(k)] if k else [])
            kind = (f"integer {list(ytr.shape[1:])}" if k else f"float {list(ytr.shape[1:])}")
            return Dataset("npz", xtr, ytr, xte, yte, len(names) if names else k, names, source=source,
                           test_split=f"x_test/y_test of {path.name} (labels: {kind} per sample)")
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
        k = len(cfg.class_names) if cfg.class_names else int(max(ytr.max(), yte.max())) + 1
        low, high = min(ytr.min(), yte.min()), max(ytr.max(), yte.max())
        if low < 0 or high >= k:
            raise InputError(f"data.path={str(cfg.path)!r}: labels run from {low} to {high}, outside 0..{k - 1} "
                             f"({len(cfg.class_names or [])} data.class_names)" if cfg.class_names else
                             f"data.path={str(cfg.path)!r}: labels must be 0..K-1; they run from {low} to {high}")
        names = list(cfg.class_names) if cfg.class_names else [str(i) for i in range(k)]
        return Dataset("npz", xtr, ytr, xte, yte, k, names, source=source, test_split=f"x_test/y_test of {path.name}")
    if "x" in keys:
        x = as_inputs(f["x"], "x", path)
        return Dataset("npz", x, None, x, None, None, [], source=source,
                       test_split=f"x of {path.name}, unlabelled (calibration draws from the same inputs)")
    raise InputError(f"data.path={str(cfg.path)!r} holds arrays {', '.join(sorted(keys)) or 'none'}; expected "
                     f"{', '.join(LABELLED)} (labelled) or x (unlabelled)")
