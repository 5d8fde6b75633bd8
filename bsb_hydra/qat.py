"""Quantization-aware training in PyTorch (torch.ao FX), shared by the pytorch and onnxruntime
backends: fake quantization is inserted into a copy of the cached fp32 model (conv+bn(+relu)
fused, batch-norm folded during training), which is fine-tuned on the training split. The
pytorch backend converts the result with ``convert_fx``; onnxruntime exports it as a QDQ graph
that keeps the learned ranges. The TFLite backend uses tensorflow-model-optimization instead."""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import List

import numpy as np


def reduce_range_default(q, x86_engine: bool, isa: str) -> bool:
    """7-bit activations where int8 kernels can saturate (x86 without VNNI), unless set."""
    if q.reduce_range is not None:
        return bool(q.reduce_range)
    return x86_engine and "avx512_vnni" not in isa and "avx_vnni" not in isa


def qat_qconfig_mapping(per_channel: bool, reduce_range: bool):
    import torch
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.fake_quantize import (FusedMovingAvgObsFakeQuantize,
                                                     default_per_channel_weight_fake_quant,
                                                     default_weight_fake_quant)
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver

    # quint8 activations; the 7-bit range is spelled out (quant_max=127) so the fake quantizer and
    # its observer agree on it. Weights: int8 symmetric, per output channel or per tensor, with the
    # NON-fused fake quantizer: the fused per-channel one gives channels whose weights share a sign
    # a zero point of 127/-128, which sends ORT's QLinearConv down a path measured 12x slower.
    activation = FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=127 if reduce_range else 255,
        dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    weight = default_per_channel_weight_fake_quant if per_channel else default_weight_fake_quant
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


@dataclass
class QatResult:
    model: object  # the FX-prepared QAT model, eval mode, observers frozen
    losses: List[float]
    seconds: float
    reduce_range: bool


def fx_qat(fp32_model, ds, q, seed: int, engine: str, isa: str) -> QatResult:
    """Fine-tune a fake-quantized copy of ``fp32_model`` for q.epochs at q.lr on the training split."""
    import torch
    from torch.ao.quantization import disable_observer
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    from bsb_hydra.train import train_model

    torch.backends.quantized.engine = engine
    reduce_range = reduce_range_default(q, engine in ("x86", "fbgemm"), isa)
    mapping = qat_qconfig_mapping(q.granularity.value == "per_channel", reduce_range)
    example = (torch.from_numpy(np.ascontiguousarray(ds.x_train[:2])),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_qat_fx(copy.deepcopy(fp32_model).train(), mapping, example)
    t0 = time.perf_counter()
    losses = train_model(prepared, ds, q, seed, label="qat")
    prepared.apply(disable_observer)  # the learned ranges are final
    prepared.eval()
    return QatResult(prepared, losses, time.perf_counter() - t0, reduce_range)
