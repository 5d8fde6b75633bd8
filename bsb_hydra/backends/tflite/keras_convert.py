"""A user's Keras model in its own process: ``python -m bsb_hydra.backends.tflite.keras_convert REQUEST.json``
(or one request per line under ``--serve``: bsb_hydra/backends/tflite/convert_server.py).

Keras 3 (TF_USE_LEGACY_KERAS unset). Requests:
- ``op=onnx``: the model as ONNX through tf2onnx, image inputs NCHW (``inputs_as_nchw``: the
  transpose is inside the graph), its 4-D outputs NCHW too (``outputs_as_nchw``: segmentation
  scores, images, read as the tflite runner reads a channels-last model's), the batch dynamic.
- ``op=tflite``: TensorFlow's TFLiteConverter from the Keras model (a SavedModel folder: from the
  folder), for ``scheme`` fp32, fp16 (float16 weights), dynamic (dynamic-range int8 weights) or
  static (full integer, calibrated on the request's real training samples; int8 model I/O with
  ``int8_io``).
- ``op=tflite_onnx``: a user's .tflite file as ONNX through tf2onnx (model=tflite, bsb_hydra/models/tflite.py).
Each writes ``info_out``: what was done, or ``{"error": one line}``."""
from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter

import numpy as np


def _load(req):
    """The Keras model (safe mode unless allow_unsafe), or for a SavedModel folder its serving function."""
    import keras
    import tensorflow as tf

    if req["kind"] == "saved_model":
        loaded = tf.saved_model.load(req["path"])
        sigs = getattr(loaded, "signatures", {})
        if "serving_default" not in sigs:
            raise ValueError(f"the SavedModel has no serving_default signature (it has: {', '.join(sigs) or 'none'})")
        return loaded, sigs["serving_default"]
    return keras.models.load_model(req["path"], compile=False, safe_mode=not req.get("allow_unsafe")), None


def _specs(model, fn, input_shape):
    """(name, per-sample shape, dtype) of every input."""
    if fn is not None:
        specs = [(name, tuple(s.shape[1:]), s.dtype.name) for name, s in sorted(fn.structured_input_signature[1].items())]
    else:
        specs = [(t.name.split(":")[0] if hasattr(t, "name") else f"input_{i}", tuple(t.shape[1:]),
                  str(getattr(t.dtype, "name", t.dtype))) for i, t in enumerate(model.inputs)]
    if input_shape:
        if len(specs) != 1 or len(input_shape) != len(specs[0][1]):
            raise ValueError(f"model.input_shape={input_shape} does not fit the model's inputs "
                             f"{[list(s[1]) for s in specs]}")
        specs = [(specs[0][0], tuple(input_shape), specs[0][2])]
    for name, shape, _ in specs:
        if any(d is None for d in shape):
            raise ValueError(f"input {name!r} has dynamic dims {list(shape)} besides the batch: give "
                             "model.input_shape=[...] per sample, as the model takes it (e.g. [224, 224, 3])")
    return specs


def to_onnx(req) -> dict:
    import tensorflow as tf
    import tf2onnx

    model, fn = _load(req)
    specs = _specs(model, fn, req.get("input_shape"))
    sig = tuple(tf.TensorSpec((None, *shape), tf.as_dtype(dtype), name=name) for name, shape, dtype in specs)
    nchw = [name for name, shape, _ in specs if len(shape) == 3]  # images: (H, W, C) -> NCHW outside
    if fn is not None:  # a SavedModel's serving signature takes keywords and returns a dict: wrapped
        names = [name for name, _, _ in specs]

        @tf.function(input_signature=sig)
        def serve(*args):
            out = fn(**dict(zip(names, args)))
            return [out[k] for k in sorted(out)]

    def export(nchw_out):
        if fn is not None:
            tf2onnx.convert.from_function(serve, input_signature=sig, opset=17, inputs_as_nchw=nchw,
                                          outputs_as_nchw=nchw_out, output_path=req["out"] + ".tmp")
        else:
            tf2onnx.convert.from_keras(model, input_signature=sig, opset=17, inputs_as_nchw=nchw,
                                       outputs_as_nchw=nchw_out, output_path=req["out"] + ".tmp")

    export(None)
    # 4-D outputs of an image model (segmentation scores, images) are NHWC in Keras: NCHW in the export,
    # as every model's image outputs are here (and as the tflite runner reads a channels-last model's)
    nchw_out = four_d_outputs(req["out"] + ".tmp") if nchw else []
    if nchw_out:
        export(nchw_out)
    diff = export_error(model, fn, specs, nchw, req["out"] + ".tmp", bool(nchw_out))
    if not diff <= EXPORT_TOLERANCE:
        raise ValueError(f"tf2onnx's export does not reproduce the model: its outputs differ from Keras' by up to "
                         f"{diff:.3g} (relative to the largest output) on random inputs; tolerance {EXPORT_TOLERANCE}")
    os.replace(req["out"] + ".tmp", req["out"])
    return {"inputs": [[n, list(s), d] for n, s, d in specs], "nchw": nchw, "nchw_outputs": nchw_out,
            "export_max_rel_diff": diff}


def four_d_outputs(onnx_path):
    """The names of the ONNX model's rank-4 outputs."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    return [o.name for o in graph.output if len(o.type.tensor_type.shape.dim) == 4]


# The ONNX export stands for the Keras model on onnxruntime (and as the sweep's fp32 reference): it
# must compute the same outputs, up to float rounding (a small CNN: 3e-8).
EXPORT_TOLERANCE = 1e-4


def export_error(model, fn, specs, nchw, onnx_path, nchw_out=False) -> float:
    """The largest difference between the export's and the model's outputs on 4 random samples,
    relative to the largest output magnitude (``nchw_out``: the export's 4-D outputs are NCHW)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    xs = {name: (rng.integers(0, 2, (4, *shape)) if "int" in dtype else rng.random((4, *shape))).astype(dtype)
          for name, shape, dtype in specs}
    if fn is not None:
        out = fn(**xs)
        ref = [np.asarray(out[k]) for k in sorted(out)]
    else:
        out = model([xs[n] for n, _, _ in specs] if len(specs) > 1 else xs[specs[0][0]], training=False)
        ref = [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    feed = {n: (x.transpose(0, 3, 1, 2) if n in nchw else x) for n, x in xs.items()}
    got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    if nchw_out:
        ref = [r.transpose(0, 3, 1, 2) if r.ndim == 4 else r for r in ref]
    scale = max(float(np.max(np.abs(r))) for r in ref) or 1.0
    return max(float(np.max(np.abs(np.asarray(g, dtype=np.float64) - r))) for g, r in zip(got, ref)) / scale


def to_tflite(req) -> dict:
    import tensorflow as tf

    model, fn = _load(req)
    specs = _specs(model, fn, req.get("input_shape"))
    if len(specs) != 1:
        raise ValueError(f"the model takes {len(specs)} inputs; TFLite conversion here feeds one")
    conv = (tf.lite.TFLiteConverter.from_saved_model(req["path"]) if fn is not None
            else tf.lite.TFLiteConverter.from_keras_model(model))
    scheme = req["scheme"]
    if scheme == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif scheme == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif scheme == "static":
        x = np.load(req["calibration"])
        if x.ndim == 4 and len(specs[0][1]) == 3 and x.shape[1] != specs[0][1][0]:
            x = x.transpose(0, 2, 3, 1)  # the data is NCHW; the model takes (H, W, C)
        x = np.ascontiguousarray(x, dtype=np.float32)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if req.get("int8_io"):
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    elif scheme != "fp32":
        raise ValueError(f"quant={scheme} is not converted here")
    blob = conv.convert()
    with open(req["out"] + ".tmp", "wb") as f:
        f.write(blob)
    os.replace(req["out"] + ".tmp", req["out"])
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob)
    ops = Counter(op["op_name"] for op in it._get_ops_details())
    dtype = np.dtype(it.get_input_details()[0]["dtype"]).name
    return {"input_dtype": "int8" if dtype == "int8" else "float32",
            "info": {"converter": "keras (TFLiteConverter)", "ops": ",".join(f"{k}:{v}" for k, v in sorted(ops.items())),
                     "calibration_samples": str(len(np.load(req["calibration"]))) if scheme == "static" else ""}}


def tflite_to_onnx(req) -> dict:
    """A .tflite file as ONNX (tf2onnx's from_tflite): NHWC image inputs (``nchw``) made NCHW, and the
    4-D outputs of such a model too (as the tflite runner reads them); int8 model I/O wrapped in
    QuantizeLinear / DequantizeLinear with the file's scales (the data stays float). Checked against
    the LiteRT interpreter on random inputs."""
    import onnx
    import tf2onnx
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=req["path"], experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ins, outs = it.get_input_details(), it.get_output_details()
    nchw = list(req["nchw"])
    out_nchw = [d["name"] for d in outs if len(d["shape"]) == 4] if nchw else []
    tmp = req["out"] + ".tmp"
    model, _ = tf2onnx.convert.from_tflite(req["path"], opset=17, inputs_as_nchw=nchw or None,
                                           outputs_as_nchw=out_nchw or None)
    model = _float_edges(model, ins, outs)
    onnx.save(model, tmp)
    diff = tflite_error(req["path"], tmp, nchw, out_nchw)
    tolerance = QUANTIZED_TOLERANCE if req.get("quantized") else EXPORT_TOLERANCE
    if not diff <= tolerance:
        raise ValueError(f"tf2onnx's conversion does not reproduce the .tflite: its outputs differ from LiteRT's by up "
                         f"to {diff:.3g} (relative to the largest output) on random inputs; tolerance {tolerance}")
    os.replace(tmp, req["out"])
    return {"export_max_rel_diff": diff}


# A quantized file's conversion rounds as LiteRT's kernels do, up to one quantization step here and
# there (the requantization's rounding differs between the two runtimes' kernels).
QUANTIZED_TOLERANCE = 0.05


def _float_edges(model, ins, outs):
    """Integer model inputs and outputs behind QuantizeLinear / DequantizeLinear, so that the ONNX model
    takes and gives float like every other fp32 reference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    types = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}
    names_in = {d["name"]: d for d in ins}
    for i, inp in enumerate(list(g.input)):
        d = names_in.get(inp.name) or (ins[i] if i < len(ins) else None)
        kind = np.dtype(d["dtype"]).name if d is not None else "float32"
        if kind not in types:
            continue
        scale, zero = d["quantization"]
        inner = inp.name + "_quantized"
        for n in g.node:
            n.input[:] = [inner if x == inp.name else x for x in n.input]
        g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), inner + "_scale"),
                              numpy_helper.from_array(np.array(zero, np.dtype(kind)), inner + "_zero")])
        g.node.insert(0, helper.make_node("QuantizeLinear", [inp.name, inner + "_scale", inner + "_zero"], [inner]))
        inp.type.tensor_type.elem_type = TensorProto.FLOAT
    names_out = {d["name"]: d for d in outs}
    for i, out in enumerate(list(g.output)):  # by name, as the inputs: tf2onnx keeps the tensors' names
        d = names_out.get(out.name) or (outs[i] if i < len(outs) else None)
        kind = np.dtype(d["dtype"]).name if d is not None else "float32"
        if kind not in types:
            continue
        scale, zero = d["quantization"]
        inner = out.name + "_quantized"
        for n in g.node:
            n.output[:] = [inner if x == out.name else x for x in n.output]
            n.input[:] = [inner if x == out.name else x for x in n.input]
        g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), inner + "_scale"),
                              numpy_helper.from_array(np.array(zero, np.dtype(kind)), inner + "_zero")])
        g.node.append(helper.make_node("DequantizeLinear", [inner, inner + "_scale", inner + "_zero"], [out.name]))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(model)
    return model


def tflite_error(tflite_path, onnx_path, nchw, out_nchw) -> float:
    """The largest difference between the ONNX conversion's and LiteRT's outputs on 4 random samples
    (each fed alone: a file's batch may be fixed at 1), relative to the largest output magnitude."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=tflite_path)
    it.allocate_tensors()
    ins, outs = it.get_input_details(), it.get_output_details()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst, scale = 0.0, 0.0
    for _ in range(4):
        xs = []
        for d in ins:
            shape = (1, *[int(v) for v in d["shape"][1:]])
            kind = np.dtype(d["dtype"])
            if np.issubdtype(kind, np.integer) and not d["quantization"][0]:  # ids
                xs.append(rng.integers(0, 2, shape).astype(kind))
            else:
                xs.append(rng.random(shape).astype(np.float32))
        for d, x in zip(ins, xs):
            v = x
            if d["quantization"][0] and np.dtype(d["dtype"]) != np.float32 and x.dtype == np.float32:
                s, z = d["quantization"]
                info = np.iinfo(d["dtype"])
                v = np.clip(np.round(x / s) + z, info.min, info.max).astype(d["dtype"])
            it.set_tensor(d["index"], v)
        it.invoke()
        ref = []
        for d in outs:
            r = it.get_tensor(d["index"]).astype(np.float64)
            if d["quantization"][0] and np.dtype(d["dtype"]) != np.float32:
                r = (r - d["quantization"][1]) * d["quantization"][0]
            ref.append(r.transpose(0, 3, 1, 2) if d["name"] in out_nchw else r)
        feed = {}
        for i, (d, x) in enumerate(zip(ins, xs)):
            name = session.get_inputs()[i].name
            feed[name] = x.transpose(0, 3, 1, 2) if d["name"] in nchw else x
        got = session.run(None, feed)
        scale = max(scale, *(float(np.max(np.abs(r))) for r in ref))
        worst = max(worst, *(float(np.max(np.abs(np.asarray(g, np.float64) - r))) for g, r in zip(got, ref)))
    return worst / (scale or 1.0)


def one_line(e: Exception) -> str:
    """The reason of a failed request in one line: Keras' own message, or what it means for the most
    common ones (a Lambda refused in safe mode, a custom class this process does not have)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())  # Keras colours its messages
    if "Lambda" in text and "arbitrary code" in text:
        return ("it holds a Lambda layer, whose Python code Keras runs when it loads the file; refused in safe "
                "mode: set model.allow_unsafe=true if you trust the file")
    custom = re.search(r"Could not locate (?:class|function) '([^']+)'", text) or \
        re.search(r"Unknown (?:layer|object|class|activation|loss|metric|initializer|regularizer|constraint): "
                  r"'([^']+)'", text)
    if custom:
        return custom_class_reason(custom.group(1))
    return f"{type(e).__name__}: {text[:400]}"


def custom_class_reason(name: str) -> str:
    """Why a file naming a custom class cannot be loaded, and what to do (also bsb_hydra/models/keras.py)."""
    short = name.rsplit(">", 1)[-1]
    what = f"{short!r} (registered as {name!r})" if short != name else repr(name)
    return (f"it holds the custom class {what}, whose Python code is not in the file (only its name and config): "
            "Keras cannot rebuild the model without it; give the model with built-in layers only, or export it "
            "where its code exists as a SavedModel folder (model.export(DIR)), which holds the computation, not "
            "the code")


def main(req_path: str) -> None:
    with open(req_path) as f:
        req = json.load(f)
    try:
        out = {"onnx": to_onnx, "tflite": to_tflite, "tflite_onnx": tflite_to_onnx}[req["op"]](req)
    except Exception as e:  # one line for the cell; the traceback stays in convert.log
        import traceback

        traceback.print_exc()
        out = {"error": one_line(e)}
    with open(req["info_out"], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    from bsb_hydra.local_state import die_with_parent, exit_now

    die_with_parent(int(os.environ["BSB_PARENT_PID"]) if os.environ.get("BSB_PARENT_PID") else None)
    if sys.argv[1] == "--serve":
        from bsb_hydra.backends.tflite.convert_server import serve

        serve(main)
    else:
        main(sys.argv[1])
    exit_now(0)  # the parent waits for this exit: TensorFlow's teardown skipped (local_state.exit_now)
