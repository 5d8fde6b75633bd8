"""MobileNetV2-style net for 28-32 px inputs: inverted residual blocks with depthwise 3x3 convs
and linear bottlenecks (ReLU6). Depthwise convs and residual adds are what makes this family hard
to quantize per-tensor: per-channel weight ranges differ by orders of magnitude."""

from dataclasses import dataclass, field
from typing import List
from torch import nn

from bsb_hydra.config.base import ConfigError, positive as _positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS


@dataclass
class MobilenetConfig(ModelConfig):
    name: str = "mobilenet"
    # Half width by default: 77k parameters, about 1 min per epoch on 2 cores for Fashion-MNIST.
    width_mult: float = 0.5
    stem_channels: int = 16  # the stem convolution's channels (times width_mult)
    # MobileNetV2 inverted-residual settings (expansion t, out channels c, repeats n, stride s),
    # sized for 28-32 px inputs: a stride-2 stem and two stride-2 stages (28 -> 14 -> 7 -> 4)
    # instead of ImageNet's five.
    blocks: List[List[int]] = field(
        default_factory=lambda: [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 1], [6, 64, 2, 2], [6, 96, 1, 1]]
    )
    last_channels: int = 320  # the last convolution's channels before pooling (times width_mult when > 1)
    dropout: float = 0.2  # dropout rate before the classifier while training

    def __post_init__(self) -> None:
        _positive("model.width_mult", self.width_mult)
        _positive("model.stem_channels", self.stem_channels)
        _positive("model.last_channels", self.last_channels)
        if not self.blocks:
            raise ConfigError("model.blocks=[] is not allowed: give at least one [t, c, n, s] block")
        for i, b in enumerate(self.blocks):
            if len(b) != 4 or any(v <= 0 for v in b):
                raise ConfigError(f"model.blocks[{i}]={list(b)} is not allowed: use [t, c, n, s], all > 0")


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_relu6(cin, cout, k, stride, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden, 1, 1)]
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),                   # linear bottleneck
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Small(nn.Module):
    def __init__(self, cfg, input_shape, num_classes) -> None:
        super().__init__()
        c_in = input_shape[0]
        c = _make_divisible(cfg.stem_channels * cfg.width_mult)
        layers = [conv_bn_relu6(c_in, c, 3, 2)]  # stride-2 stem: 28 -> 14, 32 -> 16
        for t, ch, n, s in cfg.blocks:
            out = _make_divisible(ch * cfg.width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        last = _make_divisible(cfg.last_channels * max(1.0, cfg.width_mult))
        layers.append(conv_bn_relu6(c, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


@MODELS.register("mobilenet", schema=MobilenetConfig)
def build(cfg, input_shape, num_classes) -> nn.Module:
    return MobileNetV2Small(cfg, input_shape, num_classes)
