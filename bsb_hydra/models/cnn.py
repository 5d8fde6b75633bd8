"""A small conv net: [conv3x3-bn-relu-maxpool] per width, then a hidden linear layer.
Batch-norm is folded into the convs before quantization (FX fusion; torch.jit.freeze for fp32)."""
from torch import nn

from bsb_hydra.models import MODELS


@MODELS.register("cnn")
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
