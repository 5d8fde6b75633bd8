"""A small conv net: [conv3x3-bn-relu-maxpool] per width, then a hidden linear layer.
Batch-norm is folded into the convs before quantization (FX fusion; torch.jit.freeze for fp32)."""

from dataclasses import dataclass, field
from typing import List
from torch import nn

from bsb_hydra.config.base import ConfigError, positive as _positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS


@dataclass
class CnnConfig(ModelConfig):
    name: str = "cnn"
    channels: List[int] = field(default_factory=lambda: [32, 64])  # each conv-bn-relu-pool stage's width
    fc: int = 128  # the hidden linear layer's width, before the classifier
    dropout: float = 0.2  # dropout rate while training

    def __post_init__(self) -> None:
        if not self.channels:
            raise ConfigError("model.channels=[] is not allowed: give at least one conv width")
        for i, c in enumerate(self.channels):
            _positive(f"model.channels[{i}]", c)
        _positive("model.fc", self.fc)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} is not allowed: use 0 <= dropout < 1")


@MODELS.register("cnn", schema=CnnConfig)
def build(cfg, input_shape, num_classes) -> nn.Module:
    c, h, w = input_shape
    layers = []
    for out in cfg.channels:
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"model.channels={list(cfg.channels)}: too many pooling stages for input {input_shape}")
    layers += [nn.Flatten(), nn.Linear(c * h * w, cfg.fc), nn.ReLU(), nn.Dropout(cfg.dropout),
               nn.Linear(cfg.fc, num_classes)]
    return nn.Sequential(*layers)
