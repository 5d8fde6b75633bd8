"""backend=pytorch's builds (the sweep process's side): the PyTorch CPU backend. Artifacts are AOTInductor packages (.pt2: torch.export, compiled by
Inductor, loaded with torch._inductor.aoti_load_package) or frozen TorchScript files; a fresh process
loads either without the model's Python code.

Schemes: fp32 and fp16 (TorchScript, or AOTInductor with backend.export=aoti); and, under
backend.flow=pt2e (the default; bsb_hydra/backends/pytorch/pt2e.py), dynamic (torchao's int8
dynamic-activation config on Linear, convolutions stay fp32), static (PT2E: strict torch.export ->
prepare_pt2e with the X86 / ARM Inductor quantizer -> calibration on real training samples ->
convert_pt2e) and qat (prepare_qat_pt2e, fine-tuned, convert_pt2e), each compiled to an AOTInductor
package with frozen weights (int8 oneDNN kernels with fused post-ops).
backend.flow=fx keeps torch.ao (deprecated since torch 2.10): dynamic through quantize_dynamic
(Linear, LSTM, Embedding), static through FX graph mode PTQ (conv+bn(+relu) fused, int8 weights
per-channel or per-tensor), qat through FX QAT -> convert_fx, all into TorchScript; the text models
FX cannot handle use eager mode there: the LSTM's static and qat go through torch.ao's quantizable
LSTM (``bsb_hydra.eager_lstm``), the transformer's static wraps each Linear
(``_static_linears_eager``). The LSTM's cells need backend.flow=fx (PT2E has no LSTM pattern); the
transformer's static runs on PT2E too (strict export captures BertModel; its Linear layers int8)."""
from __future__ import annotations

import copy
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


from bsb_hydra.backends.base import Artifact, Backend, BuildContext, Unsupported
from bsb_hydra.backends.pytorch import peak
from bsb_hydra.backends.pytorch.runner import canonical_strides

CALIBRATION_BATCH = 32


def _args(example) -> tuple:
    """The forward's positional arguments for an example: one array or tensor, a tuple of tensors,
    or a Feeds of several named inputs (bsb_hydra/feeds.py)."""
    import torch

    from bsb_hydra.feeds import to_torch_args

    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, tuple):
        return example
    return to_torch_args(example)


def _save_script(module, example, out: Path) -> None:
    import torch

    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # strict=False: a module that returns a dict (torchvision's segmentation models: {"out": ...})
        # keeps it; its structure does not depend on the input
        traced = torch.jit.trace(module, _args(example), check_trace=False, strict=False)
        traced = torch.jit.freeze(traced)  # weights become constants; the same for every scheme
        torch.jit.save(traced, str(out))


AOTI_MAX_BATCH = 4096  # the dynamic batch dimension's upper bound (evaluation feeds chunks up to this)
# freezing: weights folded and prepacked into the compiled graph (and PT2E's int8 lowering).
# enable_line_tables off: the wrapper's -g1 line tables are ~1.1 MB of the .so (an mlp's int8 package
# 1.9 MB, its int8 weights 0.26 MB); a deployment ships the code without them.
AOTI_CONFIGS = {"freezing": True, "aot_inductor.enable_line_tables": False}


def batch_path(path: Path, b: int) -> Path:
    """The package of batch ``b`` beside the batch-1 one: ``int8.pt2`` and ``int8.b8.pt2``."""
    return path if b == 1 else path.with_name(f"{path.name.split('.')[0]}.b{b}.pt2")


def aoti_batches(cfg) -> Optional[List[int]]:
    """The batch sizes that get a package of their own (backend.aoti_batch=static: batch 1 and every
    timed one), or None for one dynamic-batch package."""
    if getattr(cfg.backend, "aoti_batch", "static") != "static":
        return None
    return sorted({1, *(int(b) for b in cfg.benchmark.batch_sizes)})


def keep_precompiled_headers() -> Optional[str]:
    """Where Inductor puts its precompiled C++ headers: moved into its compile cache
    (TORCHINDUCTOR_CACHE_DIR, kept across sweeps: bsb_hydra/local_state.py). Inductor files them under
    default_cache_dir(), read from TMPDIR once at import, not under TORCHINDUCTOR_CACHE_DIR; a sweep's
    TMPDIR is its own and removed at exit, so every process rebuilt both headers (~11 s of g++ on 2
    cores) before its first package. There is no setting for it: the module's two paths are set.
    None when this torch has no such paths (the headers are then built where it decides)."""
    import os

    from torch._inductor import codecache
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    if not hasattr(codecache, "_HEADER_DIR") or not hasattr(codecache, "_HEADER_LOCK_DIR"):
        return None
    codecache._HEADER_DIR = os.path.join(cache_dir(), "precompiled_headers")
    codecache._HEADER_LOCK_DIR = os.path.join(codecache._HEADER_DIR, "locks")
    return codecache._HEADER_DIR


def _save_aoti(module, example, out: Path, threads: int, batches: Optional[Sequence[int]] = None) -> Path:
    """torch.export -> AOTInductor package (``out`` with suffix .pt2), weights frozen into the
    compiled graph (Inductor's freezing: constant folding and oneDNN weight prepacking; for a PT2E
    model also the int8 lowering of its quantize/dequantize pairs). Inductor freezes only with
    autograd off (compile_fx checks torch.is_grad_enabled(): with it on, the package ran a PT2E
    resnet18 as fp32 convolutions over dequantized weights, 9x slower), so it compiles under
    no_grad. Inductor bakes the OpenMP thread count in at compile time, so it compiles with the
    cell's device.threads.

    ``batches`` None: one package with a dynamic batch (1..AOTI_MAX_BATCH). Otherwise one package per
    batch size, each exported at that fixed batch (``batch_path``), listed in ``PATH.batches.json``
    for the runner: with a symbolic batch Inductor prepacks oneDNN weights without the input's shape,
    and the convolutions then run a generic path (torchvision mobilenet_v2 PT2E int8, b1, 1 thread,
    AVX-512 VNNI: 12.5 ms dynamic against 4.5 ms at a fixed batch; resnet18 about equal)."""
    import json

    import torch

    path = out.with_suffix(".pt2")
    keep_precompiled_headers()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if batches is None:
                two = torch.cat([example, example])  # batch 1 would specialise the dimension to 1
                batch = torch.export.Dim("batch", min=1, max=AOTI_MAX_BATCH)
                programs = {None: torch.export.export(module, (two,), dynamic_shapes=({0: batch},))}
            else:
                programs = {b: torch.export.export(module, (_repeat(example, b),)) for b in batches}
            for b, program in programs.items():
                with torch.no_grad():
                    torch._inductor.aoti_compile_and_package(program, package_path=str(batch_path(path, b or 1)),
                                                             inductor_configs=AOTI_CONFIGS)
    finally:
        torch.set_num_threads(before)
    manifest = Path(str(path) + ".batches.json")
    if batches is not None:
        manifest.write_text(json.dumps({str(b): batch_path(path, b).name for b in batches}))
    elif manifest.exists():
        manifest.unlink()
    return path


def _repeat(example, b: int):
    """``example`` (batch 1 or more) repeated to exactly ``b`` samples."""
    import torch

    reps = -(-b // len(example))
    return torch.cat([example] * reps)[:b].contiguous()


def _aoti_artifact(module, example, out: Path, ctx: BuildContext, info: Dict[str, str]) -> Artifact:
    """A PT2E / torchao module compiled into an AOTInductor package (one-input models). The compile
    happens here, in the build: its seconds are the metric aoti_compile_seconds (part of the
    quantize stage), never part of a latency; the worker loads the compiled package."""
    import time

    from bsb_hydra.backends.pytorch.pt2e import constants_bytes, kernel_summary

    x = _args(example)
    t0 = time.perf_counter()
    batches = aoti_batches(ctx.cfg)
    path = _save_aoti(module, x[0], out, ctx.cfg.device.threads, batches)
    seconds = time.perf_counter() - t0
    _check_package(path, module, ctx)
    kernels = kernel_summary(path)
    if kernels is not None:
        info["compiled_int8_kernels"] = kernels
    info["export"] = "aoti"
    info["aoti_batch"] = _batch_info(batches)
    metrics = {"aoti_compile_seconds": seconds}
    weights = constants_bytes(path)
    if weights is not None:  # the package's size less its ~0.3 MB of code: what the int8 weights take
        metrics["aoti_constants_bytes"] = float(weights)
    return Artifact(path, ctx.input_dtype, info, metrics=metrics)


PACKAGE_CHECK_SAMPLES = 16
PACKAGE_TOLERANCE = 0.1  # of the module's largest |output|: int8 rounding moves outputs by ~1%, a layout bug by ~100%


def _check_package(path: Path, module, ctx: BuildContext, dtype=None) -> None:
    """The compiled package once against the module it was compiled from, on real training samples,
    before any timing: Inductor lowers the quantized ops itself, and a wrong lowering is silent (a
    channels_last conv output flattened into torchao's int8 Linear compiled to outputs off by the
    size of the outputs, while the module itself was right). 16 samples: also past the batch of 15
    that torch's fake conv guards the exported range to (its NNPACK check, batch >= 16), a guard the
    package enforces only under AOTI_RUNTIME_CHECK_INPUTS. One package per batch size: each on the
    samples cut or repeated to its batch."""
    import torch

    from bsb_hydra.feeds import flatten_outputs, materialize

    source = ctx.calibration if ctx.calibration is not None else \
        ctx.data.x_train if getattr(ctx.data, "x_train", None) is not None else ctx.example
    x = canonical_strides(_args(materialize(source[:PACKAGE_CHECK_SAMPLES]))[0])  # as the runner feeds it
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)  # fp16's package takes half inputs
    for b, package_path in _packages(path):
        xb = x if b is None else _repeat(x, b)
        package = torch._inductor.aoti_load_package(str(package_path))
        with torch.no_grad():
            want, got = flatten_outputs(module(xb))[0], flatten_outputs(package(xb))[0]
        scale = float(want.float().abs().max())
        err = float((got.float() - want.float()).abs().max())
        if err > PACKAGE_TOLERANCE * scale + 1e-4:
            raise RuntimeError(f"the AOTInductor package of quant={ctx.cfg.quant.scheme.value}"
                               + ("" if b is None else f" at batch {b}") + " disagrees with the module it was "
                               f"compiled from (max |difference| {err:.4g}, outputs up to {scale:.4g}): an Inductor "
                               "lowering fault; not measured")


def _packages(path: Path) -> list:
    """[(batch, path)] of an AOTInductor artifact: one per batch size from ``PATH.batches.json``, or
    [(None, path)] for a dynamic-batch package."""
    import json

    manifest = Path(str(path) + ".batches.json")
    if not manifest.is_file():
        return [(None, path)]
    return sorted((int(b), path.parent / name) for b, name in json.loads(manifest.read_text()).items())


def _batch_info(batches) -> str:
    return "dynamic (one package, batch 1.." + str(AOTI_MAX_BATCH) + ")" if batches is None else \
        "static (one package per batch size: " + ", ".join(map(str, batches)) + ")"


def _channels_last(module, example):
    """``module`` with its weights in channels_last and the NCHW input reordered as its first step
    (inside the artifact: the reorder is timed, and the artifact takes the same input as every
    other runtime's); returned unchanged for inputs that are not 4-D images or models without
    2-D convolutions."""
    import torch
    from torch import nn

    if getattr(example, "ndim", 0) != 4 or not any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return module, "contiguous"

    class ChannelsLast(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner.to(memory_format=torch.channels_last)

        def forward(self, x):
            return self.inner(x.contiguous(memory_format=torch.channels_last))

    return ChannelsLast(module).eval(), "channels_last"


def _save_float(module, example, out: Path, ctx: BuildContext, allow_aoti: bool = True) -> Artifact:
    """A float-compute artifact (fp32, fp16, dynamic): channels_last where backend.channels_last
    applies, then TorchScript or (backend.export=aoti) an AOTInductor package."""
    import torch

    b = ctx.cfg.backend
    fmt = "contiguous"
    aoti = b.export == "aoti" and allow_aoti
    one_channel = getattr(example, "ndim", 0) == 4 and example.shape[1] == 1
    if b.channels_last and not (aoti and one_channel):
        module, fmt = _channels_last(module, example)
    # AOTInductor and a one-channel image: no channels_last wrapper. With a dynamic batch Inductor takes
    # the (N, 1, H, W) tensor the wrapper makes as NCHW and expects an NCHW conv output, while the
    # frozen (prepacked) oneDNN conv writes NHWC: the cnn on fashion_mnist compiled to outputs off by
    # their own size (torch 2.14.1); _check_package catches such a package before any timing.
    info = {"memory_format": fmt, "export": b.export if allow_aoti else "torchscript"}
    x = _args(example)
    if aoti:
        if len(x) != 1:
            raise Unsupported("backend.export=aoti builds a one-input package here; this model takes "
                              f"{len(x)} inputs (use backend.export=torchscript)")
        batches = aoti_batches(ctx.cfg)
        path = _save_aoti(module, x[0], out, ctx.cfg.device.threads, batches)
        _check_package(path, module, ctx, x[0].dtype)
        info["aoti_batch"] = _batch_info(batches)
        return Artifact(path, ctx.input_dtype, info)
    _save_script(module, x, out)
    _check_trace(out, x, ctx)
    return Artifact(out, ctx.input_dtype, info)


TRACE_CHECKS = 8  # test samples the traced file runs on before it is timed


def _check_trace(path: Path, example: tuple, ctx: BuildContext) -> None:
    """The traced file once more on other test samples: tracing records the control flow and sizes of
    the one input it saw, and a model whose code depends on the data (a detector's score threshold and
    NMS) then fails on the next input, inside the timing. Unsupported here, before any timing."""
    import torch

    x_test = getattr(ctx.data, "x_test", None)
    if x_test is None or len(x_test) < 2:
        return
    from bsb_hydra.feeds import materialize

    try:
        traced = torch.jit.load(str(path), map_location="cpu")
        for i in range(1, min(len(x_test), TRACE_CHECKS + 1)):  # one at a time: as the trace was made
            other = tuple(o.to(e.dtype) for o, e in zip(_args(materialize(x_test[i:i + 1])), example))
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced(*other)
    except Exception as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        raise Unsupported(f"quant={ctx.cfg.quant.scheme.value} on pytorch: the TorchScript trace of model="
                          f"{ctx.cfg.model.name} fails on another input ({type(e).__name__}: "
                          f"{(lines[-1] if lines else '')[:200]}): tracing records the control flow and sizes of the "
                          "input it saw, and this model's depend on the data (a detector's NMS); run it on "
                          "onnxruntime") from None


def _compiled(model) -> bool:
    """A TorchScript module or an ExportedProgram's graph: compiled code, not Python modules."""
    import torch

    return isinstance(model, torch.jit.ScriptModule) or type(model).__name__ == "GraphModule" and \
        not any(type(m).__module__.startswith("torch.nn.modules") for m in model.modules())


def _bn_folded(model):
    """A copy with every conv+batch-norm pair folded into one conv (inference form), so fp32, fp16
    and dynamic artifacts start from the same graph that FX static quantization fuses itself.
    Models without batch-norm (the text models; BertModel is not FX-traceable) are copied as they are."""
    from torch import nn
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return copy.deepcopy(model).eval()
    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception:  # torch.fx cannot trace it (a detector's post-processing): TorchScript's freeze folds bn
        return copy.deepcopy(model).eval()


def _clip_bounds(gm, node):
    """(low, high) when ``node`` clips its input (ReLU6 / Hardtanh module, F.relu6 / F.hardtanh), else None."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.ReLU6):
            return 0.0, 6.0
        if isinstance(mod, nn.Hardtanh):
            return float(mod.min_val), float(mod.max_val)
    if node.op == "call_function" and node.target in (F.relu6, torch.ops.aten.relu6.default):
        return 0.0, 6.0
    if node.op == "call_function" and node.target is F.hardtanh:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return float(lo), float(hi)
    return None


def _fold_clip_ranges(prepared) -> list:
    """After calibration, before convert_fx: the observer of a tensor that only a ReLU6 (or another
    hardtanh clip) reads gets the clip's bounds. Its producer (a conv's int8 output) is then
    quantized over [0, 6] instead of over the unclipped range, whose negative half and tail the clip
    throws away anyway: saturating at [0, 6] is what ReLU6 computes, at 2x or more finer steps. ORT's
    QDQ quantizer and TFLite's converter fold the clip into the conv's output range the same way.
    torch.ao's x86 config does not (ReLU6 shares its input's observer, which saw the conv's raw
    output). Returns the module names of the clips folded (see _drop_folded_clips)."""
    from torch.ao.quantization.observer import ObserverBase
    from torch.fx import Node

    folded = []
    for node in prepared.graph.nodes:
        bounds = _clip_bounds(prepared, node)
        src = node.args[0] if bounds is not None and node.args else None
        if not (isinstance(src, Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        obs = prepared.get_submodule(src.target)
        if not isinstance(obs, ObserverBase) or getattr(obs, "min_val", None) is None or obs.min_val.numel() != 1:
            continue
        lo, hi = bounds
        obs.min_val.clamp_(lo, hi)
        obs.max_val.clamp_(lo, hi)
        folded.append(node.target if node.op == "call_module" and lo <= 0.0 <= hi else None)
    return folded


def _drop_folded_clips(quantized, names) -> int:
    """After convert_fx: a folded clip module is the identity on its int8 input (the input's range,
    [0, max] with max <= 6 for ReLU6, lies inside the clip; a range always holds 0, hence lo <= 0 <= hi),
    so it is taken out of the graph. It ran as aten::hardtanh_ on the int8 tensor: 14% of
    torchvision mobilenet_v2's int8 call (AMX Xeon, 2 threads, the profiler). Returns how many."""
    names = {n for n in names if n}
    dropped = 0
    for node in list(quantized.graph.nodes):
        if node.op == "call_module" and node.target in names and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            quantized.graph.erase_node(node)
            dropped += 1
    if dropped:
        quantized.graph.lint()
        quantized.recompile()
    return dropped


def _layer_counts(module) -> Dict[str, str]:
    counts = Counter(type(m).__module__.split(".")[-2] + "." + type(m).__name__
                     for m in module.modules() if not list(m.children()))
    return {"layers": ",".join(f"{k}:{v}" for k, v in sorted(counts.items()))}


def _static_linears_eager(model, qconfig, calibrate):
    """Eager-mode static int8 for models FX cannot trace (transformers' BertModel): every nn.Linear
    is wrapped in QuantStub -> int8 Linear -> DeQuantStub (torch.ao's QuantWrapper), its input range
    calibrated on the training samples, and embedding tables get int8 weights; LayerNorm, softmax,
    GELU and the attention MatMuls stay fp32."""
    from torch import nn
    from torch.ao.quantization import QuantWrapper, convert, float_qparams_weight_only_qconfig, prepare

    m = copy.deepcopy(model).eval()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                wrapped = QuantWrapper(child)
                wrapped.qconfig = qconfig
                setattr(parent, name, wrapped)
            elif isinstance(child, nn.Embedding):  # int8 table, per-row scales (a lookup has no activations)
                child.qconfig = float_qparams_weight_only_qconfig
    prepare(m, inplace=True)
    calibrate(m)
    convert(m, inplace=True)
    return m, ("eager mode: each Linear static int8 (quantize -> int8 Linear -> dequantize, input ranges "
               "calibrated), embedding tables int8 (per-row); LayerNorm, softmax, GELU and the attention "
               "MatMuls stay fp32")


# The schemes backend.flow chooses the build of (pt2e: bsb_hydra/backends/pytorch/pt2e.py; fx: torch.ao).
PT2E_SCHEMES = ("static", "qat", "dynamic", "auto")

_AUTO_EAGER = ("quant=auto keeps chosen modules float through FX graph mode's per-module qconfig; this model's "
               "static int8 is built in eager mode here (FX cannot trace it), so there is no per-layer choice yet")


class PytorchBackend(Backend):
    name = "pytorch"
    suffix = ".pt"
    no_fp16_fallback_reason = ("torch.ao's x86 and qnnpack engines have no fp16 convolution to keep a layer in "
                               "(fp16 exists there only as a dynamic Linear); sensitive layers stay fp32")
    family_unsupported = {
        "transformer": {
            "qat": "torch.ao FX cannot trace transformers' BertModel (data-dependent mask code), so FX QAT "
                   "does not apply (backend.flow=fx), and PT2E QAT of it is not attempted here; no transformer "
                   "QAT here",
            "auto": _AUTO_EAGER,
        },
        "recurrent": {"auto": _AUTO_EAGER},
    }

    def unsupported_reason(self, cfg) -> Optional[str]:
        reason = super().unsupported_reason(cfg)
        if reason:
            return reason
        q = cfg.quant
        if q.scheme.value == "int4_weight_only":
            if q.bits != 4:
                return (f"quant.bits={q.bits} on pytorch: torch's CPU low-bit matmul (_weight_int4pack_mm_for_cpu) "
                        "is 4-bit only (valid here: 4; onnxruntime takes 2, 4 and 8)")
            if q.accuracy_level not in (0, 1, 3):
                return (f"quant.accuracy_level={q.accuracy_level} on pytorch: the int4 CPU kernel computes in "
                        "fp32 (0 or 1) or bf16 (3), valid here: 0, 1, 3")
        pt2e = cfg.backend.flow == "pt2e" and q.scheme.value in PT2E_SCHEMES
        if cfg.backend.export == "aoti" and q.scheme.value not in ("fp32", "fp16") and not pt2e:
            return (f"backend.export=aoti with quant={q.scheme.value}: under backend.flow={cfg.backend.flow} the "
                    "AOTInductor package is built for the float schemes only, torch.ao's int8 modules are "
                    "TorchScript-only (use backend.flow=pt2e, whose int8 cells are AOTInductor packages, or "
                    "backend.export=torchscript)")
        if pt2e:
            reason = self._pt2e_reason(cfg)
            if reason:
                return reason
        if q.scheme.value == "dynamic" and q.convolutions:
            what = ("torchao's Int8DynamicActivationInt8WeightConfig quantizes Linear layers only" if pt2e else
                    "torch.ao's quantize_dynamic quantizes Linear, LSTM and Embedding only")
            return (f"quant.convolutions=true on pytorch: {what} (no dynamic conv); valid here: null or false. Int8 "
                    "convolutions on pytorch are quant=static")
        if q.scheme.value in ("static", "auto") and q.method.value in ("entropy", "percentile"):
            return (f"quant.method={q.method.value}: {'torchao (PT2E)' if pt2e else 'torch.ao'} has no "
                    f"{q.method.value} calibration observer; use minmax or histogram (HistogramObserver) on pytorch, "
                    "or entropy/percentile on onnxruntime")
        kind = getattr(cfg.model, "file_kind", lambda: None)()
        if kind and q.scheme.value in ("static", "qat", "auto", "fake_quant"):
            what = "a TorchScript file" if kind == "torchscript" else "an ExportedProgram file"
            how = ("torch.export (strict) captures a Python nn.Module" if pt2e else
                   "torch.ao's FX graph mode traces a Python nn.Module")
            return (f"quant={q.scheme.value} on pytorch: {how} to fuse and insert observers, and model.checkpoint is "
                    f"{what} (compiled code, no modules to trace); run it on onnxruntime (from the file's ONNX "
                    "export), or give the module's code as model.target with a state_dict")
        return None

    def _pt2e_reason(self, cfg) -> Optional[str]:
        """Cells backend.flow=pt2e cannot build (the default flow's counterparts of torch.ao's eager paths)."""
        scheme, family = cfg.quant.scheme.value, cfg.model.family
        if family == "recurrent" and scheme in ("static", "qat", "dynamic"):
            what = {"dynamic": "torch.ao's quantize_dynamic int8 LSTM (torchao's dynamic config quantizes Linear only: "
                               "the LSTM, most of this model, would stay fp32)",
                    "static": "torch.ao's eager quantizable LSTM (PT2E's Inductor quantizers have no LSTM pattern)",
                    "qat": "torch.ao's eager quantizable LSTM with QAT (PT2E's Inductor quantizers have no LSTM "
                           "pattern)"}[scheme]
            return f"model={cfg.model.name}, quant={scheme} on pytorch needs backend.flow=fx: it is built by {what}"
        return None

    def task_reason(self, cfg, task) -> Optional[str]:
        specs = cfg.model.input_specs()
        if specs and len(specs) > 1 and cfg.quant.scheme.value in ("qat", "fake_quant"):
            return f"quant={cfg.quant.scheme.value} on pytorch fine-tunes one-input models here; this one takes {len(specs)}"
        if specs and len(specs) > 1 and cfg.backend.flow == "pt2e" and cfg.quant.scheme.value in PT2E_SCHEMES:
            return (f"quant={cfg.quant.scheme.value} on pytorch (backend.flow=pt2e) builds a one-input AOTInductor "
                    f"package here; this model takes {len(specs)} inputs (use backend.flow=fx)")
        return None

    def runner_settings(self, cfg, engine: str) -> Dict[str, Any]:
        return {"engine": engine}

    peak_kernels = peak.KERNELS
    peak_artifact_kernels = peak.ARTIFACT_KERNELS

    def peak_artifacts(self, out: Path, size: int, features: int, threads: int = 1) -> Dict[str, Path]:
        return peak.peak_artifacts(out, size, features, threads)

    def peak_settings(self, arch: str) -> Dict[str, Any]:
        from bsb_hydra.sysinfo import torch_engine

        return {"engine": torch_engine("auto", arch)}

    # the quantized schemes' keys: fp32 (and fp16) are built the same under both flows
    fp32_independent = ("fold_relu6", "flow", "aoti_batch")

    def fp32_cache_parts(self, cfg) -> Dict[str, Any]:
        parts = super().fp32_cache_parts(cfg)
        if cfg.backend.export == "aoti":  # Inductor compiles for the thread count (and the batch sizes)
            parts["threads"] = cfg.device.threads
            parts["aoti_batches"] = aoti_batches(cfg)
        return parts

    def build_fp32(self, ctx: BuildContext, out: Path) -> Artifact:
        return _save_float(_bn_folded(ctx.model), ctx.example, out, ctx)

    def build_fp16(self, ctx: BuildContext, out: Path) -> Artifact:
        import torch

        half = _bn_folded(ctx.model).half()
        args = _args(ctx.example)
        floating = args[0].is_floating_point()  # token ids stay int64
        art = _save_float(half, tuple(a.half() if a.is_floating_point() else a for a in args), out, ctx)
        art.input_dtype = "float16" if floating else ctx.input_dtype
        art.info["note"] = "fp16 weights and compute on the CPU"
        return art

    def build_dynamic(self, ctx: BuildContext, out: Path) -> Artifact:
        if ctx.cfg.backend.flow == "pt2e":
            return self._dynamic_pt2e(ctx, out)
        import torch
        from torch import nn
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        torch.backends.quantized.engine = ctx.engine
        from torch.ao.quantization import float_qparams_weight_only_qconfig

        qconfig = per_channel_dynamic_qconfig if ctx.cfg.quant.granularity.value == "per_channel" \
            else default_dynamic_qconfig
        # Linear (per-channel or per-tensor) and LSTM (per-tensor: torch's dynamic LSTM) get int8
        # weights with activations quantized per call; embeddings get int8 weights (per-row scales).
        spec = {nn.Linear: qconfig, nn.LSTM: default_dynamic_qconfig, nn.Embedding: float_qparams_weight_only_qconfig}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = quantize_dynamic(_bn_folded(ctx.model), spec, dtype=torch.qint8)
        quantized = [type(m).__name__ for m in q.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]
        if not quantized:  # nothing swapped: the artifact would be the fp32 model at 1.00x, called int8
            raise Unsupported(f"quant=dynamic on pytorch quantized nothing: model={ctx.cfg.model.name} has no "
                              "nn.Linear, nn.LSTM or nn.Embedding module torch.ao's quantize_dynamic can swap"
                              + (" (a TorchScript or exported file holds compiled code, not modules: run dynamic on "
                                 "onnxruntime)" if _compiled(ctx.model) else ""))
        art = _save_float(q, ctx.example, out, ctx, allow_aoti=False)
        art.info.update(_layer_counts(q))
        art.info["note"] = "dynamic int8 covers Linear, LSTM and Embedding layers; convolutions stay fp32"
        return art

    def _dynamic_pt2e(self, ctx: BuildContext, out: Path) -> Artifact:
        """torchao's int8 dynamic-activation config on every nn.Linear of the bn-folded model, compiled
        into an AOTInductor package."""
        from bsb_hydra.backends.pytorch.pt2e import dynamic_torchao

        if len(_args(ctx.example)) != 1:  # task_reason said so before the build
            raise Unsupported("quant=dynamic with backend.flow=pt2e builds one-input packages here")
        # No channels_last wrapper: Inductor picks the conv layouts itself (layout optimisation), and a
        # channels_last conv output flattened into the int8 Linear compiled wrong (outputs off by
        # their own size; torch 2.14.1, torchao 0.18.0), see _check_package.
        q, n = dynamic_torchao(_bn_folded(ctx.model), ctx.cfg.quant.granularity.value)
        if not n:
            raise Unsupported(f"quant=dynamic on pytorch quantized nothing: model={ctx.cfg.model.name} has no "
                              "nn.Linear for torchao's int8 dynamic config (convolutions are quant=static)"
                              + (" (a TorchScript or exported file holds compiled code, not modules: run dynamic on "
                                 "onnxruntime)" if _compiled(ctx.model) else ""))
        info = {"flow": "pt2e", "memory_format": "inductor", "int8_linears": str(n),
                "weight_granularity": ctx.cfg.quant.granularity.value,
                "note": ("torchao Int8DynamicActivationInt8WeightConfig: Linear weights int8 (per output channel or "
                         "per tensor), inputs quantized per call (per tensor, symmetric) -> aten._int_mm; "
                         "convolutions, LSTMs and embeddings stay fp32")}
        return _aoti_artifact(q, ctx.example, out, ctx, info)

    def _static_qconfig(self, ctx: BuildContext):
        import torch
        from torch.ao.quantization import QConfig
        from torch.ao.quantization.observer import (HistogramObserver, MinMaxObserver,
                                                    PerChannelMinMaxObserver)

        from bsb_hydra.qat import reduce_range_default

        q = ctx.cfg.quant
        # fbgemm/x86 without VNNI can saturate 16-bit accumulators: keep 7-bit activations there.
        reduce_range = reduce_range_default(q, ctx.engine in ("x86", "fbgemm"), ctx.isa)
        act_observer = HistogramObserver if q.method.value == "histogram" else MinMaxObserver
        activation = act_observer.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                            reduce_range=reduce_range)
        if q.granularity.value == "per_channel":
            weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        else:
            weight = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        return QConfig(activation=activation, weight=weight), reduce_range

    def build_static(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._static(ctx, out)

    def _static(self, ctx: BuildContext, out: Path, float_layers=()) -> Artifact:
        """Static int8; ``float_layers`` (module names) stay float (quant=auto): unannotated by the PT2E
        quantizer, or qconfig None in FX."""
        if ctx.cfg.backend.flow == "pt2e" and ctx.cfg.model.family != "recurrent":
            return self._static_pt2e(ctx, out, float_layers)
        import torch
        from torch.ao.quantization import QConfigMapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = ctx.engine
        qconfig, reduce_range = self._static_qconfig(ctx)
        example = _args(ctx.example)
        calibrate = lambda m: [m(*_args(ctx.calibration[i:i + CALIBRATION_BATCH]))  # noqa: E731
                               for i in range(0, len(ctx.calibration), CALIBRATION_BATCH)]
        folded = None
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            if ctx.cfg.model.family == "transformer":
                quantized, note = _static_linears_eager(ctx.model, qconfig, calibrate)
            elif ctx.cfg.model.family == "recurrent":
                from bsb_hydra.eager_lstm import NOTE, lstm_static

                quantized, note = lstm_static(ctx.model, qconfig, calibrate), NOTE
            else:
                mapping = QConfigMapping().set_global(qconfig)
                for name in float_layers:
                    mapping.set_module_name(name, None)
                try:
                    prepared = prepare_fx(copy.deepcopy(ctx.model).eval(), mapping, example)
                except Exception as e:  # symbolic tracing of control flow (a detector's post-processing)
                    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                    raise Unsupported(f"quant={ctx.cfg.quant.scheme.value} on pytorch: torch.ao's FX graph mode cannot "
                                      f"trace model={ctx.cfg.model.name} ({type(e).__name__}: {first}); run static int8 "
                                      "on onnxruntime (from its ONNX export) or tflite") from None
                calibrate(prepared)
                folded = _fold_clip_ranges(prepared) if ctx.cfg.backend.fold_relu6 else None
                quantized, note = convert_fx(prepared), "FX graph mode: conv+bn(+relu) fused, int8 between layers"
                dropped = _drop_folded_clips(quantized, folded) if folded else 0
        _save_script(quantized, example, out)
        info = _layer_counts(quantized)
        info["note"] = note
        info["reduce_range"] = str(reduce_range).lower()
        info["engine"] = ctx.engine
        if ctx.cfg.model.family not in ("transformer", "recurrent"):  # FX graph mode
            info["relu6_folded"] = "off" if folded is None else f"{len(folded)} ({dropped} taken out as identities)"
        if float_layers:
            info["float_modules"] = ",".join(float_layers)
        return Artifact(out, ctx.input_dtype, info)

    def _static_pt2e(self, ctx: BuildContext, out: Path, float_layers=()) -> Artifact:
        from bsb_hydra.backends.pytorch.pt2e import static_pt2e
        from bsb_hydra.qat import reduce_range_default

        if len(_args(ctx.example)) != 1:  # task_reason said so before the build
            raise Unsupported("quant=static with backend.flow=pt2e builds one-input packages here")
        q = ctx.cfg.quant
        # x86 without VNNI can saturate its 16-bit accumulators: 7-bit activations there (as in FX)
        reduce_range = reduce_range_default(q, ctx.arch == "x86_64", ctx.isa)
        res = static_pt2e(ctx.model, _args(ctx.example)[0], ctx.calibration, q, ctx.arch, reduce_range,
                          ctx.cfg.model.name, float_layers, args=_args)
        if float_layers:
            res.info["float_modules"] = ",".join(float_layers)
        return _aoti_artifact(res.module, ctx.example, out, ctx, res.info)

    # quant=auto (bsb_hydra/mixed.py): every Conv and Linear module can stay float (PT2E: left
    # unannotated by the quantizer; FX: qconfig None; the eager transformer and LSTM paths of
    # backend.flow=fx have no per-module choice here).
    def mixed_layers(self, ctx: BuildContext):
        from torch import nn

        return {name: (m.weight.detach().numpy(), 0) for name, m in ctx.model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))}

    def build_mixed(self, ctx: BuildContext, out: Path, float_layers) -> Artifact:
        return self._static(ctx, out, list(float_layers))

    def mixed_logits(self, ctx: BuildContext, float_layers, x, batch: int):
        """backend.flow=pt2e: the sensitivity analysis scores each variant on its converted PT2E module, run
        eagerly here (quantize/dequantize pairs around float ops: the rounding the compiled package applies,
        in fp32 arithmetic; each package is checked against its module, _check_package), instead of
        compiling an AOTInductor package per variant: 2 x layers + 1 compiles of about 6-15 s each for a toy,
        a minute each at 224 px (resnet18 has 21 layers). The search's trials, and the chosen artifact, are
        compiled packages run by the Runner. FX builds are TorchScript files, quick to build: None."""
        import numpy as np
        import torch

        from bsb_hydra.backends.pytorch.pt2e import static_pt2e
        from bsb_hydra.feeds import flatten_outputs
        from bsb_hydra.qat import reduce_range_default

        if ctx.cfg.backend.flow != "pt2e" or len(_args(ctx.example)) != 1:
            return None
        q = ctx.cfg.quant
        reduce_range = reduce_range_default(q, ctx.arch == "x86_64", ctx.isa)
        module = static_pt2e(ctx.model, _args(ctx.example)[0], ctx.calibration, q, ctx.arch, reduce_range,
                             ctx.cfg.model.name, list(float_layers), args=_args).module
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = canonical_strides(_args(x[i:i + batch])[0])  # as the runner feeds it
                out.append(flatten_outputs(module(xb))[0].float().numpy())
        return np.concatenate(out).astype(np.float32)

    def build_qat(self, ctx: BuildContext, out: Path) -> Artifact:
        import torch
        from torch.ao.quantization.quantize_fx import convert_fx

        from bsb_hydra.qat import fx_qat

        if ctx.cfg.backend.flow == "pt2e":
            return self._qat_pt2e(ctx, out)
        if ctx.cfg.model.family == "recurrent":
            from bsb_hydra.eager_lstm import NOTE, lstm_qat

            quantized, qat = lstm_qat(ctx.model, ctx.data, ctx.cfg.quant, ctx.cfg.seed, ctx.engine, ctx.isa)
            method = "torch.ao eager QAT (quantizable LSTM, QAT Linear) -> convert: " + NOTE
        else:
            qat = fx_qat(ctx.model, ctx.data, ctx.cfg.quant, ctx.cfg.seed, ctx.engine, ctx.isa)
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                quantized = convert_fx(copy.deepcopy(qat.model))
            method = "torch.ao FX prepare_qat_fx -> convert_fx"
        _save_script(quantized, ctx.example, out)
        info = _layer_counts(quantized)
        info.update({"reduce_range": str(qat.reduce_range).lower(), "engine": ctx.engine,
                     "qat_method": method,
                     "qat_seconds": f"{qat.seconds:.1f}"})
        return Artifact(out, ctx.input_dtype, info, curves={"qat_loss": qat.losses})


    def _qat_pt2e(self, ctx: BuildContext, out: Path) -> Artifact:
        from bsb_hydra.backends.pytorch.pt2e import qat_pt2e
        from bsb_hydra.qat import reduce_range_default

        q = ctx.cfg.quant
        reduce_range = reduce_range_default(q, ctx.arch == "x86_64", ctx.isa)
        res = qat_pt2e(ctx.model, ctx.data, q, ctx.cfg.seed, ctx.arch, reduce_range, ctx.cfg.model.name)
        info = {**res.info, "reduce_range": str(res.reduce_range).lower(),
                "qat_method": ("PT2E: torch.export (strict, train mode) -> prepare_qat_pt2e -> fine-tune -> "
                               "convert_pt2e -> AOTInductor"),
                "qat_seconds": f"{res.seconds:.1f}"}
        art = _aoti_artifact(res.module, ctx.example, out, ctx, info)
        art.curves = {"qat_loss": res.losses}
        return art

    def build_int4_weight_only(self, ctx: BuildContext, out: Path) -> Artifact:
        import torch

        from bsb_hydra.backends.pytorch.int4_torch import int4_linears

        q = ctx.cfg.quant
        with torch.inference_mode():
            model, facts = int4_linears(_bn_folded(ctx.model), q.block_size, q.symmetric, q.accuracy_level)
        if facts["int4_linears"] == "0":
            raise Unsupported(f"quant=int4_weight_only on pytorch: model={ctx.cfg.model.name} has no nn.Linear "
                              "for the 4-bit kernel")
        _save_script(model, ctx.example, out)
        info = {**_layer_counts(model), **facts, "weight_bits": "4", "block_size": str(q.block_size),
                "symmetric": str(q.symmetric).lower(),
                "kernel": "aten._weight_int4pack_mm_for_cpu (torch's CPU int4 matmul, tinygemm layout)",
                "note": "Linear weights in 4 bits; convolutions, LSTMs and embeddings stay fp32"}
        return Artifact(out, ctx.input_dtype, info)

    def build_fake_quant(self, ctx: BuildContext, out: Path) -> Artifact:
        """SIMULATED N-bit model (bsb_hydra/fake_quant.py): float TorchScript with rounded weights
        (and activation fake quantizers), evaluated like every cell but never timed."""
        import torch

        from bsb_hydra.fake_quant import simulate

        q = ctx.cfg.quant
        sim = simulate(_bn_folded(ctx.model), q.bits, q.granularity.value == "per_channel", q.activations,
                       ctx.calibration, q if q.qat else None, ctx.data, ctx.cfg.seed)
        _save_script(sim.model, ctx.example, out)
        info = {"simulated": "true", "weight_bits": str(q.bits), "fake_quant_layers": str(len(sim.layers)),
                "activation_quantizers": str(sim.activation_quantizers),
                "note": (f"SIMULATED: Conv/Linear/Embedding weights rounded to {q.bits} bits (symmetric, "
                         f"{q.granularity.value}), " + (f"their inputs to {q.bits} bits (affine, per tensor), "
                                                         if q.activations else "activations float, ")
                         + "evaluated in float; LSTM weights, biases and norms stay fp32")}
        if q.qat:
            info["qat_seconds"] = f"{sim.qat_seconds:.1f}"
        return Artifact(out, ctx.input_dtype, info, curves={"qat_loss": sim.losses} if q.qat else {},
                        theoretical_size=(sim.packed_bytes, sim.fp32_bytes))
