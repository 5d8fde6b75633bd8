"""A small BERT built from the config (random init, no pretrained weights), the same classifier
as ``transformer`` around it: fast tests of every transformer code path."""
from __future__ import annotations

import torch
from torch import nn

from bsb_hydra.data.text import PAD
from bsb_hydra.models import MODELS
from bsb_hydra.models.transformer import TextTransformer, _check_input, _value


@MODELS.register("transformer_tiny")
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
