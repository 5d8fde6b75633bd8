"""Data sets: each module loads one set into a ``Dataset``: images as float32 NCHW arrays in
[0, 1], texts as int64 token ids (N, seq_len) (``bsb_hydra.data.text``)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import numpy as np

from bsb_hydra.registry import Registry

DATASETS = Registry("data set", "bsb_hydra.data")


class DataNotFoundError(FileNotFoundError):
    """A data package or a user's data file is missing; the message says how to get it."""


@dataclass
class Dataset:
    """x_* are float32 NCHW images in [0, 1], int64 token ids or float feature rows (or lazy image
    splits: bsb_hydra/data/transforms.py). Unlabelled data (data=random, an npz with only ``x``) has
    ``y_train = y_test = num_classes = None``: no training, no accuracy, agreement with fp32 only."""
    name: str
    x_train: np.ndarray
    y_train: Optional[np.ndarray]
    x_test: np.ndarray
    y_test: Optional[np.ndarray]
    num_classes: Optional[int]
    class_names: List[str] = field(default_factory=list)
    vocab: Any = None  # text sets: the tokenizer (word Vocab or MiniLmTokenizer): encode/decode
    texts_test: Optional[List[str]] = None  # text sets: the raw test texts, aligned with x_test
    # Where the samples came from (a package, a folder, a file: tag data_source) and which split is
    # scored (tag test_split): the data set's own test split, or how it was split from the seed.
    source: str = ""
    test_split: str = "test"
    # How the images were fitted to the model (bsb_hydra/data/transforms.py; tag data_transform).
    transform: str = ""

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """One sample's shape (of the first input, for a model with several: bsb_hydra/feeds.py)."""
        return tuple(self.x_train.shape[1:])

    @property
    def labelled(self) -> bool:
        return self.y_test is not None


def _subset_idx(n: int, limit, rng: np.random.Generator) -> Optional[np.ndarray]:
    if limit is None or limit >= n:
        return None
    return np.sort(rng.choice(n, size=limit, replace=False))


# The last data set loaded in this process: the jobs of a multirun share one process (Hydra's basic
# launcher), and parsing the full Fashion-MNIST again for each of a grid's cells costs about 1.5 s.
_LAST: dict = {}


def load_dataset(cfg, seed: int, model_shape: Optional[Tuple[int, ...]] = None, specs=None) -> Dataset:
    """Load ``cfg.name`` and apply the seeded ``limit_train`` / ``limit_test`` subsets. A repeat
    request for the same data config and seed in the same process returns the arrays loaded before
    (in a fresh Dataset object). ``model_shape``: the model's fixed per-sample input, for sets that
    take their shape from it (data=random); ``specs``: the model's inputs (bsb_hydra.feeds.InputSpec:
    name, shape, dtype) when it declares them, for sets that feed several (data=random, text)."""
    try:
        from omegaconf import OmegaConf

        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else vars(cfg)
        key = json.dumps([plain, seed, model_shape, [vars(s) for s in specs or []]], sort_keys=True, default=str)
    except (TypeError, ValueError):
        key = None
    if key is not None and _LAST.get("key") == key:
        return dataclasses.replace(_LAST["ds"])
    ds = _load_dataset(cfg, seed, model_shape, specs)
    if key is not None:
        _LAST.clear()
        _LAST.update(key=key, ds=ds)
        return dataclasses.replace(ds)
    return ds


def _load_dataset(cfg, seed: int, model_shape, specs=None) -> Dataset:
    from bsb_hydra.data.transforms import take
    from bsb_hydra.feeds import Feeds

    loader = DATASETS.get(cfg.name)
    if getattr(loader, "takes_specs", False):
        ds: Dataset = loader(cfg, seed, model_shape, specs)
    elif getattr(loader, "takes_model_shape", False):
        ds = loader(cfg, seed, model_shape)
    else:
        ds = loader(cfg, seed)
    rng = np.random.default_rng(seed)
    idx = _subset_idx(len(ds.x_train), cfg.limit_train, rng)
    if idx is not None:
        ds.x_train = take(ds.x_train, idx)
        ds.y_train = ds.y_train[idx] if ds.y_train is not None else None
    idx = _subset_idx(len(ds.x_test), cfg.limit_test, rng)
    if idx is not None:
        ds.test_split += f"; a seeded subset of {len(idx)} of its {len(ds.x_test)} samples (data.limit_test)"
        ds.x_test = take(ds.x_test, idx)
        ds.y_test = ds.y_test[idx] if ds.y_test is not None else None
        if ds.texts_test is not None:
            ds.texts_test = [ds.texts_test[i] for i in idx]
    if isinstance(ds.x_train, np.ndarray):  # lazily decoded image files stay as they are
        dtype = np.int64 if np.issubdtype(ds.x_train.dtype, np.integer) else np.float32  # token ids stay ints
        ds.x_train = np.ascontiguousarray(ds.x_train, dtype=dtype)
        ds.x_test = np.ascontiguousarray(ds.x_test, dtype=dtype)
    elif isinstance(ds.x_train, Feeds):  # several inputs: each keeps the dtype its loader gave it
        ds.x_train = Feeds({k: np.ascontiguousarray(v) for k, v in ds.x_train.items()})
        ds.x_test = Feeds({k: np.ascontiguousarray(v) for k, v in ds.x_test.items()})
    for split in ("y_train", "y_test"):  # class ids as int64; masks keep their own (small) integer type
        y = getattr(ds, split)
        if y is not None and np.issubdtype(y.dtype, np.integer) and len(getattr(y, "shape", ())) <= 1:
            setattr(ds, split, y.astype(np.int64))
    return ds


def stratified_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """Deterministic stratified split for sets shipped without one."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def calibration_indices(ds: Dataset, n: int, seed: int) -> np.ndarray:
    """Indices into the TRAINING split of ``n`` calibration samples, chosen with the seed; every
    sample when the split has fewer than ``n`` (the caller logs how many were used)."""
    if len(ds.x_train) == 0:
        from bsb_hydra.config.base import InputError

        raise InputError(f"data={ds.name} has no training samples to calibrate on")
    n = min(n, len(ds.x_train))
    return np.sort(np.random.default_rng(seed + 1).choice(len(ds.x_train), size=n, replace=False))


def calibration_samples(ds: Dataset, n: int, seed: int) -> np.ndarray:
    """``n`` real TRAINING samples, chosen with the seed (never random tensors)."""
    return ds.x_train[calibration_indices(ds, n, seed)]
