"""GLUE SST-2 from a user's copy: ``train.tsv`` and ``dev.tsv`` (columns ``sentence``, ``label``)
in ``data.root`` (or SST2_DIR). GLUE's test labels are hidden, so ``dev.tsv`` is the test split."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from bsb_hydra.data import DATASETS, DataNotFoundError
from bsb_hydra.data.text import TextSplits, to_dataset


def _read(path: Path):
    if not path.is_file():
        raise DataNotFoundError(
            f"data=sst2: {path} is missing. Set data.root (or SST2_DIR) to the GLUE SST-2 folder holding "
            "train.tsv and dev.tsv (tab-separated, header 'sentence<TAB>label')")
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if not {"sentence", "label"} <= set(reader.fieldnames or []):
            raise DataNotFoundError(f"data=sst2: {path} has columns {reader.fieldnames}, expected sentence, label")
        for row in reader:
            texts.append(row["sentence"])
            labels.append(int(row["label"]))
    return texts, np.asarray(labels, dtype=np.int64)


@DATASETS.register("sst2")
def load(cfg, seed: int):
    if not cfg.root:
        raise DataNotFoundError("data=sst2 needs data.root=PATH (or SST2_DIR) with train.tsv and dev.tsv")
    root = Path(cfg.root).expanduser()
    xtr, ytr = _read(root / "train.tsv")
    xte, yte = _read(root / "dev.tsv")
    return to_dataset(TextSplits("sst2", xtr, ytr, xte, yte, ["negative", "positive"], source=f"GLUE SST-2 in {root}",
                                 test_split="dev.tsv (GLUE's test labels are hidden)"), cfg)
