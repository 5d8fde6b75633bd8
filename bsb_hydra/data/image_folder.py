"""A user's folder of images in torchvision's ImageFolder layout (``data=image_folder data.root=DIR``):
``DIR/train/<class>/*.png`` with ``DIR/test/<class>/...`` (or ``DIR/val/<class>/...``), or one
``DIR/<class>/...`` tree split stratified from the seed (``data.test_fraction``). Class folders are
found and files listed by torchvision's own ``find_classes`` / ``make_dataset`` (its image extensions);
class ids are the sorted folder names of the training split.

Segmentation: ``DIR/images/*`` with a ``DIR/masks/*`` twin folder (or ``DIR/train/images``,
``DIR/train/masks`` and ``DIR/test/...``): each image's mask is the file of the same name stem in
``masks/``, one class id per pixel (8-bit grayscale or palette PNG), resized with the image to the
model's input (nearest neighbour; bsb_hydra/data/labels.py). Without a test folder the split is a
seeded random one (``data.test_fraction``).

The files are decoded on access (PIL), never all at once, and fitted to the model like every image
set: resized to ``data.resize`` or the model's input size, channels repeated, ``mean``/``std``
applied (bsb_hydra/data/transforms.py). Images of mixed sizes need one of those sizes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bsb_hydra.config.base import InputError
from bsb_hydra.config.data import ImageDataConfig
from bsb_hydra.data import DATASETS, Dataset, stratified_split
from bsb_hydra.data.transforms import ImageFiles


@dataclass
class ImageFolderDataConfig(ImageDataConfig):
    name: str = "image_folder"


def _listing(folder: Path, classes=None):
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        names, _ = find_classes(str(folder))
    except FileNotFoundError as e:
        raise InputError(f"data.root: {folder} holds no class folders ({e})") from None
    if classes is not None:
        extra = sorted(set(names) - set(classes))
        if extra:
            raise InputError(f"data.root: {folder} has class folders {', '.join(extra)} that the training split "
                             f"lacks (its classes: {', '.join(classes)})")
        names = classes
    try:
        samples = make_dataset(str(folder), {c: i for i, c in enumerate(names)}, extensions=IMG_EXTENSIONS,
                               allow_empty=True)
    except FileNotFoundError as e:
        raise InputError(f"data.root: {e}") from None
    if not samples:
        raise InputError(f"data.root: no images ({', '.join(IMG_EXTENSIONS)}) under {folder}")
    paths, labels = zip(*samples)
    return list(names), list(paths), np.asarray(labels, dtype=np.int64)


def _pairs(folder: Path):
    """(image paths, mask paths) of a segmentation folder: images/ and its masks/ twin, by name stem."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
    if not images:
        raise InputError(f"data.root: no images ({', '.join(IMG_EXTENSIONS)}) in {folder / 'images'}")
    masks = {p.stem: p for p in (folder / "masks").iterdir() if p.suffix.lower() in IMG_EXTENSIONS}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise InputError(f"data.root: {len(missing)} image(s) of {folder / 'images'} have no mask of the same name in "
                         f"{folder / 'masks'} (e.g. {missing[0]})")
    return [str(p) for p in images], [str(masks[p.stem]) for p in images]


def _segmentation(cfg, root: Path, seed: int) -> Dataset:
    from bsb_hydra.data.labels import MaskFiles

    test_dir = next((root / d for d in ("test", "val") if (root / d / "images").is_dir()), None)
    if (root / "train" / "images").is_dir() and test_dir is not None:
        ptr, mtr = _pairs(root / "train")
        pte, mte = _pairs(test_dir)
        split = f"{test_dir.name}/images of {root}"
    else:
        paths, masks = _pairs(root)
        if len(paths) < 2:
            raise InputError(f"data.root: {root / 'images'} has {len(paths)} image(s); a split needs at least 2")
        idx = np.random.default_rng(seed).permutation(len(paths))
        k = max(1, int(round(len(paths) * cfg.test_fraction)))
        te, tr = np.sort(idx[:k]), np.sort(idx[k:])
        ptr, mtr = [paths[i] for i in tr], [masks[i] for i in tr]
        pte, mte = [paths[i] for i in te], [masks[i] for i in te]
        split = f"a seeded {cfg.test_fraction:g} split of {root}/images, seed {seed}"
    mode, sizes = _headers(ptr + pte)
    return Dataset("image_folder", ImageFiles(ptr, mode, sizes), MaskFiles(mtr), ImageFiles(pte, mode, sizes),
                   MaskFiles(mte), None, [], source=f"image folder {root} with masks ({len(ptr) + len(pte)} pairs)",
                   test_split=split)


def _headers(paths):
    """Every file's (mode, size), from its header only."""
    from PIL import Image, UnidentifiedImageError

    modes, sizes = set(), set()
    for p in paths:
        try:
            with Image.open(p) as im:
                modes.add(im.mode)
                sizes.add(im.size)
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"data.root: {p} is not a readable image ({type(e).__name__})") from None
    return ("L" if modes <= {"L", "1"} else "RGB"), sizes


@DATASETS.register("image_folder", schema=ImageFolderDataConfig)
def load(cfg, seed: int) -> Dataset:
    if not cfg.root:
        raise InputError("data=image_folder needs data.root=DIR: DIR/train/<class>/* and DIR/test/<class>/* "
                         "(or DIR/val/...), or DIR/<class>/* to split from the seed")
    root = Path(str(cfg.root)).expanduser()
    if not root.is_dir():
        raise InputError(f"data.root={str(cfg.root)!r}: no such folder")
    if any((r / "images").is_dir() and (r / "masks").is_dir() for r in (root, root / "train")):
        return _segmentation(cfg, root, seed)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, ptr, ytr = _listing(root / "train")
        _, pte, yte = _listing(test_dir, classes)
        split = f"{test_dir.name}/ of {root}"
    else:
        classes, paths, y = _listing(root)
        counts = np.bincount(y, minlength=len(classes))
        if counts.min() < 2:
            raise InputError(f"data.root: class {classes[int(counts.argmin())]!r} of {root} has {counts.min()} "
                             "image(s); a stratified split needs at least 2 per class")
        idx_tr, idx_te = stratified_split(np.arange(len(y)), y, cfg.test_fraction, seed)[:2]
        ptr, ytr = [paths[i] for i in idx_tr], y[idx_tr]
        pte, yte = [paths[i] for i in idx_te], y[idx_te]
        split = f"stratified {cfg.test_fraction:g} split of {root}, seed {seed}"
    mode, sizes = _headers(ptr + pte)
    return Dataset("image_folder", ImageFiles(ptr, mode, sizes), ytr, ImageFiles(pte, mode, sizes), yte,
                   len(classes), classes, source=f"image folder {root} ({len(ptr) + len(pte)} files)", test_split=split)
