"""model=keras (issue 32, first part): a user's Keras model as .keras, .h5 and SavedModel, on
onnxruntime (tf2onnx export) and tflite (TensorFlow's TFLiteConverter); pytorch says why not; a Lambda
layer's code never runs without model.allow_unsafe=true. Files built here in a fresh process
(TensorFlow stays out of the test process)."""
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PYTHON, SMOKE, run_bsb, runs_of

QUICK = [a for a in SMOKE if not a.startswith(("data.limit_test", "benchmark.batch_sizes"))] + \
    ["benchmark.batch_sizes=[1]", "quant.samples=32", "peak.enabled=false"]

MAKE = textwrap.dedent('''
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, keras
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.random((96, 3, 16, 16), dtype=np.float32)
    y = rng.integers(0, 3, 96)
    np.savez(f"{out}/labelled.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(32, 3, activation="relu")(inp)
    h = keras.layers.DepthwiseConv2D(3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(512, activation="relu")(h)
    h = keras.layers.Dense(512, activation="relu")(h)  # 0.3 M weights: the file's size is its weights
    m = keras.Model(inp, keras.layers.Dense(3)(h))
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x.transpose(0, 2, 3, 1)[:64], y[:64], epochs=3, verbose=0)
    m.save(f"{out}/cnn.keras")
    m.save(f"{out}/cnn.h5")
    m.export(f"{out}/cnn_savedmodel", verbose=False)
    marker = f"{out}/MARKER"
    # a Lambda whose code writes a file: Keras runs it when it rebuilds the model from the file
    evil = keras.layers.Lambda(eval(f"lambda t: (open({marker!r}, 'w').close(), t)[1]"), output_shape=(3,))
    keras.Model(inp, evil(m(inp))).save(f"{out}/lambda.keras")
    if os.path.exists(marker):  # written if Keras ran it while building it here
        os.remove(marker)
    os.makedirs(f"{out}/not_a_savedmodel")
''')


@pytest.fixture(scope="module")
def kfiles(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras_files")
    proc = subprocess.run([PYTHON, "-c", MAKE, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_keras_savedmodel_and_h5_on_onnxruntime_and_tflite(kfiles, tmp_path):
    """Every scheme of both backends on the .keras file, the .h5 file and the SavedModel folder, static
    with int8 model I/O on .h5; pytorch unsupported with the reason. The fp32 artifacts of both runtimes compute the Keras
    model's outputs (same predictions), and static on tflite is full integer."""
    data = ["data=npz", f"data.path={kfiles}/labelled.npz"]
    paths = ",".join(f"{kfiles}/{n}" for n in ("cnn.keras", "cnn.h5", "cnn_savedmodel"))
    run_bsb(["-m", "model=keras", f"model.path={paths}", *data, "quant=fp32,fp16,dynamic,static",
             "backend=onnxruntime,tflite", *QUICK], tmp_path, sweep="keras")
    run_bsb(["model=keras", f"model.path={kfiles}/cnn.keras", *data, "quant=fp32", "backend=pytorch",
             *(a for a in QUICK if not a.startswith("quant."))], tmp_path, sweep="pytorch")
    run_bsb(["model=keras", f"model.path={kfiles}/cnn.h5", *data, "quant=static", "backend=tflite",
             "backend.int8_io=true", *QUICK], tmp_path)
    run_bsb(["-m", "model=keras", f"model.path={kfiles}/cnn.keras", *data, "quant=auto", "backend=onnxruntime,tflite",
             *QUICK], tmp_path, sweep="auto")  # auto: the export's mixed-precision search on onnxruntime only
    _, runs = runs_of(tmp_path)
    auto = {r.data.tags["backend"]: r.data.tags for r in runs if r.data.tags["quant"] == "auto"}
    assert auto["onnxruntime"]["status"] == "ok", auto["onnxruntime"].get("reason")
    assert auto["tflite"]["status"] == "unsupported" and "quant=auto" in auto["tflite"]["reason"]
    int8_io = [r for r in runs if r.data.params.get("backend.int8_io") == "True"]
    assert len(int8_io) == 1 and int8_io[0].data.tags["input_dtype"] == "int8"
    runs = [r for r in runs if r not in int8_io and r.data.tags["quant"] != "auto"]
    by = {(r.data.params["model.path"].rsplit("/", 1)[-1], r.data.tags["quant"], r.data.tags["backend"]): r
          for r in runs}
    assert len(by) == 3 * 8 + 1
    for (name, quant, backend), r in by.items():
        t, m = r.data.tags, r.data.metrics
        if backend == "pytorch":
            assert t["status"] == "unsupported" and "is a Keras model" in t["reason"], t.get("reason")
            continue
        assert t["status"] == "ok", (name, quant, backend, t.get("reason"))
        assert t["task"] == "classification" and t["model_source"] == "keras" and "accuracy" in m
    for name in ("cnn.keras", "cnn.h5", "cnn_savedmodel"):  # the same weights, whatever the runtime
        ort, lite = by[(name, "fp32", "onnxruntime")], by[(name, "fp32", "tflite")]
        assert ort.data.metrics["accuracy"] == lite.data.metrics["accuracy"]
        assert ort.data.tags["fp32_weights_sha256"] == lite.data.tags["fp32_weights_sha256"]
    for name in ("cnn.keras", "cnn.h5", "cnn_savedmodel"):  # every format through every scheme
        static = by[(name, "static", "tflite")]
        assert static.data.tags["build.converter"] == "keras (TFLiteConverter)" and "CONV_2D" in static.data.tags["build.ops"]
        for quant in ("dynamic", "static"):  # int8 weights: about a quarter of the float file
            assert by[(name, quant, "tflite")].data.metrics["size_ratio"] < 0.33, (name, quant)
            assert by[(name, quant, "onnxruntime")].data.metrics["size_ratio"] < 0.33, (name, quant)
            # the same model quantized: the three formats give the same predictions within a few samples
            assert abs(by[(name, quant, "tflite")].data.metrics["accuracy"] -
                       by[("cnn.keras", quant, "tflite")].data.metrics["accuracy"]) <= 2 / 32 + 1e-9, (name, quant)
        assert 0.45 < by[(name, "fp16", "tflite")].data.metrics["size_ratio"] < 0.6, name


def test_keras_refusals_are_one_line_and_a_lambda_runs_only_when_allowed(kfiles, tmp_path):
    marker = kfiles / "MARKER"
    data = ["data=npz", f"data.path={kfiles}/labelled.npz", "quant=fp32", "backend=onnxruntime",
            *(a for a in QUICK if not a.startswith("quant."))]
    paths = ",".join(str(kfiles / n) for n in ("lambda.keras", "not_a_savedmodel", "labelled.npz", "missing.keras"))
    run_bsb(["-m", "model=keras", f"model.path={paths}", *data], tmp_path, sweep="refused", failed=True)
    assert not marker.exists()  # the Lambda's code never ran
    _, runs = runs_of(tmp_path)
    reasons = {r.data.params["model.path"].rsplit("/", 1)[-1]: r.data.tags["reason"] for r in runs}
    assert all(r.data.tags["status"] == "failed" and "\n" not in r.data.tags["reason"] for r in runs)
    assert "Lambda layer" in reasons["lambda.keras"] and "model.allow_unsafe=true" in reasons["lambda.keras"]
    assert "without saved_model.pb: not a SavedModel" in reasons["not_a_savedmodel"]
    assert "is not a Keras file" in reasons["labelled.npz"] and "no such file" in reasons["missing.keras"]
    run_bsb(["model=keras", f"model.path={kfiles}/lambda.keras", "model.allow_unsafe=true", *data], tmp_path)
    assert marker.exists()  # the payload is real: with the flag, Keras ran it
