"""Labels that live beside image files and are fitted with the images (bsb_hydra/data/transforms.py):
segmentation masks read from a ``masks/`` twin folder (``MaskFiles``) and boxes in each image's own
pixel coordinates (``BoxLabels``, from a COCO-style JSON). When the images are resized to the model's
input, masks are resized the same way (nearest neighbour: class ids are never blended) and boxes
scaled by the same factors, so the labels always describe the pixels the model sees."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def _pick(items: Sequence, idx):
    if isinstance(idx, slice):
        return list(items[idx])
    if isinstance(idx, (int, np.integer)):
        return [items[int(idx)]]
    return [items[int(i)] for i in np.asarray(idx).ravel()]


class MaskFiles:
    """Label masks as files (one integer class per pixel: 8-bit grayscale or palette PNGs), decoded
    and resized when the data is fitted to the model (``fit``)."""
    dtype = np.dtype(np.int32)

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> Tuple[int, ...]:
        return (len(self.paths),)

    def __getitem__(self, idx) -> "MaskFiles":
        return MaskFiles(_pick(self.paths, idx))

    def astype(self, dtype) -> "MaskFiles":
        return self

    def fit(self, size: Tuple[int, int]) -> np.ndarray:
        """Every mask at (H, W) = size, nearest neighbour, int32 [N, H, W]."""
        from PIL import Image

        out = np.empty((len(self.paths), *size), dtype=np.int32)
        for i, p in enumerate(self.paths):
            with Image.open(p) as im:
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    from bsb_hydra.config.base import InputError

                    raise InputError(f"mask {p} is a {im.mode} image: masks hold one class id per pixel (8-bit "
                                     "grayscale or palette PNG)")
                m = im if im.size == (size[1], size[0]) else im.resize((size[1], size[0]), Image.NEAREST)
                out[i] = np.asarray(m, dtype=np.int32)
        return out


class BoxLabels:
    """Boxes per image, [N, M, 5] float32 (x1, y1, x2, y2, class; class -1 pads), in each image's own
    pixel coordinates; ``sizes`` [N, 2] is each image's (width, height)."""
    dtype = np.dtype(np.float32)

    def __init__(self, boxes: np.ndarray, sizes: np.ndarray) -> None:
        self.boxes, self.sizes = np.asarray(boxes, np.float32), np.asarray(sizes, np.float64)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.boxes.shape

    def __getitem__(self, idx) -> "BoxLabels":
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        return BoxLabels(self.boxes[idx], self.sizes[idx])

    def astype(self, dtype) -> "BoxLabels":
        return self

    def fit(self, size: Tuple[int, int]) -> np.ndarray:
        """The boxes in the fitted images' pixels: x by width_fit / width, y by height_fit / height."""
        out = self.boxes.copy()
        sx = (size[1] / self.sizes[:, 0]).astype(np.float32)[:, None]
        sy = (size[0] / self.sizes[:, 1]).astype(np.float32)[:, None]
        real = out[..., 4] >= 0
        for k, s in ((0, sx), (1, sy), (2, sx), (3, sy)):
            out[..., k] = np.where(real, out[..., k] * s, out[..., k])
        return out


FILE_LABELS = (MaskFiles, BoxLabels)


def fitted(y, size) -> "np.ndarray | None":
    """A split's labels for images fitted to ``size`` (H, W): file labels decoded or scaled, others as they are."""
    return y.fit(tuple(int(s) for s in size)) if isinstance(y, FILE_LABELS) else y
