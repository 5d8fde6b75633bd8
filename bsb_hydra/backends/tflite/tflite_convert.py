"""TFLite conversion in its own process: ``python -m bsb_hydra.backends.tflite.tflite_convert REQUEST.json``.

Started by the tflite backend with TF_USE_LEGACY_KERAS=1, so ``tf.keras`` is tf_keras 2.x, which
tensorflow-model-optimization's QAT needs; the same Keras serves every scheme. Steps: Keras twin
<- the trained PyTorch weights -> (QAT fine-tuning) -> TFLiteConverter -> .tflite + info.json."""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np


def representative(calibration_nhwc: np.ndarray):
    """The converter's representative dataset: the real training samples, one at a time."""
    def gen():
        for i in range(len(calibration_nhwc)):
            yield [calibration_nhwc[i:i + 1]]
    return gen


def qat_finetune(model, req, log):
    """tfmot QAT of the twin (which already holds the trained weights) on the training split."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    q = req["quant"]
    qk = tfmot.quantization.keras
    if q.get("granularity") == "per_tensor":
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
            default_8bit_quantize_scheme as d8
        qmodel = qk.quantize_apply(qk.quantize_annotate_model(model),
                                   scheme=d8.Default8BitQuantizeScheme(disable_per_axis=True))
    else:
        qmodel = qk.quantize_model(model)
    x = np.load(req["train_x"])
    y = np.load(req["train_y"])
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    qmodel.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=q["lr"]),
                   loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    hist = qmodel.fit(x, y, batch_size=q["batch_size"], epochs=q["epochs"], shuffle=True, verbose=0)
    losses = [float(v) for v in hist.history["loss"]]
    for i, v in enumerate(losses):
        log(f"  qat (tfmot) epoch {i + 1}/{q['epochs']}: loss {v:.4f}")
    return qmodel, losses, time.perf_counter() - t0


def op_summary(tflite_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite_bytes)
    ops = it._get_ops_details()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    counts = Counter(op["op_name"] for op in ops)
    float_ops = Counter(op["op_name"] for op in ops
                        if op["op_name"] not in ("DEQUANTIZE", "QUANTIZE") and any(
                            np.dtype(tensors[o]["dtype"]) == np.float32 for o in op["outputs"] if o in tensors))
    return {"ops": ",".join(f"{k}:{v}" for k, v in sorted(counts.items())),
            "float_ops": ",".join(f"{k}:{v}" for k, v in sorted(float_ops.items())) or "none"}


def main(request_path: str) -> None:
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise SystemExit("tflite_convert must run with TF_USE_LEGACY_KERAS=1 (tfmot needs tf_keras)")
    with open(request_path) as f:
        req = json.load(f)
    import tensorflow as tf

    from bsb_hydra.backends.tflite.keras_twins import build_twin, load_torch_weights

    tf.keras.utils.set_random_seed(req["seed"])
    if tf.config.threading.get_intra_op_parallelism_threads() != req.get("threads", 1):  # fixed after the first request
        tf.config.threading.set_intra_op_parallelism_threads(req.get("threads", 1))
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    cfg = SimpleNamespace(**req["model_cfg"])
    shape = tuple(req["input_shape"])
    weights = dict(np.load(req["weights"]))

    # The LSTM twin is unrolled over seq_len steps for every scheme: the fused sequence op needs a
    # fixed batch (TensorList lowering), cannot then be resized to other batch sizes, and its
    # full-integer conversion crashes; the unrolled graph converts for fp32, fp16, dynamic and int8.
    model = build_twin(req["model"], cfg, shape, req["num_classes"], unroll=req["model"] == "lstm")
    load_torch_weights(model, req["model"], cfg, weights)
    mixed = [job for job in req["outputs"] if job["scheme"] == "mixed"]
    if mixed:  # quant=auto's builds: calibrated once, quantized once per deny list
        convert_mixed(model, req, mixed)
    for job in req["outputs"]:  # e.g. the fp32 reference and the cell's scheme, one TF start-up
        if job["scheme"] == "layers":
            weight_layers(model, req, job)
        elif job["scheme"] != "mixed":
            convert(model, req, job["scheme"], job["out"], job["info_out"], log)


# Ops with a weight the converter quantizes, and the axis of their output channels in TFLite's layout.
WEIGHT_OPS = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3}


def _weight_ops(tflite_bytes: bytes):
    """[(op output name, op name, weight tensor index)] of the weight-carrying ops, in graph order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite_bytes)
    it.allocate_tensors()
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    return it, [(names[op["outputs"][0]], op["op_name"], op["inputs"][1]) for op in it._get_ops_details()
                if op["op_name"] in WEIGHT_OPS]


def weight_layers(model, req, job) -> None:
    """quant=auto's layers: the weight ops of the full-integer model by their node names (what the
    converter's deny list takes), with their float weights from the fp32 conversion of the same twin."""
    import tensorflow as tf

    tmp = job["out"] + ".int8.tflite"  # the same path as quant=auto's builds, nothing kept float
    convert_mixed(model, req, [{"out": tmp, "info_out": job["info_out"], "deny_nodes": []}])
    with open(tmp, "rb") as f:
        _, int8_ops = _weight_ops(f.read())
    os.remove(tmp)
    fp32_it, fp32_ops = _weight_ops(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    if [o[1] for o in int8_ops] != [o[1] for o in fp32_ops]:
        raise SystemExit(f"tflite_convert: the int8 and fp32 models have different weight ops: "
                         f"{[o[1] for o in int8_ops]} vs {[o[1] for o in fp32_ops]}")
    weights = {f"w{i}": fp32_it.get_tensor(idx) for i, (_, _, idx) in enumerate(fp32_ops)}
    np.savez(job["out"], **weights)
    with open(job["info_out"], "w") as f:
        json.dump({"layers": [{"name": name, "op": op, "axis": WEIGHT_OPS[op], "key": f"w{i}"}
                              for i, (name, op, _) in enumerate(int8_ops)]}, f)


def convert_mixed(model, req, jobs) -> None:
    """Static int8 with each job's ``deny_nodes`` (node names) kept float: the converter's selective
    quantization through its QuantizationDebugger. The model is calibrated once (the debugger's
    calibrate-only conversion over the representative dataset); each deny list is one more
    quantization pass of that calibrated model (the debugger's public ``options`` setter)."""
    import tensorflow as tf

    converter, info, _ = _converter(model, req, "mixed")
    # Float ops beside int8 ones: the builtin float kernels must be allowed too.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = lambda job: tf.lite.experimental.QuantizationDebugOptions(  # noqa: E731
        denylisted_nodes=list(job["deny_nodes"]) or None)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset, debug_options=options(jobs[0]))
    for i, job in enumerate(jobs):
        if i:
            debugger.options = options(job)
        tflite_bytes = debugger.get_nondebug_quantized_model()
        job_info = {**info, "float_nodes": ",".join(job["deny_nodes"]),
                    "method": "QuantizationDebugger deny list (denylisted_nodes): those ops stay float",
                    **op_summary(tflite_bytes), "io_dtype": "float32"}
        _write(tflite_bytes, job["out"], job["info_out"], job_info, {}, "float32")


def _write(tflite_bytes: bytes, out: str, info_out: str, info, curves, input_dtype: str) -> None:
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(tflite_bytes)
    os.replace(tmp, out)
    with open(info_out, "w") as f:
        json.dump({"info": info, "curves": curves, "input_dtype": input_dtype}, f)


def convert(model, req, scheme: str, out: str, info_out: str, log) -> None:
    """One conversion of ``model`` (a scheme other than quant=auto's "mixed")."""
    curves = {}
    if scheme == "qat":
        model, losses, seconds = qat_finetune(model, req, log)
        curves["qat_loss"] = losses
    converter, info, input_dtype = _converter(model, req, scheme)
    if scheme == "qat":
        info["qat_method"] = "tensorflow-model-optimization quantize_model, fine-tuned, full-integer int8"
        info["qat_seconds"] = f"{seconds:.1f}"
    tflite_bytes = converter.convert()
    info.update(op_summary(tflite_bytes))
    info["io_dtype"] = input_dtype
    _write(tflite_bytes, out, info_out, info, curves, input_dtype)


def _converter(model, req, scheme: str):
    """The TFLiteConverter of ``model`` set up for ``scheme``; (converter, info, model input dtype)."""
    import tensorflow as tf

    info = {"converter": f"tf.lite.TFLiteConverter.from_keras_model (tensorflow {tf.__version__})"}
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    input_dtype = "float32"
    if scheme == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif scheme == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif scheme in ("static", "qat", "mixed"):
        import hashlib

        calib = np.load(req["calibration"])
        # Fingerprint of the samples as the pipeline chose them (NCHW images or int64 token ids).
        info["calibration_sha256"] = hashlib.sha256(np.ascontiguousarray(calib).tobytes()).hexdigest()
        info["calibration_samples"] = str(len(calib))
        calib = calib.astype(np.int32 if np.issubdtype(calib.dtype, np.integer) else np.float32)  # ids: int32
        if calib.ndim == 4:
            calib = calib.transpose(0, 2, 3, 1)
        calib = np.ascontiguousarray(calib)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative(calib)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if scheme in ("static", "mixed") and req["quant"].get("granularity") == "per_tensor":
            converter._experimental_disable_per_channel = True  # the converter's own per-tensor switch
            info["granularity"] = "per_tensor (converter._experimental_disable_per_channel)"
        if req["int8_io"] and scheme != "mixed":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            input_dtype = "int8"
    elif scheme != "fp32":
        raise SystemExit(f"tflite_convert: unknown scheme {scheme!r}")
    return converter, info, input_dtype


def _fresh_keras() -> None:
    """Between a server's requests: Keras' graph and layer-name counters start again, so every
    request names its twin's layers as a fresh process would (quant=auto's deny lists name them)."""
    import tensorflow as tf

    tf.keras.backend.clear_session()


if __name__ == "__main__":
    from bsb_hydra.local_state import die_with_parent, exit_now

    die_with_parent(int(os.environ["BSB_PARENT_PID"]) if os.environ.get("BSB_PARENT_PID") else None)
    if sys.argv[1] == "--serve":  # bsb_hydra/backends/tflite/convert_server.py
        from bsb_hydra.backends.tflite.convert_server import serve

        serve(main, before_each=_fresh_keras)
    else:
        main(sys.argv[1])
    exit_now(0)  # the parent waits for this exit: TensorFlow's teardown skipped (local_state.exit_now)
