"""A multilayer perceptron on flattened pixels."""

from dataclasses import dataclass, field
from typing import List
import math

from torch import nn

from bsb_hydra.config.base import ConfigError, positive as _positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS


@dataclass
class MlpConfig(ModelConfig):
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [256, 128])  # the hidden linear layers' widths
    dropout: float = 0.1  # dropout rate while training

    def __post_init__(self) -> None:
        if not self.hidden:
            raise ConfigError("model.hidden=[] is not allowed: give at least one hidden width")
        for i, h in enumerate(self.hidden):
            _positive(f"model.hidden[{i}]", h)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} is not allowed: use 0 <= dropout < 1")


@MODELS.register("mlp", schema=MlpConfig)
def build(cfg, input_shape, num_classes) -> nn.Module:
    layers = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
