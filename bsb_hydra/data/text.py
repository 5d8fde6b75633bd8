"""Text -> token ids, for the sequence models. A text data set's loader returns raw texts and labels
(``TextSplits``); ``to_dataset`` tokenizes them as ``data.tokenizer`` says:

word    a word vocabulary built from the TRAINING split only (the ``vocab_size - 2`` most frequent
        tokens, ties broken alphabetically; id 0 = padding, 1 = unknown), texts truncated to
        ``seq_len`` tokens and LEFT-padded, so a recurrent model reads the real tokens last.

Token ids are int64 arrays (N, seq_len); the vocabulary is part of the cached model's key (it
follows from the data config and the seed)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from bsb_hydra.data import Dataset

PAD, UNK = 0, 1
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> List[str]:
    """Lower-cased words (with their apostrophe suffix: "film's", "don't") and single punctuation marks."""
    return _TOKEN.findall(text.lower())


@dataclass
class Vocab:
    itos: List[str]  # id -> token; itos[0] = "<pad>", itos[1] = "<unk>"

    @classmethod
    def build(cls, texts: Sequence[str], size: int) -> "Vocab":
        counts = Counter(t for text in texts for t in tokenize(text))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max(0, size - 2)]
        return cls(["<pad>", "<unk>"] + [t for t, _ in ranked])

    @property
    def stoi(self) -> Dict[str, int]:
        if not hasattr(self, "_stoi"):
            self._stoi = {t: i for i, t in enumerate(self.itos)}
        return self._stoi

    def encode(self, text: str, seq_len: int) -> np.ndarray:
        ids = [self.stoi.get(t, UNK) for t in tokenize(text)][:seq_len]
        out = np.full(seq_len, PAD, dtype=np.int64)
        if ids:
            out[seq_len - len(ids):] = ids  # left padding
        return out

    def decode(self, ids: Sequence[int]) -> List[str]:
        return [self.itos[i] for i in ids if i != PAD]


@dataclass
class TextSplits:
    name: str
    texts_train: List[str]
    y_train: np.ndarray
    texts_test: List[str]
    y_test: np.ndarray
    class_names: List[str]


def to_dataset(s: TextSplits, cfg) -> Dataset:
    if cfg.tokenizer != "word":
        raise ValueError(f"data.tokenizer={cfg.tokenizer!r} is not available; valid: word")
    vocab = Vocab.build(s.texts_train, cfg.vocab_size)
    encode = lambda texts: np.stack([vocab.encode(t, cfg.seq_len) for t in texts])  # noqa: E731
    return Dataset(s.name, encode(s.texts_train), np.asarray(s.y_train), encode(s.texts_test), np.asarray(s.y_test),
                   len(s.class_names), list(s.class_names), vocab=vocab, texts_test=list(s.texts_test))
