"""An LSTM text classifier: embedding -> LSTM -> linear head on the last time step. Texts are
left-padded (bsb_hydra/data/text.py), so the last step has read every real token."""

from dataclasses import dataclass
from typing import ClassVar

from omegaconf import MISSING
import torch
from torch import nn

from bsb_hydra.config.base import ConfigError, positive as _positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS


@dataclass
class LstmConfig(ModelConfig):
    """Embedding -> LSTM -> linear head on the last time step (texts are left-padded)."""
    name: str = "lstm"
    default_data: str = "rt_snippets"
    family: ClassVar[str] = "recurrent"
    vocab_size: int = MISSING  # the data's vocabulary (conf/model/lstm.yaml: ${data.vocab_size})
    embed_dim: int = 64  # the embedding's width
    hidden: int = 128  # the LSTM's hidden size
    layers: int = 1  # stacked LSTM layers
    dropout: float = 0.5  # dropout rate while training

    def __post_init__(self) -> None:
        for key in ("vocab_size", "embed_dim", "hidden", "layers"):
            _positive(f"model.{key}", getattr(self, key))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} is not allowed: use 0 <= dropout < 1")


class LstmClassifier(nn.Module):
    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(ids))
        return self.head(self.dropout(out[:, -1]))


@MODELS.register("lstm", schema=LstmConfig)
def build(cfg, input_shape, num_classes) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(f"model=lstm takes token ids (N, seq_len), not inputs of shape {input_shape}: "
                         "use a text data set (rt_snippets, imdb, sst2)")
    return LstmClassifier(cfg, num_classes)
