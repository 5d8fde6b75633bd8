"""A small BERT built from the config (random init, no pretrained weights), the same classifier
as ``transformer`` around it: fast tests of every transformer code path."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from omegaconf import MISSING

import torch
from torch import nn

from bsb_hydra.data.text import PAD
from bsb_hydra.config.base import ConfigError, positive as _positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS
from bsb_hydra.models.transformer import Pooling, TextTransformer, _check_input, _value


@dataclass
class TransformerTinyConfig(ModelConfig):
    """A small BERT built from this config (random init, no pretrained weights): fast tests."""
    name: str = "transformer_tiny"
    default_data: str = "rt_snippets"
    family: ClassVar[str] = "transformer"
    vocab_size: int = MISSING  # the tokenizer's (conf/model/transformer_tiny.yaml: ${data.vocab_size})
    max_positions: int = MISSING  # conf/model/transformer_tiny.yaml: ${data.seq_len}
    hidden: int = 64  # the encoder's hidden size
    layers: int = 2  # encoder layers
    heads: int = 2  # attention heads
    intermediate: int = 256  # the feed-forward width
    dropout: float = 0.1  # the encoder's dropout rate while training
    pooling: Pooling = Pooling.mean  # as for model=transformer
    head_dropout: float = 0.1  # as for model=transformer
    freeze_encoder: bool = False  # as for model=transformer

    def __post_init__(self) -> None:
        for key in ("vocab_size", "max_positions", "hidden", "layers", "heads", "intermediate"):
            _positive(f"model.{key}", getattr(self, key))
        if self.hidden % self.heads:
            raise ConfigError(f"model.heads={self.heads} is not allowed: it must divide model.hidden={self.hidden}")
        for key in ("dropout", "head_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key}={getattr(self, key)} is not allowed: use 0 <= dropout < 1")




@MODELS.register("transformer_tiny", schema=TransformerTinyConfig)
def build_transformer_tiny(cfg, input_shape, num_classes) -> nn.Module:
    from bsb_hydra.data.text import require_transformers

    _check_input(cfg.name, input_shape)
    require_transformers()
    from transformers import BertConfig, BertModel

    if input_shape[0] > cfg.max_positions:
        raise ValueError(f"data.seq_len={input_shape[0]} is longer than model.max_positions={cfg.max_positions}")
    torch.manual_seed(0)  # the random init is part of the model (train_model reseeds for training)
    bert = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                      num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                      max_position_embeddings=cfg.max_positions, hidden_dropout_prob=cfg.dropout,
                      attention_probs_dropout_prob=cfg.dropout, pad_token_id=PAD)
    bert._attn_implementation = "eager"
    encoder = BertModel(bert, add_pooling_layer=False)
    return TextTransformer(encoder, cfg.hidden, num_classes, _value(cfg.pooling), cfg.head_dropout,
                           cfg.freeze_encoder)
