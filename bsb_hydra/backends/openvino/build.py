"""backend=openvino's builds (the sweep process's side). The fp32 model becomes OpenVINO IR through
the ONNX graph every ONNX-based backend here starts from: a torch model exported by the onnxruntime
backend's ``export_onnx`` (same opset, dynamic batch), or a file's graph with its per-sample dims
fixed (``fixed_dims_copy``): a user's ONNX file (model=onnx), or the tf2onnx export of model=keras and
model=tflite (the one onnxruntime measures: ``ctx.source_onnx``); ``ov.convert_model`` converts it.
Each scheme then:

fp32    the converted model, saved with ``compress_to_fp16=False`` (ov.save_model's default
        compresses to fp16); run with INFERENCE_PRECISION_HINT=f32, so a CPU with bf16 does not run
        this "fp32" cell in bf16 (the CPU plugin's default there).
fp16    fp16 WEIGHTS: ``ov.save_model(..., compress_to_fp16=True)``, each weight stored in fp16 behind a
        Convert to f32. The CPU plugin folds those Converts at compile time and computes in f32 (the
        same precision hint as every cell): the gain is the file's size, not speed, as for TFLite's
        fp16. The other reading, INFERENCE_PRECISION_HINT=f16 (fp16 arithmetic), is not used: the CPU
        plugin computes in f16 only on CPUs with AVX512-FP16 / AMX-FP16 (it falls back to f32
        elsewhere), so the cell would mean different things on different machines, and the fp32
        reference in the same worker shares the runner's settings.
static  ``nncf.quantize`` (NNCF's post-training quantization: FakeQuantize on weights and activations,
        fast bias correction, NNCF's default preset) on the cell's calibration samples (real training
        samples, one per NNCF item, as NNCF recommends), activation ranges min/max
        (RangeEstimatorParametersSet.MINMAX, quant.method=minmax), weights per channel or per tensor
        (quant.granularity), 7-bit weights where int8 kernels saturate (quant.reduce_range -> NNCF's
        OverflowFix, null = on for x86 without VNNI as on the other backends); ov.save_model stores the
        quantized weights as int8 constants.
dynamic ``nncf.compress_weights`` INT8_ASYM (int8 weights per output channel, whatever
        quant.granularity says: NNCF has no per-tensor int8 mode; the tag says so) and, in the runner, the CPU
        plugin's DYNAMIC_QUANTIZATION_GROUP_SIZE (backend.dynamic_quantization_group_size, null = 32):
        OpenVINO's own run-time activation quantization. For each FullyConnected (MatMul / Gemm with a
        constant weight) whose weight is compressed, the plugin quantizes the input activations to int8
        at every call, one scale per group of that many input channels, and runs an int8 x int8 kernel
        (node type FullyConnectedCompressed in the profile). Convolutions get int8 weights too
        (quant.convolutions=null or true; false keeps them fp32): the plugin decompresses them to f32 at
        compile time, so they compute in f32 (a size win only), as ORT's dynamic leaves convs fp32.
        Measured here on a 3-layer 1024-wide MLP at b8, 1 thread: 0.18 ms against 0.60 ms with the
        group size 0 (weights decompressed, f32 activations) and 0.46 ms fp32; max |error| 1.6e-3 against
        8e-4 with float activations.
int4_weight_only
        ``nncf.compress_weights``: quant.bits=4 -> INT4_SYM / INT4_ASYM (quant.symmetric) in groups of
        quant.block_size input channels, ratio 1.0 (NNCF keeps the embedding and the last layer in its
        int8 backup precision); quant.bits=8 -> INT8_SYM / INT8_ASYM, per output channel (no groups).
        Activations stay float unless the CPU plugin's run-time dynamic quantization is on
        (backend.dynamic_quantization_group_size).

auto    ``nncf.quantize_with_accuracy_control``: static's nncf.quantize, then layers reverted to float
        until the accuracy drop on the selection subset is within quant.budget_pp / budget_rel
        (bsb_hydra/backends/openvino/auto.py says how auto's budget, subset and trials map to NNCF's).

Unsupported, with the reason in ``no_scheme_reasons`` / ``unsupported_reason``: qat, fake_quant;
quant.analyze (mixed.py's table); quant.fallback=fp16; quant.method other than minmax; dynamic with
the group size 0; quant.bits=2; quant.accuracy_level (an ORT setting); an already-quantized .tflite
file's own scheme (models/tflite.py: measured as it is on tflite and onnxruntime)."""
from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from bsb_hydra.backends.base import FAKE_QUANT_ELSEWHERE, Artifact, Backend, BuildContext, Unsupported
from bsb_hydra.backends.openvino import peak

# import name -> pip name; nncf only for the schemes that quantize
REQUIRED = {"openvino": "openvino"}
NNCF_REQUIRED = {"nncf": "nncf"}
INSTALL = "`pip install -c requirements/lock.txt -e '.[openvino]'` (make setup does)"
# The integer element types of a weight constant NNCF leaves behind (int8 static, int8/int4 compressed).
LOW_BIT_TYPES = ("i8", "u8", "i4", "u4", "nf4", "f4e2m1")

# quant=dynamic: the CPU plugin's group size for the run-time int8 activations, unless the backend config sets one
DYNAMIC_GROUP_SIZE = 32


def ov_op_counts(model) -> Dict[str, str]:
    """Op counts of an ov.Model, and the element types of its weight constants (2+ dims)."""
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops())
    weights = Counter(str(op.get_element_type().get_type_name()) for op in model.get_ordered_ops()
                      if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() >= 2)
    return {"ops": ",".join(f"{k}:{v}" for k, v in sorted(ops.items()) if k not in ("Constant", "Parameter", "Result")),
            "weight_dtypes": ",".join(f"{k}:{v}" for k, v in sorted(weights.items()))}


def model_inputs(model, samples) -> List[Dict[str, np.ndarray]]:
    """One {input name: array of one sample} per sample (an array, or a Feeds of named inputs), in
    the dtypes ``model`` (an ov.Model) declares: NNCF's data items."""
    from bsb_hydra.feeds import Feeds

    names = [p.get_any_name() for p in model.inputs]
    dtypes = [np.dtype(p.get_element_type().to_dtype()) for p in model.inputs]
    arrays = [samples.arrays[n] for n in names] if isinstance(samples, Feeds) else [samples]
    return [{n: np.ascontiguousarray(a[i:i + 1], dtype=d) for n, a, d in zip(names, arrays, dtypes)}
            for i in range(len(samples))]


def _quiet_nncf() -> None:
    """NNCF logs every step at INFO on its own logger, which Hydra's root handler shows."""
    logging.getLogger("nncf").setLevel(logging.WARNING)


class OpenvinoBackend(Backend):
    name = "openvino"
    suffix = ".xml"  # IR: <scheme>.xml beside <scheme>.bin (Artifact.companions)
    takes_onnx_file = True  # a user's ONNX file converts as it is (ov.convert_model reads ONNX)
    takes_keras_file = True  # model=keras / model=tflite: the tf2onnx export onnxruntime measures, converted
    # quant=auto is NNCF's own (build_auto); quant.analyze is mixed.py's table, over hooks openvino has not
    no_auto_reason = ("the per-layer sensitivity table is bsb_hydra/mixed.py's, over mixed-precision hooks openvino "
                      "does not have; quant=auto on openvino is NNCF's quantize_with_accuracy_control, which ranks "
                      "and reverts layers itself (its log is logged with the auto cell)")
    no_fp16_fallback_reason = ("NNCF's accuracy control reverts a layer to the model's own precision (fp32), and "
                               "ov.save_model's compress_to_fp16 leaves the float weights of a quantized model f32 "
                               "(measured: the same .bin)")
    no_scheme_reasons = {
        "qat": ("QAT on OpenVINO is NNCF's PyTorch QAT (fine-tuning with NNCF's own fake quantizers), which is not "
                "wired; QAT runs on pytorch, onnxruntime and tflite"),
        "fake_quant": FAKE_QUANT_ELSEWHERE,
    }
    fp32_independent = ("shapes", "dynamic_quantization_group_size")  # the runner's
    fp32_packages = ("onnx", "onnxscript", "openvino")

    def unsupported_reason(self, cfg) -> Optional[str]:
        reason = super().unsupported_reason(cfg)
        if reason:
            return reason
        q = cfg.quant
        scheme = q.scheme.value
        needed = {**REQUIRED, **(NNCF_REQUIRED if scheme in ("static", "auto", "dynamic", "int4_weight_only") else {})}
        missing = [pip for mod, pip in needed.items() if importlib.util.find_spec(mod) is None]
        if missing:
            return f"backend=openvino needs {', '.join(missing)}: install the extra with {INSTALL}"
        if scheme in ("static", "auto") and q.method.value != "minmax":
            return (f"quant.method={q.method.value} on openvino: the NNCF path here calibrates activations with "
                    "min/max (RangeEstimatorParametersSet.MINMAX); use quant.method=minmax")
        if scheme == "dynamic":
            if cfg.backend.dynamic_quantization_group_size == 0:
                return ("quant=dynamic with backend.dynamic_quantization_group_size=0: 0 turns the CPU plugin's "
                        "run-time activation quantization off (that cell is quant=int4_weight_only quant.bits=8)")
        if scheme == "int4_weight_only":
            if q.bits not in (4, 8):
                return (f"quant.bits={q.bits} on openvino: nncf.compress_weights has integer modes of 4 and 8 bits "
                        "only (INT4_SYM/ASYM, INT8_SYM/ASYM)")
            if q.accuracy_level:
                return (f"quant.accuracy_level={q.accuracy_level} is ONNX Runtime's MatMulNBits setting; on openvino "
                        "the activations' run-time int8 quantization is backend.dynamic_quantization_group_size "
                        "(leave quant.accuracy_level=0)")
        return None

    def runner_settings(self, cfg, engine: str) -> Dict[str, Any]:
        settings: Dict[str, Any] = {"shapes": cfg.backend.shapes, "inference_precision": "f32"}
        group = cfg.backend.dynamic_quantization_group_size
        if cfg.quant.scheme.value == "dynamic":
            settings["dynamic_quantization_group_size"] = int(DYNAMIC_GROUP_SIZE if group is None else group)
        elif cfg.quant.scheme.value == "int4_weight_only" and group is not None:
            settings["dynamic_quantization_group_size"] = int(group)
        return settings

    peak_kernels = peak.KERNELS
    peak_artifact_kernels = peak.ARTIFACT_KERNELS

    def peak_artifacts(self, out: Path, size: int, features: int, threads: int = 1) -> Dict[str, Path]:
        return peak.peak_artifacts(out, size, features)

    def peak_settings(self, arch: str) -> Dict[str, Any]:
        return {"shapes": "static", "inference_precision": "f32"}  # a static cell's

    # ------------------------------------------------------------------------------ fp32 graph
    def _onnx(self, ctx: BuildContext) -> Path:
        """The fp32 ONNX graph OpenVINO converts: the torch model's export, or the user's file."""
        from bsb_hydra.backends.onnxruntime.build import export_onnx, fixed_dims_copy

        path = ctx.workdir / "fp32_export.onnx"
        if not path.exists():
            if ctx.source_onnx is not None:
                fixed_dims_copy(ctx.source_onnx, ctx.example, path)
            else:
                export_onnx(ctx.model, ctx.example, path, ctx.cfg.backend.opset)
        return path

    def _fp32_model(self, ctx: BuildContext):
        """The fp32 ov.Model: this cell's fp32 IR where it is already built (or came from the fp32
        artifact cache: steps.fp32_artifact writes it to workdir/fp32.xml), else converted from ONNX."""
        import openvino as ov

        ir = ctx.workdir / f"fp32{self.suffix}"
        if ir.is_file() and ir.with_suffix(".bin").is_file():
            return ov.Core().read_model(str(ir))
        return ov.convert_model(str(self._onnx(ctx)))

    def _save(self, model, ctx: BuildContext, out: Path, info: Dict[str, str], compress_to_fp16: bool = False):
        import openvino as ov

        ov.save_model(model, str(out), compress_to_fp16=compress_to_fp16)
        bin_path = out.with_suffix(".bin")
        facts = ov_op_counts(ov.Core().read_model(str(out)))  # what was written (int8 weights after save)
        info = {**facts, **info, "openvino_version": ov.get_version().split("-")[0],
                "ir_bytes": f"xml {out.stat().st_size}, bin {bin_path.stat().st_size}"}
        return Artifact(out, ctx.input_dtype, info, companions=[bin_path])

    # ---------------------------------------------------------------------------------- schemes
    def build_fp32(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._save(self._fp32_model(ctx), ctx, out, {"converted_from": "onnx (ov.convert_model)"})

    def build_fp16(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._save(self._fp32_model(ctx), ctx, out,
                          {"note": "fp16 weights (ov.save_model compress_to_fp16=True), computed in f32 "
                                   "(INFERENCE_PRECISION_HINT=f32)"}, compress_to_fp16=True)

    def _static_setup(self, ctx: BuildContext):
        """What quant=static's nncf.quantize is given (quant=auto's quantize_with_accuracy_control too):
        the fp32 ov.Model, the calibration nncf.Dataset (one real training sample per item, NNCF's
        advice), its keyword arguments (subset_size, target_device, advanced parameters, model_type)
        and the facts to log."""
        import nncf
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, OverflowFix,
                                                           QuantizationParameters)
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        from bsb_hydra.qat import reduce_range_default

        _quiet_nncf()
        q = ctx.cfg.quant
        model = self._fp32_model(ctx)
        items = model_inputs(model, ctx.calibration)
        reduce_range = reduce_range_default(q, ctx.arch == "x86_64", ctx.isa)
        per_channel = q.granularity.value == "per_channel"
        advanced = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE,
            weights_quantization_params=QuantizationParameters(per_channel=per_channel),
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
        kw = {"model_type": nncf.ModelType.TRANSFORMER} if ctx.cfg.model.family == "transformer" else {}
        kw.update(subset_size=len(items), target_device=nncf.TargetDevice.CPU)
        info = {"method": "nncf.quantize (post-training, fast bias correction, NNCF's default preset)",
                "calibration_items": str(len(items)), "activation_ranges": "minmax",
                "weight_granularity": q.granularity.value, "reduce_range": str(reduce_range).lower(),
                "overflow_fix": "enable (7-bit weights)" if reduce_range else "disable",
                "nncf_version": nncf.__version__,
                **({"model_type": "transformer"} if "model_type" in kw else {})}
        return model, nncf.Dataset(items), advanced, kw, info

    def build_static(self, ctx: BuildContext, out: Path) -> Artifact:
        import nncf

        model, calibration, advanced, kw, info = self._static_setup(ctx)
        quantized = nncf.quantize(model, calibration, advanced_parameters=advanced, **kw)
        return self._save_int8(quantized, ctx, out, info)

    def _save_int8(self, model, ctx: BuildContext, out: Path, info: Dict[str, str]) -> Artifact:
        """The IR of a model NNCF quantized, refused when it holds no int8 weight."""
        art = self._save(model, ctx, out, info)
        if not any(t in art.info["weight_dtypes"] for t in ("i8:", "u8:")):
            raise Unsupported(f"quant={ctx.cfg.quant.scheme.value} on openvino quantized no weight of "
                              f"model={ctx.cfg.model.name} (weights: {art.info['weight_dtypes']})")
        return art

    def build_auto(self, ctx: BuildContext, out: Path) -> Artifact:
        """NNCF's quantize_with_accuracy_control (bsb_hydra/backends/openvino/auto.py)."""
        from bsb_hydra.backends.openvino.auto import build_auto

        return build_auto(self, ctx, out)

    def build_dynamic(self, ctx: BuildContext, out: Path) -> Artifact:
        import nncf

        _quiet_nncf()
        conv = ctx.cfg.quant.convolutions is not False
        scope = {} if conv else {"ignored_scope": nncf.IgnoredScope(
            types=["Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData"],
            validate=False)}
        mode = nncf.CompressWeightsMode.INT8_ASYM
        compressed = nncf.compress_weights(self._fp32_model(ctx), mode=mode, **scope)
        group = ctx.cfg.backend.dynamic_quantization_group_size
        info = {"method": f"nncf.compress_weights mode={mode.value} (per output channel) + the CPU plugin's "
                          f"DYNAMIC_QUANTIZATION_GROUP_SIZE={DYNAMIC_GROUP_SIZE if group is None else group}",
                "convolutions": ("int8 weights, decompressed to f32 at compile time (f32 compute)" if conv
                                 else "fp32 (quant.convolutions=false)"),
                "weight_granularity": "per_channel" + (
                    "" if ctx.cfg.quant.granularity.value == "per_channel" else
                    " (quant.granularity=per_tensor, dynamic's default, is not applied: NNCF's int8 weight "
                    "compression has no per-tensor mode)"),
                "nncf_version": nncf.__version__}
        art = self._save(compressed, ctx, out, info)
        if not any(f"{t}:" in art.info["weight_dtypes"] for t in LOW_BIT_TYPES):
            raise Unsupported(f"quant=dynamic on openvino: nncf.compress_weights compressed no weight of "
                              f"model={ctx.cfg.model.name} (weights: {art.info['weight_dtypes']})")
        if "MatMul" not in art.info["ops"]:
            art.info["note"] = ("no MatMul/Gemm layer: the run-time activation quantization applies to none, the "
                                "cell is int8 weights with f32 compute")
        return art

    def build_int4_weight_only(self, ctx: BuildContext, out: Path) -> Artifact:
        import nncf

        _quiet_nncf()
        q = ctx.cfg.quant
        modes = {(4, True): nncf.CompressWeightsMode.INT4_SYM, (4, False): nncf.CompressWeightsMode.INT4_ASYM,
                 (8, True): nncf.CompressWeightsMode.INT8_SYM, (8, False): nncf.CompressWeightsMode.INT8_ASYM}
        mode = modes[(q.bits, bool(q.symmetric))]
        kw = {"group_size": q.block_size, "ratio": 1.0} if q.bits == 4 else {}
        try:
            compressed = nncf.compress_weights(self._fp32_model(ctx), mode=mode, **kw)
        except Exception as e:  # a layer whose input channels the group size does not divide, ...
            text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise Unsupported(f"quant=int4_weight_only on openvino: nncf.compress_weights({mode.value}, "
                              f"{kw or 'per channel'}) refused model={ctx.cfg.model.name}: {text}") from None
        info = {"method": f"nncf.compress_weights mode={mode.value}", "weight_bits": str(q.bits),
                "block_size": str(q.block_size) if q.bits == 4 else "per output channel (int8 modes have no groups)",
                "symmetric": str(q.symmetric).lower(), "nncf_version": nncf.__version__}
        art = self._save(compressed, ctx, out, info)
        if not any(f"{t}:" in art.info["weight_dtypes"] for t in LOW_BIT_TYPES):
            raise Unsupported(f"quant=int4_weight_only on openvino: nncf.compress_weights compressed no weight of "
                              f"model={ctx.cfg.model.name} (weights: {art.info['weight_dtypes']})")
        return art
