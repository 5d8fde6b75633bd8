"""Fitting image data to the model it feeds: resize, channels, normalisation.

Applied in the main process, once per cell, to every split; every backend then reads the same float32
arrays (the benchmark worker gets them as .npy files), so the transform can never differ between
runtimes. A real-size model at 224x224x3 makes Fashion-MNIST's 60,000 training images 36 GB, so
the fitted splits are ``FittedImages``: the 28x28 source arrays plus the transform, computed per
index on access (``x[idx]`` returns a plain array). ``save_array`` writes one to disk in chunks.

Resizing is torch's bilinear interpolation with antialiasing (what torchvision's ``Resize`` does on
tensors); a 1-channel set is repeated to 3 channels; then ``(x - mean) / std`` per channel."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from bsb_hydra.config.base import InputError

CHUNK = 256  # images transformed at once


class DataShapeError(InputError):
    """The data cannot be fitted to what the model takes; the message names both shapes."""


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    size: Tuple[int, int]  # (H, W) out
    channels: int  # out
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    def describe(self) -> str:
        norm = f", normalized mean {list(self.mean)} std {list(self.std)}" if self.mean is not None else ""
        return f"resize {self.size[0]}x{self.size[1]} bilinear antialias, {self.channels} channel(s){norm}"

    def __call__(self, x) -> np.ndarray:
        """(N, C, H, W) float32, or a list of (C, H, W) images of any sizes -> (N, channels, *size) float32."""
        import torch
        import torch.nn.functional as F

        if isinstance(x, list):  # decoded image files: resized one by one, then stacked
            return np.concatenate([self(img[None]) for img in x]) if x else \
                np.zeros((0, self.channels, *self.size), np.float32)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if tuple(t.shape[2:]) != self.size:
            t = F.interpolate(t, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if t.shape[1] != self.channels:
            t = t.expand(-1, self.channels, -1, -1)
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            t = (t - mean) / std
        return np.ascontiguousarray(t.numpy(), dtype=np.float32)


class FittedImages:
    """An image split with a transform applied on access: ``x[i]``, ``x[a:b]``, ``x[index_array]``
    return plain float32 arrays; ``shape``, ``dtype`` and ``len`` are the fitted ones."""

    def __init__(self, source: np.ndarray, transform: ImageTransform) -> None:
        self.source, self.transform = source, transform

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.source), self.transform.channels, *self.transform.size)

    @property
    def ndim(self) -> int:
        return 4

    dtype = np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self.transform(self.source[idx:idx + 1] if idx >= 0 else self.source[[idx]])[0]
        src = self.source[idx]
        if isinstance(src, list):  # decoded files
            return self.transform(src)
        return np.concatenate([self.transform(src[i:i + CHUNK]) for i in range(0, len(src), CHUNK)]) \
            if len(src) else np.zeros((0, *self.shape[1:]), np.float32)

    def subset(self, idx: np.ndarray) -> "FittedImages":
        return FittedImages(self.source[idx], self.transform)

    def __array__(self, dtype=None, copy=None):
        # Refused: a whole fitted split may not fit in memory; index it (x[a:b]) or save_array it.
        raise TypeError(f"a fitted image split ({'x'.join(map(str, self.shape))}) is not materialized as one "
                        "array: index it or use bsb_hydra.data.transforms.save_array")


class ImageFiles:
    """Image files decoded on access (data=image_folder): ``x[idx]`` is a list of float32 (C, H, W)
    arrays in [0, 1], each at its own size. Colour files are read as RGB, grayscale ones (mode L) as
    one channel when every file of the set is grayscale. ``shape`` is (N, C, H, W) of the first file;
    ``sizes`` the distinct (W, H) sizes (read from the headers at load)."""

    def __init__(self, paths: Sequence[str], mode: str, sizes) -> None:
        self.paths, self.mode, self.sizes = list(paths), mode, sizes

    @property
    def shape(self) -> Tuple[int, ...]:
        w, h = next(iter(self.sizes))
        return (len(self.paths), 1 if self.mode == "L" else 3, h, w)

    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: str) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            a = np.asarray(im.convert(self.mode), dtype=np.float32) / 255.0
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return [self._read(self.paths[idx])]
        picked = self.paths[idx] if isinstance(idx, slice) else [self.paths[i] for i in np.asarray(idx).ravel()]
        return [self._read(p) for p in picked]

    def subset(self, idx: np.ndarray) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in np.asarray(idx).ravel()], self.mode, self.sizes)


def take(x, idx: np.ndarray):
    """``x[idx]`` that stays lazy for a FittedImages split or image files."""
    return x.subset(idx) if isinstance(x, (FittedImages, ImageFiles)) else x[idx]


def chunks(x, size: int = CHUNK):
    """Consecutive slices of a split, as plain arrays."""
    for i in range(0, len(x), size):
        yield x[i:i + size]


def save_array(path: Path, x) -> None:
    """``np.save(path, x)`` for a plain array or a FittedImages split (written chunk by chunk)."""
    if not isinstance(x, FittedImages):
        np.save(path, x)
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=x.shape)
    for i, part in zip(range(0, len(x), CHUNK), chunks(x)):
        out[i:i + len(part)] = part
    out.flush()
    del out


def transform_for(have: Tuple[int, ...], want: Optional[Tuple[int, ...]], data_cfg, model_name: str,
                  data_name: str) -> Optional[ImageTransform]:
    """The transform from images of shape ``have`` (C, H, W) to what the model takes: ``want`` (C, H, W)
    when the model has a fixed input, overridden by data.resize / data.channels; None when nothing
    changes. A shape it cannot bridge raises DataShapeError naming both."""
    resize = getattr(data_cfg, "resize", None)
    channels = getattr(data_cfg, "channels", None)
    mean = getattr(data_cfg, "mean", None)
    if len(have) != 3:
        if want is not None and tuple(want) != tuple(have):
            raise DataShapeError(f"model={model_name} takes inputs of shape {_shape(want)}, data={data_name} gives "
                                 f"{_shape(have)}: only (C, H, W) images can be resized to fit")
        if resize is not None or channels is not None or mean is not None:
            raise DataShapeError(f"data.resize/channels/mean apply to (C, H, W) images; data={data_name} gives "
                                 f"inputs of shape {_shape(have)}")
        return None
    if want is not None and len(want) != 3:
        raise DataShapeError(f"model={model_name} takes inputs of shape {_shape(want)}, data={data_name} gives "
                             f"images {_shape(have)}")
    c_out = channels or (want[0] if want is not None else have[0])
    size = (resize, resize) if resize else (tuple(want[1:]) if want is not None else tuple(have[1:]))
    if want is not None and (c_out, *size) != tuple(want):
        raise DataShapeError(f"data.resize={resize}, data.channels={channels} give images {_shape((c_out, *size))}, "
                             f"but model={model_name} takes {_shape(want)}")
    if c_out != have[0] and have[0] != 1:
        raise DataShapeError(f"data={data_name} has {have[0]} channels and model={model_name} takes {c_out}: only "
                             "1-channel images are repeated to 3; give a model that takes "
                             f"{have[0]} channels")
    std = getattr(data_cfg, "std", None)
    if mean is not None and len(mean) not in (1, c_out):
        raise DataShapeError(f"data.mean has {len(mean)} values for {c_out}-channel images: give 1 or {c_out}")
    if (c_out, *size) == tuple(have) and mean is None:
        return None
    norm = (tuple(float(v) for v in mean) * (c_out if len(mean) == 1 else 1),
            tuple(float(v) for v in std) * (c_out if len(std) == 1 else 1)) if mean is not None else (None, None)
    return ImageTransform(tuple(int(s) for s in size), int(c_out), *norm)


def fit_to_model(ds, want: Optional[Sequence[int]], data_cfg, model_name: str):
    """ds with its images fitted to the model's input (a new Dataset; the arrays are lazy). Several
    named inputs (bsb_hydra/feeds.py) are fed as they are."""
    from bsb_hydra.feeds import Feeds

    if isinstance(ds.x_test, Feeds):
        return ds
    want = tuple(want) if want is not None else None
    t = transform_for(tuple(ds.x_test.shape[1:]), want, data_cfg, model_name, ds.name)
    if isinstance(ds.x_test, ImageFiles):  # files are always decoded through a transform, to one size
        sizes = ds.x_test.sizes | ds.x_train.sizes
        if t is None and len(sizes) > 1:
            raise DataShapeError(f"data={ds.name}'s images come in {len(sizes)} sizes (e.g. "
                                 f"{', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:3])}): set data.resize=N, "
                                 "or use a model with a fixed input size")
        t = t or ImageTransform(tuple(ds.x_test.shape[2:]), ds.x_test.shape[1])
    if t is None:
        return _fit_labels(ds, tuple(ds.x_test.shape[2:]))
    return _fit_labels(dataclasses.replace(ds, x_train=FittedImages(ds.x_train, t), x_test=FittedImages(ds.x_test, t),
                                           transform=t.describe()), t.size)


def _fit_labels(ds, size):
    """Masks and boxes that live beside image files, fitted to the images' size (bsb_hydra/data/labels.py):
    masks resized (nearest), boxes scaled; a segmentation set's class count from its masks."""
    from bsb_hydra.data.labels import FILE_LABELS, MaskFiles, fitted

    if not isinstance(ds.y_test, FILE_LABELS):
        return ds
    masks = isinstance(ds.y_test, MaskFiles)
    ytr = fitted(ds.y_train, size)
    yte = ytr if ds.y_test is ds.y_train else fitted(ds.y_test, size)
    k = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1 if masks else ds.num_classes
    return dataclasses.replace(ds, y_train=ytr, y_test=yte, num_classes=k,
                               class_names=ds.class_names or ([str(i) for i in range(k)] if masks else []))


def _shape(s) -> str:
    return "(" + ", ".join(str(int(v)) for v in s) + ")"
