"""Schemas of the data group (conf/data/*.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, positive as _positive


@dataclass
class DataConfig:
    # The data set's name (its YAML sets it); the data tag, and part of every cell id.
    name: str = MISSING
    # Folder of a user's files (mnist, cifar10); packaged sets ignore it.
    root: Optional[str] = None
    # Deterministic (seeded) subsets, for smoke runs. null = the whole split.
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None  # see limit_train: the test images scored
    # Sets shipped without a train/test split (mnist_5k, digits) are split stratified from the seed.
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        _positive("data.limit_train", self.limit_train, allow_none=True)
        _positive("data.limit_test", self.limit_test, allow_none=True)
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction={self.test_fraction} is not allowed: use 0 < f < 1")


@dataclass
class ImageDataConfig(DataConfig):
    """An image set: float32 NCHW in [0, 1] as loaded, then fitted to the model (bsb_hydra/data/transforms.py)
    in the main process, once, so every backend reads the same arrays."""
    # Side length the images are resized to (bilinear, antialiased); null = the model's input size
    # when it takes a fixed one (model=torchvision: model.input_size), else the images' own.
    resize: Optional[int] = None
    # Channels fed to the model: a 1-channel set is repeated to 3; null = what the model takes.
    channels: Optional[int] = None
    # Per-channel normalisation after resizing, (x - mean) / std on [0, 1] pixels; null = none.
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("data.resize", self.resize, allow_none=True)
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels={self.channels} is not allowed: use 1, 3 or null (the model's)")
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"data.mean={self.mean} and data.std={self.std}: give both or neither")
        if self.std is not None:
            if len(self.mean) != len(self.std) or not self.mean:
                raise ConfigError(f"data.mean={list(self.mean)} and data.std={list(self.std)} must have the same "
                                  "length (one value, or one per channel)")
            for i, v in enumerate(self.std):
                _positive(f"data.std[{i}]", v)


@dataclass
class TextDataConfig(DataConfig):
    """A text set, tokenized for the sequence models (bsb_hydra/data/text.py)."""
    # word: a vocabulary built from the training split (left-padded ids, for the LSTM);
    # minilm: all-MiniLM-L6-v2's WordPiece tokenizer ([CLS] ... [SEP], right-padded, for the transformer);
    # hf: the tokenizer of a Hugging Face folder (tokenizer_path; model=hf reads its model.path's)
    tokenizer: str = "word"
    tokenizer_path: Optional[str] = None
    # word: the vocabulary's size; minilm: must be the tokenizer's own (30522)
    vocab_size: int = 20000
    # Tokens per text: longer texts are truncated, shorter ones padded. Tagged on every run.
    seq_len: int = 64

    TOKENIZERS: ClassVar[tuple] = ("word", "minilm", "hf")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer not in self.TOKENIZERS:
            raise ConfigError(f"data.tokenizer={self.tokenizer!r} is not allowed: use one of {', '.join(self.TOKENIZERS)}")
        _positive("data.seq_len", self.seq_len)
        if self.vocab_size < 3:
            raise ConfigError(f"data.vocab_size={self.vocab_size} is not allowed: it must be at least 3 "
                              "(padding, unknown and one word)")

