"""model=keras, issue 32 (second part): QAT of a user's Keras file on tflite (tensorflow-model-optimization
on a tf_keras rebuild of the Keras 3 model, in a TF_USE_LEGACY_KERAS=1 process), and what it cannot
take (unsupported, one line); files Keras cannot load (a custom class without its code, garbage bytes)
refused in one line before any work; a segmentation and an image-to-image Keras model on onnxruntime
and tflite, read in the same NCHW layout by both (the same fp32 mIoU / PSNR). Files built here in a
fresh process (TensorFlow stays out of the test process)."""
import subprocess
import textwrap
from pathlib import Path

import pytest

from bsb_hydra.metric_names import mlflow_key
from tests.conftest import PYTHON, run_bsb, runs_of
from tests.test_keras import QUICK

MAKE = textwrap.dedent('''
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, keras
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    # classes: which colour channel is bright
    x = (rng.random((160, 3, 16, 16)) * 0.4).astype(np.float32)
    y = rng.integers(0, 3, 160)
    x[np.arange(160), y] += 0.5
    np.savez(f"{out}/cls.npz", x_train=x[:128], y_train=y[:128], x_test=x[128:], y_test=y[128:])
    np.savez(f"{out}/cls_x.npz", x=x[128:])
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(16, 3, use_bias=False)(inp)
    h = keras.layers.BatchNormalization()(h)  # right after a convolution: tfmot folds it
    h = keras.layers.ReLU()(h)
    h = keras.layers.DepthwiseConv2D(3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(256, activation="relu")(h)  # 70 K weights: int8 shows in the file's size
    h = keras.layers.Dense(256, activation="relu")(h)
    m = keras.Model(inp, keras.layers.Dense(3)(h))
    m.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x.transpose(0, 2, 3, 1)[:128], y[:128], epochs=10, verbose=0)
    m.save(f"{out}/qat.keras")
    m.save(f"{out}/qat.h5")
    m.export(f"{out}/qat_savedmodel", verbose=False)
    # a BatchNormalization after an activation: tfmot has no QAT for it
    bn = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, activation="relu")(inp))
    keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(bn))).save(f"{out}/bn.keras")
    # keras.ops on a tensor (an operation, not a layer)
    t = keras.layers.Conv2D(4, 3)(inp) * 2.0
    keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(t))).save(f"{out}/ops.keras")
    marker = f"{out}/MARKER"
    evil = keras.layers.Lambda(eval(f"lambda t: (open({marker!r}, 'w').close(), t)[1]"), output_shape=(3,))
    keras.Model(inp, evil(m(inp))).save(f"{out}/lambda.keras")
    if os.path.exists(marker):
        os.remove(marker)

    @keras.saving.register_keras_serializable(package="mine")
    class Scale(keras.layers.Layer):  # exists in this process only
        def call(self, t):
            return t * 2.0

    c = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(Scale()(inp))))
    c.save(f"{out}/custom.keras")
    c.save(f"{out}/custom.h5")
    for name in ("garbage.keras", "garbage.h5"):
        open(f"{out}/{name}", "wb").write(rng.bytes(4096))

    # segmentation: 3 classes per pixel (a bright square of class 1 or 2 on a dark background)
    xs = (rng.random((96, 3, 16, 16)) * 0.3).astype(np.float32)
    ys = np.zeros((96, 16, 16), np.uint8)
    for i in range(96):
        k, (r, q) = 1 + i % 2, rng.integers(0, 8, 2)
        xs[i, :, r:r + 8, q:q + 8] += 0.3 * k
        ys[i, r:r + 8, q:q + 8] = k
    np.savez(f"{out}/seg.npz", x_train=xs[:64], y_train=ys[:64], x_test=xs[64:], y_test=ys[64:])
    s_in = keras.Input((16, 16, 3))
    conv1, conv2 = keras.layers.Conv2D(4, 3, padding="same", activation="relu"), keras.layers.Conv2D(3, 1)
    seg = keras.Model(s_in, conv2(conv1(s_in)))  # (16, 16, 3): class scores, channels last
    k1 = (0.01 * rng.standard_normal((3, 3, 3, 4))).astype(np.float32)
    k1[..., 0] = 0.0
    k1[1, 1, :, 0] = 1 / 3  # channel 0: the pixel's brightness
    k2 = np.zeros((1, 1, 4, 3), np.float32)
    k2[0, 0, 0] = [0.0, 10.0, 20.0]  # class 1 above 0.3, class 2 above 0.6
    conv1.set_weights([k1, np.zeros(4, np.float32)])
    conv2.set_weights([k2, np.array([0.0, -3.0, -9.0], np.float32)])
    seg.save(f"{out}/seg.keras")
    # image to image: (8, 8, 1) -> (16, 16, 1), the upsampled input plus a small residual
    hr = np.repeat(np.repeat(rng.random((96, 1, 8, 8)), 2, 2), 2, 3).astype(np.float32)
    hr += 0.05 * rng.random(hr.shape).astype(np.float32)
    lr = hr.reshape(96, 1, 8, 2, 8, 2).mean((3, 5))
    np.savez(f"{out}/sr.npz", x_train=lr[:64], y_train=hr[:64], x_test=lr[64:], y_test=hr[64:])
    r_in = keras.Input((8, 8, 1))
    up = keras.layers.UpSampling2D(2)(r_in)
    res = keras.layers.Conv2D(1, 3, padding="same", activation="tanh")(keras.layers.Conv2D(4, 3, padding="same")(up))
    keras.Model(r_in, keras.layers.Add()([up, keras.layers.Rescaling(0.05)(res)])).save(f"{out}/sr.keras")
''')


@pytest.fixture(scope="module")
def kq(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras_qat_files")
    proc = subprocess.run([PYTHON, "-c", MAKE, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _by_file(runs):
    return {(r.data.params["model.path"].rstrip("/").rsplit("/", 1)[-1], r.data.tags["quant"],
             r.data.tags["backend"]): r for r in runs}


def test_keras_qat_on_tflite_and_what_it_cannot_take(kq, tmp_path):
    """quant=qat on .keras and .h5 (Keras 3 files): full-integer int8 after tfmot fine-tuning, int8 model
    I/O with backend.int8_io; unsupported with the reason for a SavedModel, a BatchNormalization tfmot
    has no QAT for, a keras.ops operation; a Lambda still refused in safe mode (its code never runs);
    unlabelled data refused by quant=qat's label check."""
    data = ["data=npz", f"data.path={kq}/cls.npz"]
    paths = ",".join(str(kq / n) for n in ("qat.keras", "qat.h5", "qat_savedmodel", "bn.keras", "ops.keras",
                                           "lambda.keras"))
    run_bsb(["-m", "model=keras", f"model.path={paths}", *data, "quant=qat", "backend=tflite", "quant.epochs=2",
             *QUICK], tmp_path, sweep="qat", failed=True)
    assert not (kq / "MARKER").exists()  # the Lambda's code never ran
    run_bsb(["model=keras", f"model.path={kq}/qat.h5", *data, "quant=qat", "backend=tflite", "backend.int8_io=true",
             "quant.granularity=per_tensor", *QUICK], tmp_path)
    run_bsb(["model=keras", f"model.path={kq}/qat.keras", "data=npz", f"data.path={kq}/cls_x.npz", "quant=qat",
             "backend=tflite", *QUICK], tmp_path, sweep="unlabelled", failed=True)
    client, runs = runs_of(tmp_path)
    unlabelled = [r for r in runs if r.data.params["data.path"].endswith("cls_x.npz")]
    assert len(unlabelled) == 1 and unlabelled[0].data.tags["status"] == "failed"
    assert "has no labels, and quant=qat fine-tunes on labelled training samples" in unlabelled[0].data.tags["reason"]
    int8_io = [r for r in runs if r.data.params.get("backend.int8_io") == "True"]
    assert len(int8_io) == 1 and int8_io[0].data.tags["status"] == "ok", int8_io[0].data.tags.get("reason")
    assert int8_io[0].data.tags["input_dtype"] == "int8" and int8_io[0].data.tags["build.granularity"] == "per_tensor"
    by = {k[0]: r for k, r in _by_file(r for r in runs if r not in int8_io and r not in unlabelled).items()}
    assert len(by) == 6
    for name in ("qat.keras", "qat.h5"):
        t, m = by[name].data.tags, by[name].data.metrics
        assert t["status"] == "ok", (name, t.get("reason"))
        assert "tfmot QAT" in t["build.converter"] and t["build.float_ops"] == "none"  # full integer
        assert "CONV_2D" in t["build.ops"] and "FULLY_CONNECTED" in t["build.ops"] and t["input_dtype"] == "float32"
        assert float(t["build.qat_rebuild_max_rel_diff"]) < 1e-4
        assert m["size_ratio"] < 0.4 and m["fp32_accuracy"] > 0.8 and m["accuracy"] >= m["fp32_accuracy"] - 0.1
        assert len(client.get_metric_history(by[name].info.run_id, mlflow_key("qat_loss"))) == 2  # quant.epochs
    reasons = {k: r.data.tags.get("reason", "") for k, r in by.items()}
    status = {k: r.data.tags["status"] for k, r in by.items()}
    assert status["qat_savedmodel"] == "unsupported" and "holds a TensorFlow graph, not Keras layers" in \
        reasons["qat_savedmodel"]
    assert status["bn.keras"] == "unsupported" and "no QAT for layer" in reasons["bn.keras"] \
        and "(BatchNormalization)" in reasons["bn.keras"]
    assert status["ops.keras"] == "unsupported" and "keras.ops.numpy.Multiply" in reasons["ops.keras"]
    assert status["lambda.keras"] == "failed" and "model.allow_unsafe=true" in reasons["lambda.keras"]
    assert all("\n" not in r for r in reasons.values())


def test_keras_files_keras_cannot_load_are_refused_in_one_line_before_any_work(kq, tmp_path):
    """A custom layer class (registered where the file was built, absent here) in a .keras and an .h5
    file, and garbage bytes named .keras / .h5: one line naming the file and what is wrong, on both
    backends, before the converter starts."""
    paths = ",".join(str(kq / n) for n in ("custom.keras", "custom.h5", "garbage.keras", "garbage.h5"))
    proc = run_bsb(["-m", "model=keras", f"model.path={paths}", "data=npz", f"data.path={kq}/cls.npz", "quant=fp32",
                    "backend=onnxruntime,tflite", *(a for a in QUICK if not a.startswith("quant."))], tmp_path,
                   sweep="bad", failed=True)
    _, runs = runs_of(tmp_path)
    assert len(runs) == 8
    for r in runs:
        t, name = r.data.tags, r.data.params["model.path"].rsplit("/", 1)[-1]
        reason = t["reason"]
        assert t["status"] == "failed" and "\n" not in reason and f"model.path='{kq / name}'" in reason, reason
        assert "stage_data_seconds" not in r.data.metrics  # refused before the data and the converter
        if name.startswith("custom"):
            assert "custom class 'Scale' (registered as 'mine>Scale')" in reason and "SavedModel" in reason, reason
        elif name.endswith(".keras"):
            assert "is not a Keras file" in reason and "not a zip archive" in reason, reason
        else:
            assert "is not an HDF5 file" in reason, reason
    assert "Traceback" not in proc.stdout


def test_the_converters_errors_are_one_line():
    """Keras' own messages (a file loaded where a custom class is absent), as the converter reports
    them when the early check does not catch them (a class nested in another object's config)."""
    from bsb_hydra.backends.tflite.keras_convert import one_line

    keras3 = TypeError("<class 'keras.src.models.functional.Functional'> could not be deserialized properly.\n\n"
                       "Exception encountered: Could not locate class 'Scale'. Make sure custom classes and "
                       "functions are decorated with `@keras.saving.register_keras_serializable()`.")
    h5 = ValueError("Unknown layer: 'mine>Scale'. Please ensure you are using a `keras.utils.custom_object_scope`")
    assert one_line(keras3).startswith("it holds the custom class 'Scale', whose Python code is not in the file")
    assert "'Scale' (registered as 'mine>Scale')" in one_line(h5)
    assert one_line(OSError("Unable to open\nfile")) == "OSError: Unable to open file"


def _task_runs(kq, tmp_path, name, extra=()):
    """fp32 on both backends (the layout), static on both (the task scored against fp32)."""
    run_bsb(["-m", "model=keras", f"model.path={kq}/{name}.keras", "data=npz", f"data.path={kq}/{name}.npz",
             "quant=fp32,static", "backend=onnxruntime,tflite", *extra, *QUICK], tmp_path, sweep=name)
    _, runs = runs_of(tmp_path)
    return {(r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}


def _nchw_export(tmp_path, shape):
    import onnx

    (path,) = (tmp_path / "cache" / "keras").glob("*.onnx")
    out = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value or "N" for d in out] == ["N", *shape]  # NCHW, as the tflite runner reads it


def test_keras_segmentation_model_reads_the_same_on_both_backends(kq, tmp_path):
    """(16, 16, 3) class scores out of Keras: [N, 3, 16, 16] on both runtimes (the ONNX export's outputs
    transposed in the graph, the tflite runner's by the runner), so the fp32 mIoU is the same number."""
    runs = _task_runs(kq, tmp_path, "seg")
    for key, r in runs.items():
        t = r.data.tags
        assert t["status"] == "ok", (key, t.get("reason"))
        assert t["task"] == "segmentation" and "float32[N, 3, 16, 16]" in t["outputs"], t["outputs"]
    fp32 = {b: runs[("fp32", b)].data.metrics for b in ("onnxruntime", "tflite")}
    assert fp32["onnxruntime"]["miou"] == pytest.approx(fp32["tflite"]["miou"], abs=1e-6)
    assert fp32["onnxruntime"]["miou"] > 0.6  # a layout mix-up reads noise
    for b in ("onnxruntime", "tflite"):
        assert runs[("static", b)].data.metrics["miou_vs_fp32"] > 0.9
    _nchw_export(tmp_path, [3, 16, 16])


def test_keras_image_to_image_model_reads_the_same_on_both_backends(kq, tmp_path):
    runs = _task_runs(kq, tmp_path, "sr", ["task=image_to_image"])
    for key, r in runs.items():
        t = r.data.tags
        assert t["status"] == "ok" and t["task"] == "image_to_image", (key, t.get("reason"))
        assert "float32[N, 1, 16, 16]" in t["outputs"], t["outputs"]
    fp32 = {b: runs[("fp32", b)].data.metrics for b in ("onnxruntime", "tflite")}
    assert fp32["onnxruntime"]["psnr"] == pytest.approx(fp32["tflite"]["psnr"], abs=1e-3)
    assert fp32["onnxruntime"]["psnr"] > 20  # the upsampled input: a layout mix-up would not be
    for b in ("onnxruntime", "tflite"):
        assert runs[("static", b)].data.metrics["psnr_vs_fp32"] > 20
    _nchw_export(tmp_path, [1, 16, 16])
