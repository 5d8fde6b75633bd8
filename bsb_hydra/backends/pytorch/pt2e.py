"""PyTorch 2 Export quantization for the pytorch backend (backend.flow=pt2e, the default): torchao's
PT2E static and QAT flows and its int8 dynamic-activation config, each ending in a module that
``bsb_hydra.backends.pytorch._save_aoti`` compiles into an AOTInductor package.

Static: ``torch.export.export(strict=True)`` with a dynamic batch -> ``prepare_pt2e`` with the X86
Inductor quantizer (x86_64) or the ARM Inductor quantizer (aarch64; both ship in torchao, no
ExecuTorch) -> calibration on training samples -> ``convert_pt2e``. Inductor then lowers the
quantize/dequantize pairs around each conv and linear into oneDNN int8 kernels (qconv / qlinear,
with ReLU, ReLU6 and the residual add+ReLU fused as post-ops) when it compiles with freezing.

Why strict export: the X86 recipe finds its fusion patterns (conv+add+relu, conv+relu ...) through
``get_source_partitions``, which groups nodes by their source module. torch 2.14's default
non-strict export records no ``source_fn_stack``, so the grouping falls back to the module's name
in ``nn_module_stack``: torchvision's BasicBlock calls one ``self.relu`` twice, both calls land in
one partition with two outputs, and ``prepare_pt2e`` raises "Input partition has more than one
output node" (resnet18). It also never matches the residual ``+=`` as ``operator.add``. TorchDynamo
(strict) export names each call apart (relu, relu_1) and records the add, so the recipe sees one
partition per call and fuses the residual add+ReLU into the conv (qconv2d_pointwise_binary).

Dynamic: ``torchao.quantization.quantize_`` with ``Int8DynamicActivationInt8WeightConfig`` swaps
every nn.Linear weight for an int8 tensor subclass (activations quantized per call); the export of
that module compiles to aten._int_mm (oneDNN int8 GEMM) in the package.

Imported only by the pytorch backend's builds (torchao registers Inductor passes on import)."""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence

import numpy as np

from bsb_hydra.backends.base import Unsupported

FLOW_FX = "backend.flow=fx"
CALIBRATION_BATCH = 32


@contextlib.contextmanager
def _quiet():
    """Warnings torch.export and torchao print on every build that say nothing about this cell:
    torchao's pytree notice, the observers' reduce_range notice, the quantizer's skipped-config and
    unquantized-maxpool notes."""
    with warnings.catch_warnings():
        for message in (r".*Enum subclass.*", r".*reduce_range.*", r".*To copy construct from a tensor.*",
                        r".*Skip the quantization config.*", r".*TypedStorage is deprecated.*",
                        r".*is not quantized, skip annotate.*"):
            warnings.filterwarnings("ignore", message=message)
        yield


# The aten ops each of torchao's conv-bn fold passes can match (F.<name> -> aten.<name>.*).
_FOLD_CONV_OPS = ("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d")


@contextlib.contextmanager
def _fold_only_present_convs():
    """``convert_pt2e`` of a QAT model, without the passes that cannot match it.

    torchao 0.18's ``_fold_conv_bn_qat`` runs its fold pass once per conv kind (conv1d, conv2d,
    conv_transpose1d, conv_transpose2d) whatever the model holds, and each pass exports 24 pattern
    graphs (match and replacement for 12 variants) to match against the model: about 3 s a pass here.
    A pattern built on ``F.conv1d`` matches only ``aten.conv1d`` nodes, so for a kind absent from the
    graph this runs the pass's graph clean-up alone (dead code, the dequantize de-duplication and its
    undo), which is what the pass does when nothing matches. The converted graph's code is identical
    (checked on conv2d, conv1d, conv_transpose2d and linear+batch-norm models); a small CNN's convert
    takes 3 s instead of 12. The patch is undone on exit."""
    from torchao.quantization.pt2e import qat_utils

    original = qat_utils._fold_conv_bn_qat_helper

    def helper(m, conv_fn, example_inputs, is_cuda):
        name = getattr(conv_fn, "__name__", "")
        present = name not in _FOLD_CONV_OPS or any(
            n.op == "call_function" and getattr(getattr(n.target, "_overloadpacket", n.target), "__name__", "") == name
            for n in m.graph.nodes)
        if present:
            return original(m, conv_fn, example_inputs, is_cuda)
        m.graph.eliminate_dead_code()
        m.recompile()
        qat_utils._duplicate_dequantize_node(m)
        m.recompile()
        qat_utils._remove_extra_dequantize(m)
        m.graph.eliminate_dead_code()
        m.recompile()
        return m

    qat_utils._fold_conv_bn_qat_helper = helper
    try:
        yield
    finally:
        qat_utils._fold_conv_bn_qat_helper = original


def quantizer_name(arch: str) -> str:
    return "ArmInductorQuantizer" if arch == "aarch64" else "X86InductorQuantizer"


def _shared_scale(observer):
    """``observer`` (a per-channel observer class) giving every output channel the whole tensor's
    range: per-tensor int8 weights written in the per-channel form (the same numbers per-tensor
    symmetric quantization gives). Inductor's x86 int8 lowering matches ``dequantize_per_channel``
    weights only: a per_tensor_symmetric weight spec is annotated, but the conv then compiles to an
    fp32 aten convolution over dequantized weights (resnet18 b1, 1 thread: 99 ms against 10.6 ms)."""
    import torch

    class SharedScale(observer):
        def calculate_qparams(self):
            lo, hi = self.min_val, self.max_val
            if lo.numel() == 0:
                return super().calculate_qparams()
            return self._calculate_qparams(torch.full_like(lo, float(lo.min())), torch.full_like(hi, float(hi.max())))

    SharedScale.__name__ = SharedScale.__qualname__ = f"SharedScale{observer.__name__}"
    return SharedScale


def quantization_config(q, arch: str, reduce_range: bool, qat: bool = False):
    """The quantizer's default config for ``arch`` with this cell's activation observer (quant.method:
    MinMax or Histogram, the latter being X86's default) and weight granularity."""
    import torch
    from torchao.quantization.pt2e import (HistogramObserver, MinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    per_channel = q.granularity.value == "per_channel"
    eps = {"eps": 2 ** -12}
    if arch == "aarch64":
        from torchao.quantization.pt2e.quantizer.arm_inductor_quantizer import \
            get_default_arm_inductor_quantization_config as default
        config = default(is_qat=qat)
    else:
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import \
            get_default_x86_inductor_quantization_config
        config = get_default_x86_inductor_quantization_config(is_qat=qat, reduce_range=reduce_range)
    if not qat:
        observer = HistogramObserver if q.method.value == "histogram" else MinMaxObserver
        act = replace(config.input_activation, observer_or_fake_quant_ctr=observer.with_args(**eps))
        config = replace(config, input_activation=act, output_activation=act)
    if qat:
        from torchao.quantization.pt2e import FakeQuantize

        # the learned ranges: weights through a fake quantizer whose observer gives the qparams
        observer = MovingAveragePerChannelMinMaxObserver
        ctr = FakeQuantize.with_args(observer=observer if per_channel else _shared_scale(observer), **eps)
    else:
        ctr = (PerChannelMinMaxObserver if per_channel else _shared_scale(PerChannelMinMaxObserver)).with_args(**eps)
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=ctr)
    return replace(config, weight=weight)


def make_quantizer(arch: str, config, float_layers: Sequence[str] = ()):
    """The Inductor quantizer of ``arch`` with ``config`` global and each of ``float_layers``
    (module names) left unannotated: their ops stay fp32 (quant=auto)."""
    if arch == "aarch64":
        try:
            from torchao.quantization.pt2e.quantizer.arm_inductor_quantizer import ArmInductorQuantizer as Q
        except ImportError as e:
            raise Unsupported(f"PT2E on aarch64 needs torchao's ArmInductorQuantizer, which did not import here "
                              f"({e}); {FLOW_FX} runs torch.ao's qnnpack path") from None
    else:
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer as Q
    quantizer = Q().set_global(config)
    for name in float_layers:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def pad_one_channel_convs(model):
    """``model`` (a copy) with every Conv2d over a one-channel input (a grayscale model's first conv)
    computing over [x, 0] instead: two input channels, the second one's weights zero. The same
    numbers (the zero channel adds nothing, and the input's quantization range already holds 0), and
    a layout Inductor gets right: with a dynamic batch its conv lowering takes a (N, 1, H, W) input
    as NCHW and expects an NCHW output (torch/_inductor/mkldnn_ir.py,
    _prepare_convolution_fusion_create), while oneDNN's prepacked int8 conv writes NHWC, and the
    package then read the conv's output in the wrong order (the cnn on fashion_mnist: outputs off by
    their own size; torch 2.14.1). Keeping such a conv fp32 instead trips torchao's QAT conv+bn
    fusion (IndexError in _update_conv_input_qspec_map_after_replacement). The cost: twice the
    multiply-adds of the model's smallest conv. Returns (model, names of the padded convs)."""
    import torch
    from torch import nn

    class ZeroPaddedInputConv(nn.Module):
        def __init__(self, conv: nn.Conv2d) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                                  1, conv.bias is not None, conv.padding_mode)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[:, :1].copy_(conv.weight)
                if conv.bias is not None:
                    self.conv.bias.copy_(conv.bias)
            self.conv.train(conv.training)

        def forward(self, x):
            return self.conv(torch.cat([x, torch.zeros_like(x)], 1))

    m = copy.deepcopy(model)
    names = [name for name, c in m.named_modules() if isinstance(c, nn.Conv2d) and c.in_channels == 1 and c.groups == 1]
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = m.get_submodule(parent) if parent else m
        setattr(owner, leaf, ZeroPaddedInputConv(getattr(owner, leaf)))
    return m, names


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def export_for_quantization(model, example, scheme: str, model_name: str):
    """``model`` captured by TorchDynamo (strict export; see the module's docstring) with a dynamic
    batch dimension, as the GraphModule prepare_pt2e annotates. A model it cannot capture (a
    detector's data-dependent post-processing) is Unsupported here, before any calibration."""
    import torch

    two = torch.cat([example, example])  # batch 1 would specialise the dimension to 1
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        return torch.export.export(model, (two,), dynamic_shapes=({0: batch},), strict=True).module()
    except Exception as e:
        raise Unsupported(f"quant={scheme} on pytorch (PT2E): torch.export (strict, dynamic batch) cannot capture "
                          f"model={model_name} ({_first_line(e)}); run it on onnxruntime, or try {FLOW_FX} "
                          "(torch.ao's FX tracing)") from None


@dataclass
class StaticResult:
    module: object  # the converted GraphModule (quantize/dequantize around int8-capable ops)
    info: dict


def count_quantized(gm) -> dict:
    """How many ops the quantizer turned int8, from the converted graph: the weights dequantized per
    channel (one per int8 conv or linear) and the activation quantize nodes."""
    weights = acts = 0
    for n in gm.graph.nodes:
        target = str(n.target)
        if n.op != "call_function" or "quantized_decomposed" not in target:
            continue
        if target.startswith("quantized_decomposed.dequantize_per_channel"):
            weights += 1
        elif target.startswith("quantized_decomposed.quantize_per_tensor"):
            acts += 1
    return {"int8_weights": str(weights), "activation_quantize_nodes": str(acts)}


def static_pt2e(model, example, calibration: np.ndarray, q, arch: str, reduce_range: bool, model_name: str,
                float_layers: Sequence[str] = (), args: Callable = None) -> StaticResult:
    """Static int8 through PT2E: export, annotate, calibrate on ``calibration`` (real training
    samples, in batches of CALIBRATION_BATCH), convert."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, padded = pad_one_channel_convs(model)
    with _quiet():
        gm = export_for_quantization(model.eval(), example, q.scheme.value, model_name)
        quantizer = make_quantizer(arch, quantization_config(q, arch, reduce_range), float_layers)
        try:
            prepared = prepare_pt2e(gm, quantizer)
        except Exception as e:
            raise Unsupported(f"quant={q.scheme.value} on pytorch (PT2E): {quantizer_name(arch)} cannot annotate "
                              f"model={model_name} ({_first_line(e)}); try {FLOW_FX}") from None
        with torch.no_grad():
            for i in range(0, len(calibration), CALIBRATION_BATCH):
                prepared(*args(calibration[i:i + CALIBRATION_BATCH]))
        converted = convert_pt2e(prepared)
    counts = count_quantized(converted)
    if counts["int8_weights"] == "0":
        raise Unsupported(f"quant={q.scheme.value} on pytorch (PT2E): {quantizer_name(arch)} quantized no conv or "
                          f"linear of model={model_name}; try {FLOW_FX}")
    info = {"flow": "pt2e", "quantizer": quantizer_name(arch), **counts,
            "export": "aoti", "reduce_range": str(reduce_range).lower(),
            "zero_padded_input_convs": ",".join(padded) or "none",
            "weight_granularity": q.granularity.value + ("" if q.granularity.value == "per_channel" else
                                                         " (one shared scale in the per-channel form Inductor lowers)"),
            "note": ("PT2E: torch.export (strict) -> prepare_pt2e -> calibrate -> convert_pt2e -> AOTInductor "
                     "(oneDNN int8 conv/linear with fused ReLU/ReLU6/add post-ops, int8 between them)")}
    return StaticResult(converted, info)


@dataclass
class QatPt2eResult:
    module: object  # converted GraphModule
    losses: List[float]
    seconds: float
    reduce_range: bool
    info: dict


def qat_pt2e(model, ds, q, seed: int, arch: str, reduce_range: bool, model_name: str) -> QatPt2eResult:
    """QAT through PT2E: export in train mode (batch-norm kept, so it trains), prepare_qat_pt2e,
    fine-tune with the shared training loop (bsb_hydra.train.train_model), freeze the observers,
    convert_pt2e."""
    import torch
    from torchao.quantization.pt2e import allow_exported_model_train_eval, disable_observer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from bsb_hydra.train import train_model

    example = torch.from_numpy(np.ascontiguousarray(ds.x_train[:1]))
    model, padded = pad_one_channel_convs(model)
    with _quiet():
        gm = export_for_quantization(model.train(), example, "qat", model_name)
        quantizer = make_quantizer(arch, quantization_config(q, arch, reduce_range, qat=True))
        try:
            prepared = prepare_qat_pt2e(gm, quantizer)
        except Exception as e:
            raise Unsupported(f"quant=qat on pytorch (PT2E): {quantizer_name(arch)} cannot annotate model={model_name} "
                              f"for QAT ({_first_line(e)}); try {FLOW_FX}") from None
        allow_exported_model_train_eval(prepared)  # .train()/.eval() switch the exported batch-norm and dropout
        t0 = time.perf_counter()
        losses = train_model(prepared, ds, q, seed, label="qat")
        seconds = time.perf_counter() - t0
        prepared.apply(disable_observer)  # the learned ranges are final
        prepared.eval()
        with _fold_only_present_convs():
            converted = convert_pt2e(prepared)
    info = {"flow": "pt2e", "quantizer": quantizer_name(arch), **count_quantized(converted), "export": "aoti",
            "weight_granularity": q.granularity.value, "zero_padded_input_convs": ",".join(padded) or "none"}
    return QatPt2eResult(converted, losses, seconds, reduce_range, info)


def dynamic_torchao(model, granularity: str):
    """``model`` (a copy) with every nn.Linear weight int8 and its input quantized per call (torchao's
    Int8DynamicActivationInt8WeightConfig). Activations per tensor (as torch.ao's and ORT's dynamic
    schemes quantize them; symmetric, torchao's default), weights per output channel (PerRow) or per
    tensor. Returns (module, number of Linear layers quantized)."""
    from torch import nn
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, PerTensor, quantize_

    m = copy.deepcopy(model).eval()
    n = sum(isinstance(x, nn.Linear) for x in m.modules())
    if n:
        weight = PerRow() if granularity == "per_channel" else PerTensor()
        # set_inductor_config=False: torchao would otherwise change process-wide Inductor settings
        with _quiet():
            quantize_(m, Int8DynamicActivationInt8WeightConfig(granularity=[PerTensor(), weight],
                                                               set_inductor_config=False))
    return m, n


def compiled_kernels(package) -> dict:
    """The int8 kernels the AOTInductor package calls (from its generated C++ wrapper): qconv / qlinear
    (oneDNN) and _int_mm; a package with none runs its "int8" graph as fp32 aten ops."""
    import re
    import zipfile
    from collections import Counter

    with zipfile.ZipFile(package) as z:
        text = "".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith("wrapper.cpp"))
    calls = Counter(re.findall(r"aoti_torch_cpu_(_qconv\w*|_qlinear\w*|_int_mm\w*|convolution|addmm\w*|mm_out)\(",
                               text))
    return {k.lstrip("_"): v for k, v in sorted(calls.items())}


def constants_bytes(package) -> Optional[int]:
    """Bytes of the constants (weights, scales, prepacked buffers) compiled into the package's .so,
    from its generated wrapper: the package's size less its code. A package carries ~0.3 MB of code
    (x86_64, torch 2.14.1), which for a small model outweighs its int8 weights."""
    import re
    import zipfile

    try:
        with zipfile.ZipFile(package) as z:
            text = "".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith("wrapper.cpp"))
    except Exception:
        return None
    sizes = re.findall(r"constants_info_\[\d+\]\.data_size = (\d+);", text)
    return sum(int(v) for v in sizes) if sizes else None


def kernel_summary(package) -> Optional[str]:
    try:
        calls = compiled_kernels(package)
    except Exception:  # a package layout this does not know: the fact is missing, the build is not wrong
        return None
    return ",".join(f"{k}:{v}" for k, v in calls.items()) or "none"
