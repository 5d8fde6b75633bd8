"""backend=onnxruntime's builds (the sweep process's side): the ONNX Runtime CPU backend. The fp32 model is exported once to ONNX; every scheme is produced
from that graph with ONNX Runtime's own tools:

fp32   the exported graph (ORT fuses conv+bn when it builds the session);
fp16   onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True);
dynamic onnxruntime.quantization.quantize_dynamic (int8 weights; on convolutions this yields
       ConvInteger, which is slow on x86: reported as measured); a transformer's graph first goes
       through ORT's transformer optimizer (Attention, EmbedLayerNormalization, SkipLayerNormalization,
       BiasGelu fused), so it quantizes to QAttention and QEmbedLayerNormalization, ORT's own BERT recipe;
static quantize_static in QDQ format, int8 weights (7-bit range on x86 without VNNI) and uint8
       activations on x86 (int8 on ARM), a CalibrationDataReader over real training samples, MinMax /
       Entropy / Percentile calibration."""
from __future__ import annotations

import logging
import shutil
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from bsb_hydra.backends.base import Artifact, Backend, BuildContext, Unsupported
from bsb_hydra.backends.onnxruntime import peak

INPUT_NAME = "input"
CALIBRATION_BATCH = 32


def export_onnx(model, example, out: Path, opset: int) -> None:
    """Export with a dynamic batch axis; weights inside the .onnx file so its size is the artifact's.
    ``example``: one array, or a Feeds of several named inputs (exported under their names). One
    output is named logits (as every earlier export), several output_0, output_1, ... in order."""
    import torch

    from bsb_hydra.feeds import Feeds, torch_outputs, to_torch_args

    names = list(example.names) if isinstance(example, Feeds) else [INPUT_NAME]
    n_out = len(torch_outputs(model.eval(), example))
    outputs = ["logits"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), to_torch_args(example), str(out), input_names=names, output_names=outputs,
            opset_version=opset, dynamo=False, dynamic_axes={n: {0: "batch"} for n in names + outputs},
        )


def fixed_dims_copy(src: Path, example, out: Path) -> None:
    """A user's ONNX model with each input's batch dimension dynamic ("batch") and the others fixed to
    the example's (one array, or a Feeds by input name); inferred intermediate shapes are dropped
    (ORT infers them again). Weights are written inside the file, so its size is the artifact's."""
    import onnx

    from bsb_hydra.feeds import Feeds

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name for i in g.initializer}
    for k, inp in enumerate(i for i in g.input if i.name not in inits):
        a = example.arrays.get(inp.name) if isinstance(example, Feeds) else (example if k == 0 else None)
        if a is None:
            continue
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            d.Clear()
            if i == 0:
                d.dim_param = "batch"
            else:
                d.dim_value = int(a.shape[i])
    for o in g.output:
        if o.type.tensor_type.shape.dim:
            first = o.type.tensor_type.shape.dim[0]
            first.Clear()
            first.dim_param = "batch"
    del g.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def op_counts(path: Path) -> Dict[str, str]:
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    return {"ops": ",".join(f"{k}:{v}" for k, v in sorted(ops.items()))}


@contextmanager
def _quiet_root_logger(disable: int = 0):
    """ORT's quantizer logs a line per tensor at INFO on the root logger, which Hydra shows: hundreds
    of lines for a transformer. Warnings still pass. ``disable``: records up to this level are
    dropped from every logger (the transformer optimizer logs on loggers of its own)."""
    root = logging.getLogger()
    level, was = root.level, logging.root.manager.disable
    root.setLevel(max(level, logging.WARNING))
    if disable:
        logging.disable(disable)
    try:
        yield
    finally:
        root.setLevel(level)
        logging.disable(was)


def input_names(path: Path) -> list:
    """The graph's fed inputs, in order (a user's ONNX file names its own)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    return [i.name for i in g.input if i.name not in inits]


def input_name(path: Path) -> str:
    """The graph's first fed input."""
    return input_names(path)[0]


# Input elements per calibration batch: 32 samples of small inputs (28x28 images, 128 token ids), one
# image at a time from 224x224x3 up. ORT's calibration session grows its arena with the batch's
# activations: lraspp_mobilenet_v3_large at 224 peaked at 2.84 GB in the sweep process with batches of
# 13 images (2 M elements), 1.79 GB with 4, 1.46 GB with 1 (the process holds 1.2 GB before; the
# ranges are the same min and max whatever the batch: measured 2026-12-06, issue 30).
CALIBRATION_ELEMENTS = 2 ** 18


def calibration_batch(samples, largest: int = CALIBRATION_BATCH) -> int:
    """Samples per calibration batch: at most ``largest`` (benchmark.eval_batch_size: a model that
    takes batch 1 only, such as a detector whose post-processing loops over the images, says so there)."""
    from bsb_hydra.feeds import specs_of

    per_sample = sum(int(np.prod(s.shape)) for s in specs_of(samples)) or 1
    return max(1, min(CALIBRATION_BATCH, largest, CALIBRATION_ELEMENTS // per_sample))


class TrainingSamplesReader:
    """CalibrationDataReader over real training samples, in batches, fed to the inputs ``names``
    (one array to the first, or a Feeds to each input by its name). ``len`` and ``set_range`` (in
    batches) are what ORT's strided calibration (extra option CalibStridedMinMax) reads: it computes
    and merges the ranges stride by stride instead of holding every batch's intermediate outputs
    (a 224-px segmentation model: 5.2 GB for 256 samples at once)."""

    def __init__(self, samples, names=(INPUT_NAME,), largest: int = CALIBRATION_BATCH) -> None:
        from bsb_hydra.feeds import Feeds

        self.names = [names] if isinstance(names, str) else list(names)
        b = calibration_batch(samples, largest)
        self.all = [samples[i:i + b] for i in range(0, len(samples), b)]
        self.batches = iter(self.all)
        self.feeds = isinstance(samples, Feeds)

    def __len__(self) -> int:
        return len(self.all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.batches = iter(self.all[start_index:end_index])

    def get_next(self):
        b = next(self.batches, None)
        if b is None:
            return None
        if self.feeds:
            return {n: np.ascontiguousarray(b.arrays[n]) for n in self.names}
        return {self.names[0]: np.ascontiguousarray(b)}  # float32 images, int64 ids

    def __iter__(self):  # what ORT's CalibrationDataReader adds (qdq_loss_debug iterates a reader)
        return iter(self.get_next, None)


@contextmanager
def in_folder(folder: Path):
    """Run with ``folder`` as the working directory: ORT's symbolic shape inference writes
    sym_shape_infer_temp.onnx and *.data files into the current folder (and leaves them when it
    fails); they belong in the cell's own folder, not where the sweep was started."""
    import os

    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def pre_process(src: Path, out: Path, info: Dict[str, str], **kw) -> None:
    """onnxruntime's quant_pre_process (shape inference + graph optimisation), in ``out``'s folder.
    Its symbolic shape inference fails on some real graphs (a bare AssertionError on a Concat with
    axis != 0, "Incomplete symbolic shape inference" on PaddleOCR's exports): it is then run again
    without it (skip_symbolic_shape=True, ORT's own switch), and info['preprocess'] names what failed."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with in_folder(out.parent), _quiet_root_logger():  # its symbolic shape inference logs at INFO too
        try:
            quant_pre_process(str(src), str(out), skip_symbolic_shape=False, **kw)
            info.setdefault("preprocess", "quant_pre_process (symbolic shape inference, optimisation)")
            return
        except Exception as e:
            failed = type(e).__name__ + (f": {str(e).strip().splitlines()[0][:200]}" if str(e).strip() else "")
            where = _failing_node(e)
        try:
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True, **kw)
        except Exception as e2:
            raise RuntimeError(f"onnxruntime's quant_pre_process failed on {src.name}: with symbolic shape inference "
                               f"{failed}{where}; without it {type(e2).__name__}: "
                               f"{str(e2).strip().splitlines()[0][:200] if str(e2).strip() else 'no message'}") from None
    info["preprocess"] = (f"quant_pre_process without symbolic shape inference (skip_symbolic_shape=True): with it, "
                          f"{failed}{where}")
    print(f"  NOTE: ORT's symbolic shape inference failed ({failed}{where}); pre-processed without it", flush=True)


def _failing_node(e: BaseException) -> str:
    """The node a symbolic-shape-inference failure was at, from its traceback's frames."""
    tb = e.__traceback__
    node = None
    while tb is not None:
        n = tb.tb_frame.f_locals.get("node")
        if n is not None and hasattr(n, "op_type"):
            node = n
        tb = tb.tb_next
    return f" (at {node.op_type} node {node.name!r})" if node is not None else ""


def opset_of(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)


# Static QDQ on a transformer quantizes only the weight-carrying ops. Kept float, measured on the
# fine-tuned MiniLM (docs/methodology.md): LayerNorm, Softmax, GELU (Erf), the residual Adds, and the
# two activation x activation MatMuls of each attention head (Q.K^T and P.V), whose int8 ranges
# cost the most accuracy. Logged per cell: build.quantized_op_types, build.excluded_nodes, build.float_op_types.
TRANSFORMER_STATIC_OP_TYPES = ["MatMul", "Gemm", "Gather"]


def transformer_static_scope(path: Path) -> Dict[str, Any]:
    import onnx

    g = onnx.load(str(path)).graph
    weights = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    activation_matmuls = [n.name for n in g.node if n.op_type == "MatMul" and not weights & set(n.input)]
    return {"op_types_to_quantize": TRANSFORMER_STATIC_OP_TYPES, "nodes_to_exclude": activation_matmuls}


def has_attention(path: Path) -> bool:
    """Whether a graph (a user's ONNX file) has attention: a Softmax and a MatMul of two activations.
    Its static QDQ then takes the transformer scope: calibrating the additive attention mask
    (about -3.4e38 on padding) gave its Add/Where tensors an infinite scale (probed on a 3-input BERT
    export, onnxruntime 1.31.1)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    ops = {n.op_type for n in g.node}
    return "Softmax" in ops and any(n.op_type == "MatMul" and not weights & set(n.input) for n in g.node)


def float_compute_ops(path: Path) -> str:
    """Compute ops of a QDQ graph that still run in float (no DequantizeLinear feeding them), with
    counts; shape plumbing left out."""
    import onnx

    g = onnx.load(str(path)).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    plumbing = {"QuantizeLinear", "DequantizeLinear", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape",
                "Slice", "Cast", "ConstantOfShape", "Range", "Expand", "Equal", "Not", "And", "Where", "Transpose",
                "Constant", "Flatten"}
    ops = Counter(n.op_type for n in g.node if n.op_type not in plumbing and not dq_out & set(n.input))
    return ",".join(f"{k}:{v}" for k, v in sorted(ops.items()))


def fp16_weights(path: Path, nodes: set) -> list:
    """quant.fallback=fp16 on ORT: the float weights and biases of ``nodes`` (initializers no other
    node reads) stored as fp16, each behind a Cast to fp32; everything else untouched. ORT's CPU
    provider folds the Casts at session creation, so these layers compute in fp32 as before: the
    gain is size. (ORT's convert_float_to_float16 with a node block list was tried first: it turns
    every tensor of the graph to fp16, with Cast pairs around each blocked node, which rounds every
    int8 layer's activations through fp16 too.) Returns the nodes it converted."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    readers = Counter(name for n in g.node for name in n.input)
    graph_inputs = {i.name for i in g.input}
    casts, converted = [], []
    for n in g.node:
        if n.name not in nodes:
            continue
        for name in n.input[1:]:
            t = inits.get(name)
            if t is None or t.data_type != TensorProto.FLOAT or readers[name] != 1 or name in graph_inputs:
                continue
            half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), f"{name}_fp16")
            g.initializer.remove(t)
            g.initializer.append(half)
            casts.append(helper.make_node("Cast", [half.name], [name], name=f"{name}_to_fp32", to=TensorProto.FLOAT))
        converted.append(n.name)
    for c in reversed(casts):  # their inputs are initializers: first in topological order
        g.node.insert(0, c)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return converted


def gemm_to_matmul(model) -> int:
    """Rewrites each Gemm with a constant weight (alpha = beta = 1, transA = 0) as MatMul + Add, in
    place: ORT's block-wise quantizer (MatMulNBitsQuantizer) takes MatMul and Gather nodes only,
    and torch.onnx exports a 2-D Linear as Gemm. Returns how many it rewrote."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    readers = Counter(name for n in g.node for name in n.input)
    nodes, done = [], 0
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or readers[n.input[1]] != 1 or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        w = w.T if attrs.get("transB", 0) else w  # MatMul's B is [in, out]
        g.initializer.remove(inits[n.input[1]])
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), n.input[1]))
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = f"{n.output[0]}_matmul" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [mm_out], name=n.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=f"{n.name}_bias"))
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    return done


def _counts(stats: Dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(stats.items()))


def float_weight_ops(model) -> str:
    """Op counts of the nodes that still read a float weight matrix (a float initializer of 2+ dims)."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    ops = Counter(n.op_type for n in model.graph.node  # low-bit ops read 2-D float scales: not weights
                  if n.op_type not in ("MatMulNBits", "GatherBlockQuantized") and any(x in inits and len(inits[x].dims) >= 2 and inits[x].data_type == TensorProto.FLOAT
                         for x in n.input))
    return ",".join(f"{k}:{v}" for k, v in sorted(ops.items())) or "none"


def weight_elements(model, op_types) -> int:
    """Elements of the constant weights read by nodes of ``op_types``."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    return sum(int(np.prod(numpy_helper.to_array(inits[x]).shape)) for n in model.graph.node if n.op_type in op_types
               for x in n.input if x in inits and len(inits[x].dims) >= 2)


class OnnxruntimeBackend(Backend):
    name = "onnxruntime"
    suffix = ".onnx"
    takes_onnx_file = True
    takes_keras_file = True  # the tf2onnx export of model=keras and model=tflite, measured as model=onnx's
    family_unsupported = {
        "keras_file": {"qat": "QAT fine-tunes with fake quantization in the model's own framework; a Keras model's "
                               "(tensorflow-model-optimization) is not wired for model=keras yet"},
        "tflite_file": {"qat": "QAT fine-tunes a model in its training framework; a .tflite file is an inference graph "
                               "(give the Keras model as model=keras, or the torch module as model=torch)"},
        "onnx_file": {"qat": "QAT fine-tunes a PyTorch model with fake quantization; model=onnx is an ONNX file "
                             "(give the torch module as model=torch for QAT)"},
        "recurrent": {
            "static": "ORT's static QDQ quantizer has no int8 LSTM (only MatMul/Gather around it would be "
                      "quantized); the LSTM's int8 path in ORT is quant=dynamic (DynamicQuantizeLSTM)",
            "qat": "ORT has no int8 LSTM a QDQ graph can carry learned ranges into (its int8 LSTM is "
                   "DynamicQuantizeLSTM); QAT for the LSTM runs on backend=pytorch",
            "auto": "quant=auto starts from static QDQ int8, which ORT cannot apply to an LSTM (see quant=static)",
        },
        "transformer": {
            "qat": "the QAT path is torch.ao FX QAT, which cannot trace transformers' BertModel",
            "auto": "not yet: the per-layer analysis quantizes the model 2N+1 times (N = 36 MatMuls for MiniLM), "
                    "far past a CPU cell's budget; use quant=static (attention MatMuls already kept float)",
        },
    }

    def unsupported_reason(self, cfg) -> Optional[str]:
        reason = super().unsupported_reason(cfg)
        if reason:
            return reason
        q = cfg.quant
        if q.scheme.value in ("static", "auto") and q.method.value == "histogram":
            return ("quant.method=histogram is torch.ao's HistogramObserver; onnxruntime calibrates with "
                    "minmax, entropy or percentile")
        return None

    def runner_settings(self, cfg, engine: str) -> Dict[str, Any]:
        return {"graph_optimization": cfg.backend.graph_optimization}

    peak_kernels = peak.KERNELS
    peak_artifact_kernels = peak.ARTIFACT_KERNELS

    def peak_artifacts(self, out: Path, size: int, features: int, threads: int = 1) -> Dict[str, Path]:
        return peak.peak_artifacts(out, size, features)

    def peak_settings(self, arch: str) -> Dict[str, Any]:
        return {"graph_optimization": "all"}  # backend.graph_optimization's default

    fp32_independent = ("graph_optimization", "transformer_optimizer")  # the session's; dynamic's
    fp32_packages = ("onnx", "onnxscript", "onnxruntime")

    def fp32_cached(self, ctx: BuildContext, art: Artifact) -> None:
        shutil.copyfile(art.path, ctx.workdir / "fp32_export.onnx")  # what the quantized builds start from

    def _fp32(self, ctx: BuildContext) -> Path:
        path = ctx.workdir / "fp32_export.onnx"
        if not path.exists():
            if ctx.source_onnx is not None:  # model=onnx: the user's graph, its per-sample dims fixed
                fixed_dims_copy(ctx.source_onnx, ctx.example, path)
            else:
                export_onnx(ctx.model, ctx.example, path, ctx.cfg.backend.opset)
        return path

    QDQ_OPSET = 13  # per-channel DequantizeLinear (its axis attribute) needs opset 13

    def _preprocessed(self, ctx: BuildContext) -> Path:
        """ORT's recommended pre-quantization step: shape inference + graph optimisation (folds bn),
        falling back to no symbolic shape inference where it fails (pre_process); a graph below
        opset 13 is first converted to 13 (onnx.version_converter): ORT's quantizers write
        per-channel DequantizeLinear nodes (an axis attribute, opset 13) into any graph, and ORT then
        refuses to load an older one ("Unrecognized attribute: axis"). What happened is kept in
        fp32_preprocessed.json (the build's tags)."""
        import json

        path = ctx.workdir / "fp32_preprocessed.onnx"
        if not path.exists():
            info: Dict[str, str] = {}
            src = self._fp32(ctx)
            opset = opset_of(src)
            if 0 < opset < self.QDQ_OPSET:
                import onnx
                from onnx import version_converter

                try:
                    up = version_converter.convert_version(onnx.load(str(src)), self.QDQ_OPSET)
                    src = ctx.workdir / f"fp32_opset{self.QDQ_OPSET}.onnx"
                    onnx.save(up, str(src))
                    info["opset"] = f"{opset} -> {self.QDQ_OPSET} (onnx.version_converter, before quantizing)"
                except Exception as e:
                    info["opset"] = (f"{opset}; converting to {self.QDQ_OPSET} failed ({type(e).__name__}: "
                                     f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})")
            pre_process(src, path, info)
            path.with_suffix(".json").write_text(json.dumps(info))
        return path

    def _pre_info(self, ctx: BuildContext) -> Dict[str, str]:
        import json

        p = ctx.workdir / "fp32_preprocessed.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def _transformer_optimized(self, ctx: BuildContext):
        """The fp32 export through onnxruntime.transformers.optimizer (model_type bert, the encoder's
        head count and width): (path, tags). With Attention fused, quantize_dynamic makes QAttention
        (int8 Q/K/V projection), QEmbedLayerNormalization and MatMulInteger. On MiniLM-L6 at seq 128
        (AMX Xeon, 2 threads) the int8 call at b1 took 8.0-8.3 ms against 9.0-9.4 ms from the unfused
        graph, b8 a tie, same accuracy (docs/methodology.md); the fused fp32 graph was no faster
        than the plain one (16.6 / 120 vs 16.3 / 107 ms), so the fp32 artifact stays the plain export.
        A graph it cannot fuse is quantized unfused, and the tag says why."""
        from onnxruntime.transformers.optimizer import optimize_model

        config = next((m.config for m in ctx.model.modules() if hasattr(getattr(m, "config", None),
                                                                       "num_attention_heads")), None)
        if config is None or getattr(config, "model_type", "") != "bert":
            kind = getattr(config, "model_type", None) or "no transformers config"
            return self._preprocessed(ctx), {"transformer_fusion": f"none ({kind}: the optimizer runs on BERT "
                                                                   "encoders here)"}
        fused, path = ctx.workdir / "fp32_transformer_fused.onnx", ctx.workdir / "fp32_transformer_optimized.onnx"
        with _quiet_root_logger(logging.INFO):  # its fusion loggers report every pattern at INFO
            opt = optimize_model(str(self._fp32(ctx)), model_type="bert", num_heads=int(config.num_attention_heads),
                                 hidden_size=int(config.hidden_size), opt_level=0)
            opt.save_model_to_file(str(fused))
        # symbolic shape inference knows the fused contrib ops: the quantizer learns their output types
        pre_process(fused, path, {}, skip_optimization=True)
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        if not stats.get("Attention"):
            return self._preprocessed(ctx), {"transformer_fusion": "none (the optimizer fused no Attention: "
                                                                   f"{_counts(stats) or 'nothing'})"}
        return path, {"transformer_fusion": _counts(stats)}

    def build_fp32(self, ctx: BuildContext, out: Path) -> Artifact:
        import shutil

        shutil.copyfile(self._fp32(ctx), out)
        return Artifact(out, ctx.input_dtype, op_counts(out))

    def build_fp16(self, ctx: BuildContext, out: Path) -> Artifact:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(self._fp32(ctx))), keep_io_types=True)
        onnx.save(model, str(out))
        info = op_counts(out)
        info["note"] = "fp16 weights; inputs/outputs stay fp32 (Cast at the edges)"
        return Artifact(out, ctx.input_dtype, info)

    def build_dynamic(self, ctx: BuildContext, out: Path) -> Artifact:
        """quantize_dynamic over ORT's integer-op registry (MatMul and Gemm as MatMulInteger, LSTM,
        Attention, Gather), without Conv unless quant.convolutions=true: ORT's dynamic conv is
        DynamicQuantizeLinear + ConvInteger + Cast + Mul per layer, and ConvInteger is an im2col and
        u8 GEMM per image and group in NCHW, without the blocked layout, fused bias or activation of
        its fp32 Conv (and a GEMM of one row per group on depthwise layers)."""
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        conv = bool(ctx.cfg.quant.convolutions)
        ops = sorted(IntegerOpsRegistry) if conv else sorted(set(IntegerOpsRegistry) - {"Conv"})
        fused: Dict[str, str] = {}
        src = self._preprocessed(ctx)
        if ctx.cfg.model.family == "transformer" and ctx.cfg.backend.transformer_optimizer:
            src, fused = self._transformer_optimized(ctx)
        with _quiet_root_logger():
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8,
                             per_channel=ctx.cfg.quant.granularity.value == "per_channel", op_types_to_quantize=ops)
        info = op_counts(out)
        info.update({"convolutions": str(conv).lower(), "quantized_op_types": ",".join(ops), **fused,
                     **self._pre_info(ctx)})
        if not conv:
            info["note"] = ("dynamic int8 covers MatMul/Gemm, LSTM, Attention and Gather; convolutions stay fp32 "
                            "(quant.convolutions=true makes them ConvInteger, slower than fp32 Conv on x86)")
        result = onnx.load(str(out))
        info["float_weight_ops"] = float_weight_ops(result)  # what still reads fp32 weights
        integer = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "QAttention", "DynamicQuantizeMatMul",
                   "QEmbedLayerNormalization", "GatherBlockQuantized"}
        if not integer & {n.op_type for n in result.graph.node} and not any(
                i.data_type in (2, 3) for i in result.graph.initializer):  # no int8 op, no int8 weight
            raise Unsupported(f"quant=dynamic on onnxruntime quantized nothing: the model's weights are all in ops "
                              f"dynamic int8 leaves float here ({info['float_weight_ops']})"
                              + ("; its convolutions stay fp32 unless quant.convolutions=true (ConvInteger, slower "
                                 "than fp32 Conv on x86)" if not conv else ""))
        return Artifact(out, ctx.input_dtype, info)

    def build_static(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._static(ctx, out)

    def _static(self, ctx: BuildContext, out: Path, float_layers=()) -> Artifact:
        """quantize_static to QDQ; ``float_layers`` (node names) stay float (quant=auto). Calibration
        runs once per cell: its ranges are cached (ORT's calibration_cache_path) for every later build."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        q = ctx.cfg.quant
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[q.method.value]
        extra = {"CalibPercentile": q.percentile} if q.method.value == "percentile" else {}
        if q.method.value == "minmax":  # ranges computed batch by batch and merged: the same min and max
            extra["CalibStridedMinMax"] = 1
        # x86 without VNNI: ORT's u8s8 int8 kernels (AVX2 vpmaddubsw) saturate 16-bit sums, which ORT's
        # docs answer with 7-bit weights (reduce_range). Measured on an AVX2-only EPYC: a QDQ cnn scored
        # 91.14% run unfused but 90.00% with the fused kernels; with reduce_range, 91.18% at the same
        # speed. U8S8 is ORT's x86 pairing (S8S8 + reduce_range ran 1.5x slower here); ARM uses S8S8.
        from bsb_hydra.qat import reduce_range_default

        x86 = ctx.arch == "x86_64"
        reduce_range = reduce_range_default(q, x86, ctx.isa)
        activation = QuantType.QUInt8 if x86 else QuantType.QInt8
        src = self._preprocessed(ctx)
        scope: Dict[str, Any] = {}
        attention = ctx.cfg.model.family != "transformer" and has_attention(src)
        if ctx.cfg.model.family == "transformer" or attention:
            scope = transformer_static_scope(src)
        if float_layers:
            scope["nodes_to_exclude"] = [*scope.get("nodes_to_exclude", []), *float_layers]
        cache = ctx.workdir / f"calibration_{q.method.value}_{q.samples}_{q.percentile}.json"
        with _quiet_root_logger():
            quantize_static(
                str(src), str(out), TrainingSamplesReader(ctx.calibration, input_names(src),
                                                          ctx.cfg.benchmark.eval_batch_size),
                quant_format=QuantFormat.QDQ, activation_type=activation, weight_type=QuantType.QInt8,
                per_channel=q.granularity.value == "per_channel", reduce_range=reduce_range, calibrate_method=method,
                extra_options=extra, calibration_cache_path=str(cache), **scope,
            )
        info = op_counts(out)
        if scope:
            if "op_types_to_quantize" in scope:
                info["quantized_op_types"] = ",".join(scope["op_types_to_quantize"])
            info["excluded_nodes"] = ",".join(scope["nodes_to_exclude"])
            info["float_op_types"] = float_compute_ops(out)
        info.update(self._pre_info(ctx))
        if attention:
            info["attention_scope"] = ("the graph has attention (Softmax, activation x activation MatMul): the "
                                       "transformer scope (MatMul/Gemm/Gather weights int8; masks, softmax, norms float)")
        info.update({"reduce_range": str(reduce_range).lower(),
                     "activation_dtype": "uint8" if activation == QuantType.QUInt8 else "int8", "weight_dtype": "int8"})
        return Artifact(out, ctx.input_dtype, info)

    def build_int4_weight_only(self, ctx: BuildContext, out: Path) -> Artifact:
        """ORT's own block-wise weight-only quantizer (MatMulNBitsQuantizer, QOperator format):
        MatMul weights -> MatMulNBits, embedding tables (Gather) -> GatherBlockQuantized; Gemms are
        first rewritten as MatMul + Add. Convolutions, LSTMs and everything else stay fp32."""
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                      MatMulNBitsQuantizer)
        from onnxruntime.quantization.quant_utils import QuantFormat

        q = ctx.cfg.quant
        model = onnx.load(str(self._fp32(ctx)))
        rewritten = gemm_to_matmul(model)
        total = weight_elements(model, ("MatMul", "Gather", "Conv", "LSTM", "GRU", "Gemm"))
        ops = ("MatMul", "Gather")
        cfg = DefaultWeightOnlyQuantConfig(block_size=q.block_size, is_symmetric=q.symmetric, bits=q.bits,
                                           accuracy_level=q.accuracy_level or None, quant_format=QuantFormat.QOperator,
                                           op_types_to_quantize=ops)
        with _quiet_root_logger():
            quantizer = MatMulNBitsQuantizer(model, algo_config=cfg)
            quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
        result = onnx.load(str(out))
        low_bit = {"MatMulNBits", "GatherBlockQuantized"}
        counts = Counter(n.op_type for n in result.graph.node)
        if not low_bit & set(counts):
            raise Unsupported(f"quant=int4_weight_only on onnxruntime: model={ctx.cfg.model.name} has no MatMul, "
                              "Gemm or embedding weight that ORT's block-wise quantizer takes (its weights are in "
                              f"{', '.join(sorted(set(counts) & {'Conv', 'LSTM', 'GRU'})) or 'other ops'})")
        left = weight_elements(result, ("MatMul", "Gather", "Conv", "LSTM", "GRU", "Gemm"))
        info = op_counts(out)
        info.update({"weight_bits": str(q.bits), "block_size": str(q.block_size),
                     "symmetric": str(q.symmetric).lower(), "accuracy_level": str(q.accuracy_level),
                     "gemm_rewritten_as_matmul": str(rewritten),
                     "low_bit_weight_fraction": f"{1.0 - left / total:.4f}" if total else "0",
                     "float_weight_ops": float_weight_ops(result)})
        return Artifact(out, ctx.input_dtype, info)

    # quant=auto (bsb_hydra/mixed.py): the weight-carrying nodes, each of which can stay float.
    MIXED_OPS = ("Conv", "Gemm", "MatMul")

    def mixed_layers(self, ctx: BuildContext):
        import onnx
        from onnx import numpy_helper

        g = onnx.load(str(self._preprocessed(ctx))).graph
        weights = {i.name: i for i in g.initializer}
        layers = {}
        for n in g.node:
            if n.op_type in self.MIXED_OPS and len(n.input) > 1 and n.input[1] in weights:
                w = numpy_helper.to_array(weights[n.input[1]])
                trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
                # output channels: axis 0 of Conv and of Gemm with transB; the last axis of MatMul's B
                axis = 0 if n.op_type == "Conv" or (n.op_type == "Gemm" and trans_b) else -1
                layers[n.name] = (w, axis)
        return layers

    mixed_fallbacks = ("fp32", "fp16")

    def build_mixed(self, ctx: BuildContext, out: Path, float_layers) -> Artifact:
        """Static int8 with ``float_layers`` excluded. With quant.fallback=fp16 those layers' float
        weights and biases are then stored in fp16, each behind a Cast to fp32 (fp16_weights)."""
        art = self._static(ctx, out, list(float_layers))
        if getattr(ctx.cfg.quant, "fallback", None) is None or ctx.cfg.quant.fallback.value != "fp16" \
                or not float_layers:
            return art
        converted = fp16_weights(out, set(float_layers))
        info = {**art.info, **op_counts(out), "fallback": "fp16 weights, fp32 compute",
                "fp16_nodes": ",".join(converted)}
        return Artifact(out, art.input_dtype, info)

    def layer_activation_sqnr(self, ctx: BuildContext, int8_path: Path, x: np.ndarray) -> Dict[str, Dict[str, float]]:
        """Per weight layer, from ORT's QDQ debugging tools (quantization.qdq_loss_debug): the layer's
        output (after its fused Relu/Clip, the tensor that is quantized) in the fp32 model and in
        the all-int8 QDQ model, on ``x``. Two SQNRs against the fp32 values: ``output_sqnr_db``, the
        int8 model's output there (the error accumulated through every int8 layer up to it), and
        ``activation_sqnr_db``, the fp32 values through that tensor's own int8 grid alone (its
        calibrated scale and zero point: the activation's quantization, weights float)."""
        import onnx
        from onnx import numpy_helper
        from onnxruntime.quantization import qdq_loss_debug as dbg

        from bsb_hydra.mixed import sqnr_db

        src = self._preprocessed(ctx)
        work = ctx.workdir / "analysis_activations"
        work.mkdir(parents=True, exist_ok=True)
        acts = {}
        with _quiet_root_logger():
            for key, path in (("float", src), ("qdq", int8_path)):
                aug = work / f"{key}_augmented.onnx"
                dbg.modify_model_output_intermediate_tensors(str(path), str(aug))
                acts[key] = dbg.collect_activations(str(aug), TrainingSamplesReader(x, input_names(path)))
        matched = dbg.create_activation_matching(acts["qdq"], acts["float"])
        qdq = onnx.load(str(int8_path)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in qdq.initializer}
        grids = {n.input[0].removesuffix(dbg.QUANT_INPUT_SUFFIX): (inits[n.input[1]], inits[n.input[2]])
                 for n in qdq.node  # a graph output X is quantized as X_QuantizeLinear_Input
                 if n.op_type == "QuantizeLinear" and n.input[1] in inits and len(n.input) > 2 and n.input[2] in inits}
        g = onnx.load(str(src)).graph
        layers = set(self.mixed_layers(ctx))
        consumers: Dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        out: Dict[str, Dict[str, float]] = {}
        for n in g.node:
            if n.name not in layers:
                continue
            t = n.output[0]
            follow = [c for c in consumers.get(t, []) if c.op_type in ("Relu", "Clip")]
            if len(follow) == 1 and follow[0].output[0] in matched:
                t = follow[0].output[0]
            m = matched.get(t)
            if not m or "float" not in m:
                continue
            ref = np.concatenate(m["float"])
            row = {"output_sqnr_db": sqnr_db(ref, np.concatenate(m["post_qdq"]))}
            if t in grids:
                scale, zp = grids[t]
                info = np.iinfo(zp.dtype)
                q = np.clip(np.round(ref / scale) + zp.astype(np.int64), info.min, info.max)
                row["activation_sqnr_db"] = sqnr_db(ref, ((q - zp.astype(np.int64)) * scale).astype(np.float32))
            out[n.name] = row
        shutil.rmtree(work, ignore_errors=True)
        return out


    def build_qat(self, ctx: BuildContext, out: Path) -> Artifact:
        """torch.ao FX QAT (shared with the pytorch backend), exported as a QDQ graph that keeps the
        learned ranges and int8 weights (``qat_onnx``)."""
        import torch

        from bsb_hydra.backends.onnxruntime.qat_onnx import qat_to_ort
        from bsb_hydra.qat import fx_qat

        qat = fx_qat(ctx.model, ctx.data, ctx.cfg.quant, ctx.cfg.seed, ctx.engine, ctx.isa)
        facts = qat_to_ort(qat.model, torch.from_numpy(ctx.example), str(out), opset=min(ctx.cfg.backend.opset, 17))
        info = op_counts(out)
        info.update({"reduce_range": str(qat.reduce_range).lower(), "activation_dtype": "uint8", "weight_dtype": "int8",
                     "qat_method": "torch.ao FX prepare_qat_fx -> QDQ export keeping the learned ranges",
                     "qat_seconds": f"{qat.seconds:.1f}", **{k: str(v) for k, v in facts.items()}})
        return Artifact(out, ctx.input_dtype, info, curves={"qat_loss": qat.losses})
