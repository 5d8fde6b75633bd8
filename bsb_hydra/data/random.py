"""Inputs without data (``data=random``): ``data.samples`` seeded random inputs of the model's own input
shape (``data.shape`` overrides it), uniform in [0, 1) for float inputs (images before normalisation),
uniform token ids in [1, data.high) for integer ones. Unlabelled: the cells measure size, latency,
memory and agreement with fp32 (on these inputs), never accuracy; static int8 calibrates on them, so
its ranges are those of noise, not of real data (the int8 cell's agreement says what that costs)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

import numpy as np

from bsb_hydra.config.base import ConfigError, InputError, positive
from bsb_hydra.config.data import ImageDataConfig
from bsb_hydra.data import DATASETS, Dataset


@dataclass
class RandomDataConfig(ImageDataConfig):
    name: str = "random"
    samples: int = 512
    # One sample's shape; null = the model's fixed input shape.
    shape: Optional[List[int]] = None
    dtype: str = "float32"
    high: int = 1000  # integer inputs: ids drawn from [1, high)
    labelled: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("data.samples", self.samples)
        positive("data.high", self.high)
        if self.dtype not in ("float32", "int64"):
            raise ConfigError(f"data.dtype={self.dtype!r} is not allowed: use float32 or int64")
        for i, d in enumerate(self.shape or []):
            positive(f"data.shape[{i}]", d)


def _load(cfg, seed: int, model_shape) -> Dataset:
    shape = tuple(cfg.shape) if cfg.shape else model_shape
    if not shape:
        raise InputError("data=random needs a shape: the model has no fixed input shape, so give data.shape=[...] "
                         "(one sample, e.g. [3, 224, 224])")
    rng = np.random.default_rng(seed + 7)
    if cfg.dtype == "int64":
        x = rng.integers(1, cfg.high, size=(cfg.samples, *shape), dtype=np.int64)
    else:
        x = rng.random((cfg.samples, *shape), dtype=np.float32)
    return Dataset("random", x, None, x, None, None, [], source=f"random {cfg.dtype} inputs, seed {seed}",
                   test_split=f"{cfg.samples} random inputs, unlabelled (calibration draws from the same inputs)")


_load.takes_model_shape = True
load = DATASETS.register("random", schema=RandomDataConfig)(_load)
