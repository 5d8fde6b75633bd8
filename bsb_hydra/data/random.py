"""Inputs without data (``data=random``): ``data.samples`` seeded random inputs of the model's own
inputs: each of a model's inputs by its name, shape and dtype when the model declares them (an ONNX
file, ``model.inputs``), else one input of the model's fixed shape (``data.shape`` overrides it) and
``data.dtype``. Floats are uniform in [0, 1) (images before normalisation); integer inputs named as a
mask are ones, token types zeros, position ids 0..L-1, and other integer inputs ids in
[1, data.vocab_size) (null: the model's own embedding table's rows when the file shows them, else
data.high). Unlabelled: the cells measure size, latency, memory and fidelity to fp32 (on these
inputs), never accuracy; static int8 calibrates on them, so its ranges are those of noise, not of
real data (the int8 cell's fidelity says what that costs)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

import numpy as np

from bsb_hydra.config.base import ConfigError, InputError, positive
from bsb_hydra.config.data import ImageDataConfig
from bsb_hydra.data import DATASETS, Dataset

DTYPES = ("float32", "float16", "int64", "int32", "bool")


@dataclass
class RandomDataConfig(ImageDataConfig):
    name: str = "random"
    samples: int = 512  # seeded random inputs made: the test inputs, and calibration draws from them too
    # One sample's shape; null = the model's fixed input shape. With several inputs it fixes the
    # dynamic dims of every input of its rank.
    shape: Optional[List[int]] = None
    # Of a model that does not declare its inputs' dtypes.
    dtype: str = "float32"
    high: int = 1000  # integer inputs: ids drawn from [1, high), unless vocab_size or the model says
    # Integer ids are drawn below this; null = the model's embedding table's rows when known, else high.
    vocab_size: Optional[int] = None
    labelled: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("data.samples", self.samples)
        positive("data.high", self.high)
        positive("data.vocab_size", self.vocab_size, allow_none=True)
        if self.dtype not in DTYPES:
            raise ConfigError(f"data.dtype={self.dtype!r} is not allowed: use one of {', '.join(DTYPES)}")
        for i, d in enumerate(self.shape or []):
            positive(f"data.shape[{i}]", d)


def draw(rng: np.random.Generator, name: str, shape, dtype: str, n: int, high: int) -> np.ndarray:
    """``n`` samples of one input, by its dtype and what its name says it holds."""
    dt = np.dtype(dtype)
    lowered = name.lower()
    if dt == np.bool_:
        return np.ones((n, *shape), dtype=bool)
    if np.issubdtype(dt, np.integer):
        if "mask" in lowered:
            return np.ones((n, *shape), dtype=dt)
        if "type" in lowered or "segment" in lowered:
            return np.zeros((n, *shape), dtype=dt)
        if "position" in lowered and shape:
            return np.ascontiguousarray(np.broadcast_to(np.arange(shape[-1], dtype=dt), (n, *shape)))
        return rng.integers(1, max(high, 2), size=(n, *shape), dtype=np.int64).astype(dt)
    return rng.random((n, *shape), dtype=np.float32).astype(dt)


def _shape(spec, given) -> tuple:
    if None not in spec.shape:
        return tuple(spec.shape)
    if given is not None and len(given) == len(spec.shape):
        return tuple(int(g) if d is None else d for d, g in zip(spec.shape, given))
    raise InputError(f"data=random: the model's input {spec.describe()} has dynamic dims: give data.shape=[...] per "
                     f"sample (it fixes every input of rank {len(spec.shape)}), e.g. "
                     f"{[d if d is not None else 128 for d in spec.shape]}")


def _load(cfg, seed: int, model_shape, specs=None) -> Dataset:
    from bsb_hydra.feeds import Feeds

    rng = np.random.default_rng(seed + 7)
    if specs:
        arrays = {}
        for s in specs:
            high = cfg.vocab_size or s.vocab or cfg.high
            arrays[s.name] = draw(rng, s.name, _shape(s, cfg.shape), s.dtype, cfg.samples, high)
        x = Feeds(arrays) if len(arrays) > 1 else next(iter(arrays.values()))
        what = ", ".join(s.name for s in specs)
        return Dataset("random", x, None, x, None, None, [], source=f"random inputs ({what}) by dtype, seed {seed}",
                       test_split=f"{cfg.samples} random inputs, unlabelled (calibration draws from the same inputs)")
    shape = tuple(cfg.shape) if cfg.shape else model_shape
    if not shape:
        raise InputError("data=random needs a shape: the model has no fixed input shape, so give data.shape=[...] "
                         "(one sample, e.g. [3, 224, 224])")
    x = draw(rng, "input", shape, cfg.dtype, cfg.samples, cfg.vocab_size or cfg.high)
    return Dataset("random", x, None, x, None, None, [], source=f"random {cfg.dtype} inputs, seed {seed}",
                   test_split=f"{cfg.samples} random inputs, unlabelled (calibration draws from the same inputs)")


_load.takes_model_shape = True
_load.takes_specs = True
load = DATASETS.register("random", schema=RandomDataConfig)(_load)
