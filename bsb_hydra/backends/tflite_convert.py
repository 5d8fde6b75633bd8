"""TFLite conversion in its own process: ``python -m bsb_hydra.backends.tflite_convert REQUEST.json``.

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

    from bsb_hydra.backends.keras_twins import build_twin, load_torch_weights

    tf.keras.utils.set_random_seed(req["seed"])
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
    for job in req["outputs"]:  # e.g. the fp32 reference and the cell's scheme, one TF start-up
        convert(model, req, job["scheme"], job["out"], job["info_out"], log)


def convert(model, req, scheme: str, out: str, info_out: str, log) -> None:
    import tensorflow as tf

    info = {"converter": f"tf.lite.TFLiteConverter.from_keras_model (tensorflow {tf.__version__})"}
    curves = {}
    if scheme == "qat":
        model, losses, seconds = qat_finetune(model, req, log)
        curves["qat_loss"] = losses
        info["qat_method"] = "tensorflow-model-optimization quantize_model, fine-tuned, full-integer int8"
        info["qat_seconds"] = f"{seconds:.1f}"

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    input_dtype = "float32"
    if scheme == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif scheme == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif scheme in ("static", "qat"):
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
        if scheme == "static" and req["quant"].get("granularity") == "per_tensor":
            converter._experimental_disable_per_channel = True  # the converter's own per-tensor switch
            info["granularity"] = "per_tensor (converter._experimental_disable_per_channel)"
        if req["int8_io"]:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            input_dtype = "int8"
    elif scheme != "fp32":
        raise SystemExit(f"tflite_convert: unknown scheme {scheme!r}")
    tflite_bytes = converter.convert()
    info.update(op_summary(tflite_bytes))
    info["io_dtype"] = input_dtype
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(tflite_bytes)
    os.replace(tmp, out)
    with open(info_out, "w") as f:
        json.dump({"info": info, "curves": curves, "input_dtype": input_dtype}, f)

if __name__ == "__main__":
    main(sys.argv[1])
