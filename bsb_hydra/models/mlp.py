"""A multilayer perceptron on flattened pixels."""
import math

from torch import nn

from bsb_hydra.models import MODELS


@MODELS.register("mlp")
def build(cfg, input_shape, num_classes) -> nn.Module:
    layers = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in cfg.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
