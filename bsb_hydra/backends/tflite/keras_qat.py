"""QAT of a user's Keras file in its own process: ``python -m bsb_hydra.backends.tflite.keras_qat REQUEST.json``
(or one request per line under ``--serve``: bsb_hydra/backends/tflite/convert_server.py).

Started with TF_USE_LEGACY_KERAS=1: tensorflow-model-optimization 0.8.1 quantizes tf_keras (Keras 2)
models only, and tf_keras cannot read what Keras 3 writes (a .keras file names Keras 3's modules, a
Keras 3 .h5 file its InputLayer's ``batch_shape``). So the file is loaded by Keras 3 (the ``keras``
package, which this process imports beside tf_keras), in safe mode unless ``allow_unsafe`` (a Lambda
layer's code never runs otherwise), and rebuilt layer by layer as a tf_keras model: the same graph
(Keras 3's own graph walk, nested models inlined), each built-in layer made by tf_keras from the
Keras 3 layer's config, its weights copied, and the rebuild checked against the Keras 3 model's
outputs on random inputs. Then tfmot's ``quantize_model`` on that copy, fine-tuned on the request's
training split (``quant``: epochs, lr, batch_size, granularity), and TFLiteConverter full-integer int8
calibrated on the request's samples (int8 model I/O with ``int8_io``).

Writes ``info_out``: the artifact's info, ``{"unsupported": one line}`` for a model this path cannot
take (a layer tf_keras has no equivalent for or tfmot has no QAT for, an operation that is not a
layer, a rebuild that does not reproduce the model), or ``{"error": one line}``."""
from __future__ import annotations

import json
import os
import re
import sys
import time

import numpy as np


class NotQuantizable(Exception):
    """This model cannot take this path (the cell is unsupported, with this reason)."""


# Keras 3 layer options tf_keras' layers do not take, dropped when they hold their "off" value.
_OFF = (None, False, 0, "", [], {})


def _plain(value):
    """A Keras 3 serialized object ({"module", "class_name", "config", "registered_name"}) in the form
    tf_keras' deserializers take ({"class_name", "config"}), nested ones too."""
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            return {"class_name": value["class_name"], "config": _plain(value["config"])}
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _unknown_keywords(text: str):
    """The keyword names a layer's constructor refused, from its error message (tf_keras' own forms)."""
    text = text.split("Exception encountered:")[-1]
    m = re.search(r"Unrecognized keyword arguments:?\s*\[([^\]]*)\]", text)
    if m:
        return re.findall(r"'(\w+)'", m.group(1))
    return re.findall(r"(?:Keyword argument not understood:'?,?\s*|unexpected keyword argument\s*)'(\w+)'", text)


def _tf_keras_layer(op):
    """A tf_keras layer equal to the Keras 3 layer ``op`` (its weights copied once it is built)."""
    import keras
    import tf_keras

    kind = type(op).__name__
    if not isinstance(op, keras.layers.Layer):
        raise NotQuantizable(f"the model applies {type(op).__module__.replace('keras.src.', 'keras.')}.{kind} to a "
                             "tensor (an operation, not a layer): tf_keras, which tensorflow-model-optimization "
                             "quantizes, has nothing to rebuild it as; write it as a layer (e.g. keras.layers.Add)")
    if not type(op).__module__.startswith("keras.src.layers") or not hasattr(tf_keras.layers, kind):
        raise NotQuantizable(f"layer {op.name!r} ({kind}, {type(op).__module__}) has no tf_keras equivalent to "
                             "rebuild it as, and tensorflow-model-optimization quantizes tf_keras models only")
    if kind == "Lambda":  # reached only with model.allow_unsafe=true: safe mode refused it at load
        raise NotQuantizable(f"layer {op.name!r} is a Lambda: tensorflow-model-optimization has no QAT for a "
                             "Lambda layer's code")
    cfg = {k: _plain(v) for k, v in op.get_config().items() if not k.endswith("_initializer")}  # weights copied
    cfg["dtype"] = op.dtype_policy.name
    cls = getattr(tf_keras.layers, kind)
    for _ in range(20):
        try:
            return cls.from_config(cfg)
        except (TypeError, ValueError) as e:
            bad = [k for k in _unknown_keywords(str(e)) if k in cfg]
            if not bad:
                raise NotQuantizable(f"tf_keras cannot rebuild layer {op.name!r} ({kind}) from its Keras 3 config: "
                                     f"{' '.join(str(e).split())[:200]}") from None
            for k in bad:
                if cfg[k] not in _OFF:
                    raise NotQuantizable(f"layer {op.name!r} ({kind}) sets {k}={cfg[k]!r}, a Keras 3 option that "
                                         "tf_keras' layer (which tensorflow-model-optimization quantizes) does not "
                                         "have") from None
                cfg.pop(k)
    raise NotQuantizable(f"tf_keras cannot rebuild layer {op.name!r} ({kind}) from its Keras 3 config")


def rebuild(model):
    """The Keras 3 ``model`` as a tf_keras functional model with the same weights."""
    import keras
    import tf_keras

    def graph(m):
        f = getattr(m, "_functional", None) if isinstance(m, keras.Sequential) else m
        if f is None or not hasattr(f, "_run_through_graph"):
            raise NotQuantizable(f"model {m.name!r} ({type(m).__name__}) has no layer graph to rebuild (a "
                                 "Sequential model built without an Input, or a subclassed model's Python code)")
        return f

    made = {}  # id(Keras 3 layer) -> (Keras 3 layer, tf_keras layer): a shared layer stays shared

    def operation(op):
        if isinstance(op, keras.Model):  # a nested model: its layers inlined (tfmot quantizes no nested model)
            inner = graph(op)
            return lambda *args, **kwargs: inner._run_through_graph(args[0] if len(args) == 1 else list(args),
                                                                    operation)
        if id(op) not in made:
            made[id(op)] = (op, _tf_keras_layer(op))
        return made[id(op)][1]

    f = graph(model)
    inputs = [tf_keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=t.name) for t in f.inputs]
    outputs = f._run_through_graph(inputs[0] if len(inputs) == 1 else inputs, operation)
    rebuilt = tf_keras.Model(inputs, outputs, name=model.name)
    for op, layer in made.values():
        src = [np.asarray(w) for w in op.get_weights()]
        dst = layer.get_weights()
        if [w.shape for w in src] != [w.shape for w in dst]:
            raise NotQuantizable(f"layer {op.name!r} ({type(op).__name__}) keeps its weights differently in tf_keras "
                                 f"({[list(w.shape) for w in dst]} against Keras 3's {[list(w.shape) for w in src]})")
        layer.set_weights(src)
    return rebuilt


REBUILD_TOLERANCE = 1e-4  # relative to the largest output, as the ONNX export's check (keras_convert)


def rebuild_error(model, rebuilt, shape) -> float:
    rng = np.random.default_rng(0)
    x = rng.random((4, *shape)).astype(np.float32)
    ref = [np.asarray(o, np.float64) for o in _listed(model(x, training=False))]
    got = [np.asarray(o, np.float64) for o in _listed(rebuilt(x, training=False))]
    scale = max(float(np.max(np.abs(r))) for r in ref) or 1.0
    return max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref)) / scale


def _listed(out):
    return list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]


def _nhwc(x: np.ndarray, shape) -> np.ndarray:
    """The data's NCHW images as the model takes them, (H, W, C)."""
    if x.ndim == 4 and len(shape) == 3 and x.shape[1:] != tuple(shape) and \
            x.shape[1:] == (shape[2], shape[0], shape[1]):
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def quantize(rebuilt, granularity):
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    try:
        if granularity == "per_tensor":
            from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
                default_8bit_quantize_scheme as d8
            return qk.quantize_apply(qk.quantize_annotate_model(rebuilt),
                                     scheme=d8.Default8BitQuantizeScheme(disable_per_axis=True))
        return qk.quantize_model(rebuilt)
    except Exception as e:
        text = " ".join(str(e).split())
        m = re.search(r"Layer (\S+?):<class '[\w.]*\.(\w+)'> is not supported", text)
        if m:
            raise NotQuantizable(f"tensorflow-model-optimization has no QAT for layer {m.group(1)!r} ({m.group(2)}) "
                                 "here (its default 8-bit scheme quantizes e.g. Conv2D, DepthwiseConv2D, Dense, "
                                 "pooling and activations, and a BatchNormalization only right after a convolution)"
                                 ) from None
        raise NotQuantizable(f"tensorflow-model-optimization's quantize_model refused the model: "
                             f"{type(e).__name__}: {text[:250]}") from None


def qat(req) -> dict:
    import keras
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(req["seed"])
    model = keras.models.load_model(req["path"], compile=False, safe_mode=not req.get("allow_unsafe"))
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NotQuantizable(f"the model has {len(model.inputs)} input(s) and {len(model.outputs)} output(s); QAT here "
                             "fine-tunes a one-input classifier with one output of class scores")
    shape = tuple(req.get("input_shape") or model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"the input has dynamic dims {list(shape)} besides the batch: give model.input_shape=[...]")
    rebuilt = rebuild(model)
    diff = rebuild_error(model, rebuilt, shape)
    if not diff <= REBUILD_TOLERANCE:
        raise NotQuantizable(f"the tf_keras rebuild of the model does not reproduce it (outputs differ by up to "
                             f"{diff:.3g} of the largest; tolerance {REBUILD_TOLERANCE})")
    q = req["quant"]
    qmodel = quantize(rebuilt, q.get("granularity"))
    x = _nhwc(np.load(req["train_x"]), shape)
    y = np.load(req["train_y"])
    if len(rebuilt.outputs[0].shape) != 2:
        raise NotQuantizable(f"the model's output {list(rebuilt.outputs[0].shape)} is not one score per class; QAT "
                             "fine-tunes a classifier")
    probe = np.asarray(rebuilt(x[:32], training=False))  # a softmax at the end: probabilities, not logits
    probs = bool(probe.min() >= 0.0 and np.allclose(probe.sum(-1), 1.0, atol=1e-3))
    qmodel.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=q["lr"]),
                   loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not probs))
    t0 = time.perf_counter()
    hist = qmodel.fit(x, y, batch_size=q["batch_size"], epochs=q["epochs"], shuffle=True, verbose=0)
    seconds = time.perf_counter() - t0
    losses = [float(v) for v in hist.history["loss"]]
    for i, v in enumerate(losses):
        print(f"  qat (tfmot) epoch {i + 1}/{q['epochs']}: loss {v:.4f}", flush=True)

    calib = _nhwc(np.load(req["calibration"]), shape)
    conv = tf.lite.TFLiteConverter.from_keras_model(qmodel)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if req.get("int8_io"):
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    blob = conv.convert()
    with open(req["out"] + ".tmp", "wb") as f:
        f.write(blob)
    os.replace(req["out"] + ".tmp", req["out"])
    from bsb_hydra.backends.tflite.tflite_convert import op_summary

    info = {"converter": "keras (tf_keras rebuild, tfmot QAT, TFLiteConverter)",
            "qat_method": ("tensorflow-model-optimization quantize_model on a tf_keras rebuild of the Keras 3 model, "
                           f"fine-tuned ({'probabilities' if probs else 'logits'}), full-integer int8"),
            "qat_seconds": f"{seconds:.1f}", "qat_rebuild_max_rel_diff": f"{diff:.3g}",
            "granularity": q.get("granularity") or "per_channel", "calibration_samples": str(len(calib)),
            "io_dtype": "int8" if req.get("int8_io") else "float32", **op_summary(blob)}
    return {"input_dtype": "int8" if req.get("int8_io") else "float32", "info": info, "curves": {"qat_loss": losses}}


def main(req_path: str) -> None:
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise SystemExit("keras_qat must run with TF_USE_LEGACY_KERAS=1 (tfmot needs tf_keras)")
    with open(req_path) as f:
        req = json.load(f)
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() != req.get("threads", 1):  # fixed after the first
        try:
            tf.config.threading.set_intra_op_parallelism_threads(req.get("threads", 1))
        except RuntimeError:
            pass
    try:
        out = qat(req)
    except NotQuantizable as e:
        out = {"unsupported": str(e)}
    except Exception as e:  # one line for the cell; the traceback stays in convert.log
        import traceback

        from bsb_hydra.backends.tflite.keras_convert import one_line

        traceback.print_exc()
        out = {"error": one_line(e)}
    with open(req["info_out"], "w") as f:
        json.dump(out, f)


def _fresh_keras() -> None:
    import keras
    import tf_keras

    keras.backend.clear_session()
    tf_keras.backend.clear_session()


if __name__ == "__main__":
    from bsb_hydra.local_state import die_with_parent, exit_now

    die_with_parent(int(os.environ["BSB_PARENT_PID"]) if os.environ.get("BSB_PARENT_PID") else None)
    if sys.argv[1] == "--serve":
        from bsb_hydra.backends.tflite.convert_server import serve

        serve(main, before_each=_fresh_keras)
    else:
        main(sys.argv[1])
    exit_now(0)  # the parent waits for this exit: TensorFlow's teardown skipped (local_state.exit_now)
