"""IMDB movie reviews (Maas et al. 2011) from a user's copy of ``aclImdb/``: the folders
``{train,test}/{pos,neg}/*.txt``. ``data.root`` (or IMDB_DIR) points at the ``aclImdb`` folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bsb_hydra.data import DATASETS, DataNotFoundError
from bsb_hydra.data.text import TextSplits, to_dataset


def _read_split(root: Path, split: str):
    texts, labels = [], []
    for label, sub in ((0, "neg"), (1, "pos")):
        folder = root / split / sub
        if not folder.is_dir():
            raise DataNotFoundError(
                f"data=imdb: {folder} is missing. Set data.root (or IMDB_DIR) to the aclImdb folder with "
                "train/pos, train/neg, test/pos, test/neg holding one review per .txt file "
                "(from https://ai.stanford.edu/~amaas/data/sentiment/)")
        files = sorted(folder.glob("*.txt"))
        texts += [f.read_text(encoding="utf-8", errors="replace").replace("<br />", " ") for f in files]
        labels += [label] * len(files)
    if not texts:
        raise DataNotFoundError(f"data=imdb: no .txt reviews under {root / split}")
    return texts, np.asarray(labels, dtype=np.int64)


@DATASETS.register("imdb")
def load(cfg, seed: int):
    if not cfg.root:
        raise DataNotFoundError("data=imdb needs data.root=PATH/aclImdb (or IMDB_DIR)")
    root = Path(cfg.root).expanduser()
    xtr, ytr = _read_split(root, "train")
    xte, yte = _read_split(root, "test")
    return to_dataset(TextSplits("imdb", xtr, ytr, xte, yte, ["negative", "positive"], source=f"aclImdb in {root}",
                                 test_split="test/"), cfg)
