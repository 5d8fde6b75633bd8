"""Static int8 and QAT for the LSTM model in PyTorch, through torch.ao's eager mode and its
quantizable LSTM (FX cannot quantize ``nn.LSTM`` statically).

The LSTM is swapped for ``torch.ao.nn.quantizable.LSTM`` (an LSTM built from Linear layers and
elementwise ops that observers or fake quantizers can see) inside QuantStub -> LSTM -> DeQuantStub;
the head becomes an int8 Linear inside its own QuantWrapper; the embedding gets int8 rows.
``convert`` turns the LSTM into ``torch.ao.nn.quantized.LSTM``: int8 GEMMs and quantized
elementwise ops, one time step after another (there is no fused static int8 LSTM kernel).
Static calibrates the activation ranges on training samples; QAT fine-tunes with fake quantization
first (``bsb_hydra.train.train_model``, the same loop as FX QAT). Imported only by the backends'
build steps, never by a benchmark worker."""
from __future__ import annotations

import copy
import time
import warnings

from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub


class LstmQDQ(nn.Module):
    """QuantStub -> LSTM -> DeQuantStub; returns (output, None) like the float call site uses."""

    def __init__(self, lstm: nn.Module) -> None:
        super().__init__()
        self.quant, self.lstm, self.dequant = QuantStub(), lstm, DeQuantStub()

    def forward(self, x):
        out, _ = self.lstm(self.quant(x))
        return self.dequant(out), None


def _wrap(model, qconfig):
    from torch.ao.quantization import QuantWrapper, float_qparams_weight_only_qconfig

    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LSTM):
                w = LstmQDQ(child)
            elif isinstance(child, nn.Linear):
                w = QuantWrapper(child)
            elif isinstance(child, nn.Embedding):
                child.qconfig = float_qparams_weight_only_qconfig
                continue
            else:
                continue
            w.qconfig = qconfig
            setattr(parent, name, w)
    return m


def _custom(kind: str):
    if kind == "prepare":
        return {"float_to_observed_custom_module_class": {nn.LSTM: nn.quantizable.LSTM}}
    return {"observed_to_quantized_custom_module_class": {nn.quantizable.LSTM: nn.quantized.LSTM}}


def _convert(prepared):
    from torch.ao.quantization import convert

    return convert(prepared.eval(), inplace=False, convert_custom_config_dict=_custom("convert"))


NOTE = ("eager mode: torch.ao quantizable LSTM -> quantized.LSTM (int8 GEMMs and quantized elementwise ops, "
        "step by step: no fused static int8 LSTM kernel), int8 head and embedding")


def lstm_static(model, qconfig, calibrate):
    """Static int8 LSTM model: observers calibrated by ``calibrate(prepared)`` on training samples."""
    from torch.ao.quantization import prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = _wrap(model, qconfig).eval()
        prepare(m, inplace=True, prepare_custom_config_dict=_custom("prepare"))
        calibrate(m)
        return _convert(m)


def lstm_qat(fp32_model, ds, q, seed: int, engine: str, isa: str):
    """Fine-tune a fake-quantized copy (quantizable LSTM, QAT Linear) for q.epochs at q.lr, then
    convert. Returns (quantized model, QatResult)."""
    import torch
    from torch.ao.quantization import convert, disable_observer, prepare, propagate_qconfig_
    from torch.ao.quantization.quantization_mappings import get_default_qat_module_mappings

    from bsb_hydra.qat import QatResult, qat_qconfig_mapping, reduce_range_default
    from bsb_hydra.train import train_model

    torch.backends.quantized.engine = engine
    reduce_range = reduce_range_default(q, engine in ("x86", "fbgemm"), isa)
    qconfig = qat_qconfig_mapping(q.granularity.value == "per_channel", reduce_range).global_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = _wrap(fp32_model, qconfig).train()
        propagate_qconfig_(m)
        convert(m, mapping=get_default_qat_module_mappings(), inplace=True, remove_qconfig=False)  # QAT Linear
        prepare(m, inplace=True, prepare_custom_config_dict=_custom("prepare"))  # train mode: fake quant
        t0 = time.perf_counter()
        losses = train_model(m, ds, q, seed, label="qat")
        seconds = time.perf_counter() - t0
        m.apply(disable_observer)
        with torch.inference_mode():
            quantized = _convert(m)
    return quantized, QatResult(m, losses, seconds, reduce_range)
