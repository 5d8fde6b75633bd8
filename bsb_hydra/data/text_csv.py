"""A user's labelled texts in a CSV or TSV file (``data=text_csv data.path=FILE data.text_column=..
data.label_column=..``): one text and one label per row. ``data.test_path`` names a second file as
the test split; without it the rows are split stratified from the seed (``data.test_fraction``).
Labels may be any strings or integers: the classes are their sorted distinct values (integers
sorted as numbers). ``data.label_column=null`` reads unlabelled texts (agreement with fp32 only).
Tokenized like every text set (``data.tokenizer``, ``data.seq_len``)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
from omegaconf import MISSING

from bsb_hydra.config.base import InputError
from bsb_hydra.config.data import TextDataConfig
from bsb_hydra.data import DATASETS, stratified_split
from bsb_hydra.data.text import TextSplits, to_dataset


@dataclass
class TextCsvDataConfig(TextDataConfig):
    name: str = "text_csv"
    path: str = MISSING  # the CSV or TSV file, one text (and label) per row
    test_path: Optional[str] = None  # a second file as the test split; null = split from path
    text_column: str = "text"  # the column holding the texts
    label_column: Optional[str] = "label"  # the column holding the labels; null = unlabelled texts
    # null = from the file's extension (.tsv: tab, else comma)
    delimiter: Optional[str] = None


def _rows(path_text: str, key: str, cfg) -> List[dict]:
    path = Path(str(path_text)).expanduser()
    if not path.is_file():
        raise InputError(f"{key}={str(path_text)!r}: no such file")
    delim = cfg.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delim)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{key}={str(path_text)!r} is not a readable UTF-8 {'TSV' if delim == chr(9) else 'CSV'} "
                         f"file ({type(e).__name__}: {str(e)[:150]})") from None
    wanted = [c for c in (cfg.text_column, cfg.label_column) if c]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise InputError(f"{key}={str(path_text)!r} has columns {', '.join(columns) or 'none'}; "
                         f"{', '.join(f'data.{k}={c!r}' for k, c in zip(('text_column', 'label_column'), wanted) if c in missing)} "
                         "is not one of them")
    if not rows:
        raise InputError(f"{key}={str(path_text)!r} has no rows")
    return rows


def _label_order(values) -> list:
    try:
        return sorted(set(values), key=int)
    except ValueError:
        return sorted(set(values))


@DATASETS.register("text_csv", schema=TextCsvDataConfig)
def load(cfg, seed: int):
    rows = _rows(cfg.path, "data.path", cfg)
    texts = [r[cfg.text_column] or "" for r in rows]
    source = f"text file {Path(str(cfg.path)).expanduser()} ({len(rows)} rows)"
    if not cfg.label_column:
        return to_dataset(TextSplits("text_csv", texts, None, texts, None, [], source=source,
                                     test_split=f"{len(rows)} texts, unlabelled"), cfg)
    labels = [r[cfg.label_column].strip() for r in rows]
    test_rows = _rows(cfg.test_path, "data.test_path", cfg) if cfg.test_path else None
    classes = _label_order(labels + ([r[cfg.label_column].strip() for r in test_rows] if test_rows else []))
    index = {c: i for i, c in enumerate(classes)}
    if len(classes) < 2:
        raise InputError(f"data.label_column={cfg.label_column!r} of {cfg.path} has one class ({classes[0]!r}); a "
                         "classifier needs at least 2")
    y = np.asarray([index[v] for v in labels], dtype=np.int64)
    if test_rows is not None:
        tte = [r[cfg.text_column] or "" for r in test_rows]
        yte = np.asarray([index[r[cfg.label_column].strip()] for r in test_rows], dtype=np.int64)
        ttr, ytr, split = texts, y, f"data.test_path {Path(str(cfg.test_path)).name}"
    else:
        counts = np.bincount(y, minlength=len(classes))
        if counts.min() < 2:
            raise InputError(f"data.path={str(cfg.path)!r}: class {classes[int(counts.argmin())]!r} has "
                             f"{counts.min()} row(s); a stratified split needs at least 2 per class")
        tr, te, ytr, yte = stratified_split(np.asarray(texts, dtype=object), y, cfg.test_fraction, seed)
        ttr, tte, split = list(tr), list(te), f"stratified {cfg.test_fraction:g} split, seed {seed}"
    return to_dataset(TextSplits("text_csv", ttr, ytr, tte, yte, [str(c) for c in classes],
                                 source=source, test_split=split), cfg)
