"""Detection labels as a COCO-style JSON (``data=coco data.root=IMAGES_DIR data.annotations=FILE.json``):
``images`` (id, file_name relative to data.root, width, height), ``annotations`` (image_id, bbox
[x, y, width, height] in pixels, category_id; iscrowd regions skipped, as COCO's own evaluation does)
and ``categories`` (id, name). Every listed image is scored, each with its boxes (class = the
category id, as the detector's own labels are numbered); an image without boxes counts too. The boxes
follow the images when they are resized to the model (bsb_hydra/data/labels.py). Static int8
calibrates on the same images (there is no training split), as with unlabelled inputs."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from bsb_hydra.config.base import InputError
from bsb_hydra.config.data import ImageDataConfig
from bsb_hydra.data import DATASETS, Dataset
from bsb_hydra.data.labels import BoxLabels
from bsb_hydra.data.transforms import ImageFiles


@dataclass
class CocoDataConfig(ImageDataConfig):
    name: str = "coco"
    # The COCO-style JSON (instances_*.json) of the images under data.root.
    annotations: str = MISSING


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"data.annotations={str(path)!r} is not a readable JSON file ({type(e).__name__}: "
                         f"{str(e)[:200]})") from None
    missing = [k for k in ("images", "annotations") if not isinstance(doc.get(k), list)]
    if missing:
        raise InputError(f"data.annotations={str(path)!r} has no {' or '.join(missing)} list: a COCO-style file "
                         "holds images (id, file_name, width, height), annotations (image_id, bbox, category_id) "
                         "and categories (id, name)")
    return doc


@DATASETS.register("coco", schema=CocoDataConfig)
def load(cfg, seed: int) -> Dataset:
    from bsb_hydra.data.image_folder import _headers

    if not cfg.root:
        raise InputError("data=coco needs data.root=DIR, the folder the annotations' file_name entries are under")
    root = Path(str(cfg.root)).expanduser()
    ann = Path(str(cfg.annotations)).expanduser()
    if not root.is_dir():
        raise InputError(f"data.root={str(cfg.root)!r}: no such folder")
    if not ann.is_file():
        raise InputError(f"data.annotations={str(cfg.annotations)!r}: no such file")
    doc = _read(ann)
    images = doc["images"]
    if not images:
        raise InputError(f"data.annotations={str(ann)!r} lists no images")
    index, paths, sizes = {}, [], []
    for i, im in enumerate(images):
        try:
            index[im["id"]] = i
            p = root / im["file_name"]
        except (KeyError, TypeError):
            raise InputError(f"data.annotations={str(ann)!r}: images[{i}] needs id and file_name") from None
        if not p.is_file():
            raise InputError(f"data.annotations={str(ann)!r}: images[{i}] file_name {im['file_name']!r} is not a file "
                             f"under data.root={str(root)!r}")
        paths.append(str(p))
        sizes.append((im.get("width"), im.get("height")))
    mode, header_sizes = _headers(paths)
    if any(w is None or h is None for w, h in sizes):  # sizes from the files' headers where the JSON lacks them
        from PIL import Image

        sizes = [Image.open(p).size for p in paths]
    per = [[] for _ in images]
    for j, a in enumerate(doc["annotations"]):
        if a.get("iscrowd"):
            continue
        try:
            i = index[a["image_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            c = int(a["category_id"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"data.annotations={str(ann)!r}: annotations[{j}] needs image_id (of a listed image), "
                             "bbox [x, y, width, height] and category_id") from None
        per[i].append((x, y, x + w, y + h, c))
    m = max(1, max(len(p) for p in per))
    boxes = np.full((len(images), m, 5), -1.0, np.float32)
    for i, p in enumerate(per):
        if p:
            boxes[i, :len(p)] = np.asarray(p, np.float32)
    cats = {int(c["id"]): str(c.get("name", c["id"])) for c in doc.get("categories", []) if "id" in c}
    names = [cats.get(i, str(i)) for i in range(max(cats) + 1)] if cats else []
    x = ImageFiles(paths, mode, header_sizes)
    y = BoxLabels(boxes, np.asarray(sizes, np.float64))
    n = int(sum(len(p) for p in per))
    return Dataset("coco", x, y, x, y, None, names, source=f"COCO-style annotations {ann} ({n} boxes), images under {root}",
                   test_split=f"the {len(images)} annotated images (calibration draws from the same images)")
