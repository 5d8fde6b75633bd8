"""model=tflite (issue 32): a user's .tflite file. A float file is the fp32 cell and ai-edge-quantizer's
fp16 / dynamic / static on tflite, tf2onnx's conversion quantized by ONNX Runtime on onnxruntime; an
already-quantized file is measured as it is under its own scheme, against model.reference when given,
without any ratio or fidelity when not. Files built here by TensorFlow's converter from a small Keras
CNN, in a fresh process (TensorFlow stays out of the test process)."""
import subprocess
import textwrap

import pytest

from tests.conftest import PYTHON, SMOKE, run_bsb, runs_of

QUICK = [a for a in SMOKE if not a.startswith(("data.limit_test", "benchmark.batch_sizes"))] + \
    ["benchmark.batch_sizes=[1,4]", "quant.samples=32", "peak.enabled=false"]

FP32 = [a for a in QUICK if not a.startswith("quant.")]

MAKE = textwrap.dedent('''
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, keras, tensorflow as tf
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.random((128, 3, 16, 16), dtype=np.float32)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).astype(np.int64) + (x[:, 2].mean((1, 2)) > 0.5)
    np.savez(f"{out}/labelled.npz", x_train=x[:96], y_train=y[:96], x_test=x[96:], y_test=y[96:])
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(32, 3, activation="relu")(inp)
    h = keras.layers.DepthwiseConv2D(3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(512, activation="relu")(h)
    h = keras.layers.Dense(512, activation="relu")(h)
    m = keras.Model(inp, keras.layers.Dense(3)(h))
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x.transpose(0, 2, 3, 1)[:96], y[:96], epochs=5, verbose=0)
    rep = x.transpose(0, 2, 3, 1)[:32]

    def convert(name, opt=False, types=None, int8=False, io=False):
        c = tf.lite.TFLiteConverter.from_keras_model(m)
        if opt:
            c.optimizations = [tf.lite.Optimize.DEFAULT]
        if types:
            c.target_spec.supported_types = types
        if int8:
            c.representative_dataset = lambda: ([rep[i:i + 1]] for i in range(len(rep)))
            c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io:
            c.inference_input_type = c.inference_output_type = tf.int8
        with open(f"{out}/{name}.tflite", "wb") as f:
            f.write(c.convert())

    convert("float")
    convert("int8", opt=True, int8=True)
    convert("int8io", opt=True, int8=True, io=True)
    convert("dynamic", opt=True)
    convert("fp16", opt=True, types=[tf.float16])
    with open(f"{out}/garbage.tflite", "wb") as f:
        f.write(b"not a flatbuffer at all")
''')


@pytest.fixture(scope="module")
def tfiles(tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite_files")
    proc = subprocess.run([PYTHON, "-c", MAKE, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _ref(r) -> str:
    ref = r.data.params.get("model.reference")
    return "" if ref in (None, "None") else ref


def _by(runs):
    return {(r.data.params["model.path"].rsplit("/", 1)[-1], _ref(r),
             r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}


def test_float_and_int8_tflite_files_through_every_scheme_on_both_backends(tfiles, tmp_path):
    """The float file: every scheme on tflite and onnxruntime, ok. The int8 files (float and int8 I/O)
    with the float reference: fp32 is the reference, static the file as it is (same bytes on tflite,
    its own scales on onnxruntime), fp16/dynamic unsupported with the reason. pytorch: unsupported."""
    data = ["data=npz", f"data.path={tfiles}/labelled.npz"]
    run_bsb(["-m", "model=tflite", f"model.path={tfiles}/float.tflite", *data, "quant=fp32,fp16,dynamic,static",
             "backend=onnxruntime,tflite,pytorch", *QUICK], tmp_path, sweep="float")
    run_bsb(["-m", "model=tflite", f"model.path={tfiles}/int8.tflite", f"model.reference={tfiles}/float.tflite", *data,
             "quant=fp32,fp16,dynamic,static", "backend=onnxruntime,tflite", *QUICK], tmp_path, sweep="int8")
    run_bsb(["-m", "model=tflite", f"model.path={tfiles}/int8io.tflite", f"model.reference={tfiles}/float.tflite",
             *data, "quant=static", "backend=onnxruntime,tflite", *QUICK], tmp_path, sweep="int8io")
    _, runs = runs_of(tmp_path)
    by = _by(runs)
    assert len(by) == 12 + 8 + 2
    for (name, ref, quant, backend), r in by.items():
        t, m = r.data.tags, r.data.metrics
        if backend == "pytorch":
            assert t["status"] == "unsupported" and "is a .tflite file" in t["reason"], t.get("reason")
        elif name != "float.tflite" and quant in ("fp16", "dynamic"):
            assert t["status"] == "unsupported" and "full-integer int8, already quantized" in t["reason"] \
                and "quant=static" in t["reason"], t.get("reason")
        else:
            assert t["status"] == "ok", (name, quant, backend, t.get("reason"))
            assert t["task"] == "classification" and t["model_source"] == "tflite" and "accuracy" in m
            assert t["input_shape"] == "3x16x16"  # NHWC file, NCHW data: transposed for it
    f = {(q, b): by[("float.tflite", "", q, b)] for q in ("fp32", "fp16", "dynamic", "static")
         for b in ("onnxruntime", "tflite")}
    # the same float model on both runtimes (tf2onnx's conversion is checked against LiteRT)
    assert f["fp32", "onnxruntime"].data.metrics["accuracy"] == f["fp32", "tflite"].data.metrics["accuracy"]
    assert f["fp32", "tflite"].data.tags["build.converter"] == "as given (the float file)"
    lite_static = f["static", "tflite"].data.tags
    assert lite_static["build.converter"] == "the float .tflite -> ai-edge-quantizer" and "calibration_samples" in \
        "".join(lite_static)
    for q in ("dynamic", "static"):
        for b in ("onnxruntime", "tflite"):
            assert f[q, b].data.metrics["size_ratio"] < 0.4, (q, b)
            assert f[q, b].data.metrics["top1_agreement"] >= 0.75, (q, b)
    assert 0.45 < f["fp16", "tflite"].data.metrics["size_ratio"] < 0.6
    for name in ("int8.tflite", "int8io.tflite"):
        ref = str(tfiles / "float.tflite")
        lite, ort = by[(name, ref, "static", "tflite")], by[(name, ref, "static", "onnxruntime")]
        assert lite.data.tags["build.converter"] == "as given (model.path)"
        assert lite.data.tags["build.precision"] == "full-integer int8"
        assert lite.data.metrics["size_bytes"] == (tfiles / name).stat().st_size  # the file itself
        assert "tf2onnx of model.path" in ort.data.tags["build.converter"]
        # the reference's fp32 cell is the float file's: same accuracy as the float file's own cell
        assert lite.data.metrics["fp32_accuracy"] == f["fp32", "tflite"].data.metrics["accuracy"]
        assert lite.data.metrics["size_ratio"] < 0.4 and lite.data.metrics["top1_agreement"] >= 0.75
        # the same int8 model on both runtimes: its own scales and zero points
        assert abs(lite.data.metrics["accuracy"] - ort.data.metrics["accuracy"]) <= 1 / 32 + 1e-9
    assert by[("int8io.tflite", str(tfiles / "float.tflite"), "static", "tflite")].data.tags["input_dtype"] == "int8"


def test_quantized_file_alone_is_measured_without_comparisons_and_bad_files_fail_early(tfiles, tmp_path):
    """Without model.reference: the int8 and dynamic files are measured as they are (size, latency, the
    accuracy against the labels) with no ratio, speedup or fidelity, and their fp32 cells are unsupported
    with the reason. A file that is not a .tflite, a folder, a float reference that is not float: one line each."""
    from bsb_hydra.scoring import compares_with_fp32

    data = ["data=npz", f"data.path={tfiles}/labelled.npz"]
    run_bsb(["-m", "model=tflite", f"model.path={tfiles}/int8.tflite,{tfiles}/dynamic.tflite,{tfiles}/fp16.tflite",
             *data, "quant=fp32,dynamic,static,fp16", "backend=tflite", *QUICK], tmp_path, sweep="alone")
    _, runs = runs_of(tmp_path)
    by = _by(runs)
    own = {"int8.tflite": "static", "dynamic.tflite": "dynamic", "fp16.tflite": "fp16"}
    for (name, _, quant, _), r in by.items():
        t, m = r.data.tags, r.data.metrics
        if quant == "fp32":
            assert t["status"] == "unsupported" and "model.reference=FLOAT.tflite" in t["reason"], t.get("reason")
        elif quant != own[name]:
            assert t["status"] == "unsupported" and f"under quant={own[name]}" in t["reason"], t.get("reason")
        else:
            assert t["status"] == "ok", (name, quant, t.get("reason"))
            assert t["fp32_reference"] == "none" and "accuracy" in m and "latency_p50_ms_b1" in m
            assert not [k for k in m if compares_with_fp32(k)], [k for k in m if compares_with_fp32(k)]
            assert m["size_bytes"] == (tfiles / name).stat().st_size
    bad = ",".join(str(p) for p in (tfiles / "garbage.tflite", tfiles, tfiles / "labelled.npz", tfiles / "no.tflite"))
    run_bsb(["-m", "model=tflite", f"model.path={bad}", *data, "quant=fp32", "backend=tflite", *FP32], tmp_path,
            sweep="bad", failed=True)
    run_bsb(["model=tflite", f"model.path={tfiles}/int8.tflite", f"model.reference={tfiles}/dynamic.tflite", *data,
             "quant=fp32", "backend=tflite", *FP32], tmp_path, sweep="badref", failed=True)
    _, runs = runs_of(tmp_path)
    failed = [r for r in runs if r.data.tags["status"] == "failed"]
    reasons = {r.data.params["model.path"].rsplit("/", 1)[-1] + ("+ref" if _ref(r) else ""): r.data.tags["reason"]
               for r in failed}
    assert all("\n" not in v for v in reasons.values()) and len(reasons) == 5, reasons
    assert "is not a TFLite model" in reasons["garbage.tflite"] and "is not a TFLite model" in reasons["labelled.npz"]
    assert "is a folder" in reasons[tfiles.name] and "no such file" in reasons["no.tflite"]
    assert "is dynamic-range int8 weights, not float32" in reasons["int8.tflite+ref"]
