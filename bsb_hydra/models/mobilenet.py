"""MobileNetV2-style net for 28-32 px inputs: inverted residual blocks with depthwise 3x3 convs
and linear bottlenecks (ReLU6). Depthwise convs and residual adds are what makes this family hard
to quantize per-tensor: per-channel weight ranges differ by orders of magnitude."""
from torch import nn

from bsb_hydra.models import MODELS


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


@MODELS.register("mobilenet")
def build(cfg, input_shape, num_classes) -> nn.Module:
    return MobileNetV2Small(cfg, input_shape, num_classes)
