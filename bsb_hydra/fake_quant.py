"""quant=fake_quant: simulated N-bit quantization (2..8 bits), evaluated in float.

No runtime has kernels for most of these widths, so nothing here is deployable: the cell answers
"how much accuracy survives at N bits", not "how fast". What is simulated:

- weights of every Conv, Linear and Embedding layer (after batch-norm folding, as a deployed model
  would have them) rounded to N bits: symmetric, restricted range [-(2^(N-1) - 1), 2^(N-1) - 1]
  (2 bits is ternary: -s, 0, +s), one scale per output channel (per embedding row) or per tensor,
  scale = max|w| / (2^(N-1) - 1). LSTM weights, biases and normalization parameters stay fp32.
- optionally (quant.activations=true) the input of every Conv and Linear layer, through torch.ao's
  FakeQuantize: affine, per tensor, N bits, its range calibrated (min/max) on real training samples.
- with quant.qat=true, the fake-quantized model is fine-tuned on the training split (straight-through
  gradients of torch's fake_quantize ops) before it is evaluated: QAT's recovery at N bits.

The size is theoretical (``packed_size``): bits x quantized weights, packed, plus their fp32 scales,
plus every other parameter at 32 bits; compared with 32 bits x every parameter.
"""
from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

CALIBRATION_BATCH = 32


def qrange(bits: int) -> Tuple[int, int]:
    """The symmetric, restricted integer range of an N-bit weight: 2 bits -> (-1, 1), 8 -> (-127, 127)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: fake quantization covers 2..8 bits")
    q = 2 ** (bits - 1) - 1
    return -q, q


def fake_quantize_weight(w, bits: int, per_channel: bool, axis: int = 0):
    """w rounded to N bits and back to float (torch's fake_quantize ops: straight-through gradient).
    The scale comes from the detached weight, so training moves the weights, not the rounding grid."""
    import torch

    qmin, qmax = qrange(bits)
    d = w.detach()
    if per_channel:
        dims = [i for i in range(d.dim()) if i != axis]
        amax = d.abs().amax(dim=dims) if dims else d.abs()
        scale = torch.clamp(amax / qmax, min=torch.finfo(torch.float32).tiny).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, axis, qmin, qmax)
    scale = max(float(d.abs().max()) / qmax, torch.finfo(torch.float32).tiny)
    return torch.fake_quantize_per_tensor_affine(w, scale, 0, qmin, qmax)


def _weight_quantizer(bits: int, per_channel: bool):
    from torch import nn

    class WeightFakeQuant(nn.Module):
        """A parametrization of ``weight``: the layer always sees its N-bit rounding."""

        def forward(self, w):
            return fake_quantize_weight(w, bits, per_channel)

    return WeightFakeQuant()


def _activation_quantizer(bits: int, moving_average: bool):
    import torch
    from torch.ao.quantization import FakeQuantize
    from torch.ao.quantization.observer import MinMaxObserver, MovingAverageMinMaxObserver

    observer = MovingAverageMinMaxObserver if moving_average else MinMaxObserver
    return FakeQuantize(observer=observer, quant_min=0, quant_max=2 ** bits - 1, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


@dataclass
class Simulated:
    model: object  # float module, eval mode, weights rounded (parametrizations baked in)
    layers: List[str]  # the quantized layers' names
    activation_quantizers: int
    packed_bytes: int
    fp32_bytes: int
    losses: List[float] = field(default_factory=list)
    qat_seconds: float = 0.0


def quantizable(model) -> Dict[str, object]:
    """name -> module, for every layer whose weight is rounded: Conv, Linear, Embedding."""
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding)
    return OrderedDict((n, m) for n, m in model.named_modules() if isinstance(m, kinds))


def packed_size(model, layers: Dict[str, object], bits: int, per_channel: bool, activation_quantizers: int = 0
                ) -> Tuple[int, int]:
    """(theoretical packed bytes, fp32 bytes) of ``model``'s parameters. Each quantized weight:
    ceil(numel * bits / 8) bytes, packed, plus one fp32 scale per output channel (per tensor: one);
    every other parameter (biases, LSTM and normalization weights) 4 bytes; each activation
    quantizer a fp32 scale and an int32 zero point (8 bytes). fp32: 4 bytes per parameter."""
    quantized = {id(m.weight) for m in layers.values()}
    total = fp32 = 0
    for m in layers.values():
        w = m.weight
        total += math.ceil(w.numel() * bits / 8) + 4 * (w.shape[0] if per_channel else 1)
    for p in model.parameters():  # each shared tensor once
        fp32 += 4 * p.numel()
        if id(p) not in quantized:
            total += 4 * p.numel()
    return total + 8 * activation_quantizers, fp32


def simulate(fp32_model, bits: int, per_channel: bool, activations: bool, calibration=None,
             qat_cfg=None, data=None, seed: int = 0) -> Simulated:
    """A copy of ``fp32_model`` (batch-norm already folded by the caller) with N-bit weights (and
    activations), calibrated on ``calibration`` and, with ``qat_cfg``, fine-tuned on ``data``."""
    import torch
    from torch import nn
    from torch.ao.quantization import disable_observer, enable_observer
    from torch.nn.utils import parametrize

    model = copy.deepcopy(fp32_model).eval()
    layers = quantizable(model)
    n_act = 0
    if activations:
        for name, m in layers.items():
            if isinstance(m, nn.Embedding):  # its input is token ids: nothing to round
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nn.Sequential(OrderedDict(
                [("input_quant", _activation_quantizer(bits, moving_average=qat_cfg is not None)), ("layer", m)])))
            n_act += 1
    for m in layers.values():
        parametrize.register_parametrization(m, "weight", _weight_quantizer(bits, per_channel))
    if activations:
        if calibration is None:
            raise ValueError("quant.activations=true needs calibration samples")
        model.apply(enable_observer)
        with torch.inference_mode():
            for i in range(0, len(calibration), CALIBRATION_BATCH):
                model(torch.from_numpy(calibration[i:i + CALIBRATION_BATCH]))
    losses: List[float] = []
    seconds = 0.0
    if qat_cfg is not None:
        from bsb_hydra.train import train_model

        t0 = time.perf_counter()
        losses = train_model(model, data, qat_cfg, seed, label=f"qat {bits}-bit")
        seconds = time.perf_counter() - t0
    model.apply(disable_observer)  # the ranges are final
    model.eval()
    with torch.no_grad():
        for m in layers.values():  # the rounded weights become plain parameters
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    packed, fp32 = packed_size(fp32_model, quantizable(fp32_model), bits, per_channel, n_act)
    return Simulated(model, list(layers), n_act, packed, fp32, losses, seconds)

