"""backend=openvino (bsb_hydra/backends/openvino/): a real sweep beside onnxruntime (fp32, fp16, static
on the cnn), a user's ONNX file (fp32, static, int4 weight-only), a Keras model (fp32, static),
quant=auto (NNCF's accuracy control) on a model with one fragile layer, the runner and its PERF_COUNT
profile in-process on a logged IR, and the reasons of what it does not run."""
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMOKE, model_files, model_folder, run_bsb, runs_of

pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytest.importorskip("nncf", reason="the openvino extra is not installed")

CALIBRATION = "quant.samples=64"  # the cell's calibration samples: real training samples, fewer for speed


def _config(compose_cfg, overrides):
    from bsb_hydra.config import validate

    cfg = compose_cfg(list(overrides))
    cfg.paths.root = "/tmp/project"  # paths.root interpolates hydra:runtime.cwd, absent outside a Hydra run
    return validate(cfg)


def _cells(runs):
    return {(r.data.tags["model"], r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}


@pytest.fixture(scope="module")
def ov_sweep(tmp_path_factory):
    """model=cnn x fp32,fp16,static x openvino,onnxruntime, smoke-trained, on fashion_mnist."""
    tmp = tmp_path_factory.mktemp("ov_sweep")
    run_bsb(["-m", "model=cnn", "quant=fp32,fp16,static", "backend=openvino,onnxruntime", CALIBRATION, *SMOKE], tmp)
    client, runs = runs_of(tmp)
    return tmp, client, _cells(runs)


def test_every_cell_ok_and_the_ir_is_measured_whole(ov_sweep):
    _, client, cells = ov_sweep
    assert len(cells) == 6
    for key, r in cells.items():
        assert r.data.tags["status"] == "ok", (key, r.data.tags.get("reason"))
    for quant in ("fp32", "fp16", "static"):
        r = cells[("cnn", quant, "openvino")]
        files = model_files(client, r)  # the measured files, in the cell's LoggedModel
        assert set(files) == {f"{quant}.xml", f"{quant}.bin"}, files
        assert r.data.metrics["size_bytes"] == files[f"{quant}.xml"] + files[f"{quant}.bin"]  # xml + bin
        t = r.data.tags
        # the worker imported OpenVINO, and nothing of the build side (torch, onnx, onnxruntime, nncf)
        assert t["worker_imports"] == "openvino", t["worker_imports"]
        assert "openvino_version" in {k.removeprefix("build.") for k in t}


def test_static_is_int8_and_small(ov_sweep):
    _, _, cells = ov_sweep
    s, f = cells[("cnn", "static", "openvino")], cells[("cnn", "fp32", "openvino")]
    m, t = s.data.metrics, s.data.tags
    assert m["size_ratio"] < 0.4 and m["size_bytes"] < 0.4 * f.data.metrics["size_bytes"]
    assert "i8:" in t["build.weight_dtypes"] and "FakeQuantize" in t["build.ops"]
    assert t["build.activation_ranges"] == "minmax" and t["build.calibration_items"] == "64"
    assert m["top1_agreement"] > 0.9 and m["accuracy"] > f.data.metrics["accuracy"] - 0.05
    half = cells[("cnn", "fp16", "openvino")].data
    assert 0.45 < half.metrics["size_ratio"] < 0.6 and half.metrics["top1_agreement"] >= 0.99
    assert "f16:" in half.tags["build.weight_dtypes"]


def test_fp32_openvino_agrees_with_fp32_onnxruntime(ov_sweep, tmp_path):
    _, client, cells = ov_sweep
    ov, ort = cells[("cnn", "fp32", "openvino")], cells[("cnn", "fp32", "onnxruntime")]
    assert abs(ov.data.metrics["accuracy"] - ort.data.metrics["accuracy"]) <= 0.002
    preds = [np.load(client.download_artifacts(r.info.run_id, "predictions.npy", str(tmp_path / r.info.run_id)))
             for r in (ov, ort)]
    assert preds[0].shape == preds[1].shape and (preds[0] == preds[1]).mean() >= 0.998


def test_runner_and_perf_count_profile_on_the_logged_ir(ov_sweep, tmp_path):
    """The logged static IR, in this process: static shapes compiled per batch size before the clock,
    every output, and the CPU plugin's counters naming int8 kernels."""
    from bsb_hydra.backends import BACKENDS

    RUNNER = BACKENDS.runner("openvino")

    _, client, cells = ov_sweep
    folder = model_folder(client, cells[("cnn", "static", "openvino")], tmp_path)
    runner = RUNNER(str(folder / "static.xml"), 1, "float32", {"shapes": "static"})
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    b8 = runner.outputs(runner.run(runner.prepare(x)))
    b1 = runner.outputs(runner.run(runner.prepare(x[:1])))
    assert runner.output_names() == ["logits"] and b8[0].shape == (8, 10) and b1[0].shape == (1, 10)
    np.testing.assert_allclose(b1[0][0], b8[0][0], atol=0.1)
    prof = runner.profile(runner.prepare(x[:1]), 3)
    assert prof["runtime"] == "openvino" and prof["runs"] == 3 and prof["ops"]
    assert any(r["op"].startswith("Convolution[") and r["input_dtype"] in ("i8", "u8") for r in prof["ops"]), prof
    assert abs(sum(r["share"] for r in prof["ops"]) - 1.0) < 1e-6


def test_a_user_onnx_file_through_openvino(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(16 * 14 * 14, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    path = tmp_path / "user.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["pixels"], output_names=["scores"],
                      dynamic_axes={"pixels": {0: "n"}}, dynamo=False, opset_version=17)
    run_bsb(["-m", "model=onnx", f"model.path={path}", "quant=fp32,static,int4_weight_only,dynamic", "backend=openvino",
             CALIBRATION, "data.limit_test=200", *[a for a in SMOKE if not a.startswith("data.limit_test")]],
            tmp_path)
    cells = _cells(runs_of(tmp_path)[1])
    assert len(cells) == 4
    for key, r in cells.items():
        assert r.data.tags["status"] == "ok", (key, r.data.tags.get("reason"))
        assert r.data.tags["output_names"] == "scores"
    s = cells[("user", "static", "openvino")].data
    assert s.metrics["size_ratio"] < 0.4 and s.metrics["top1_agreement"] > 0.5  # a random-init net
    w = cells[("user", "int4_weight_only", "openvino")].data
    assert "u4:" in w.tags["build.weight_dtypes"] and w.metrics["size_ratio"] < 0.4
    assert w.metrics["top1_agreement"] > 0.8
    d = cells[("user", "dynamic", "openvino")].data  # int8 weights, int8 activations at run time (group 32)
    assert "u8:" in d.tags["build.weight_dtypes"] and "DYNAMIC_QUANTIZATION_GROUP_SIZE=32" in d.tags["build.method"]
    assert d.tags["build.weight_granularity"].startswith("per_channel (quant.granularity=per_tensor")
    assert d.metrics["size_ratio"] < 0.4 and d.metrics["top1_agreement"] > 0.8


@pytest.mark.parametrize("overrides,words", [
    (["quant=dynamic", "backend.dynamic_quantization_group_size=0"], ["turns the CPU plugin's"]),
    (["quant=qat"], ["NNCF's PyTorch QAT"]),
    (["quant=auto", "quant.fallback=fp16"], ["compress_to_fp16", "(valid here: fp32)"]),
    (["quant=auto", "quant.method=entropy"], ["min/max"]),
    (["quant=static", "quant.analyze=true"], ["quant.analyze=true on openvino", "quantize_with_accuracy_control"]),
    (["quant=fake_quant"], ["backend=pytorch"]),
    (["quant=static", "quant.method=entropy"], ["min/max"]),
    (["quant=int4_weight_only", "quant.bits=2"], ["4 and 8 bits"]),
    (["quant=int4_weight_only", "quant.accuracy_level=4"], ["dynamic_quantization_group_size"]),
])
def test_what_openvino_does_not_run_says_why(compose_cfg, overrides, words):
    from bsb_hydra.backends import get_backend

    cfg = _config(compose_cfg, ["model=cnn", "backend=openvino", *overrides])
    reason = get_backend("openvino").unsupported_reason(cfg)
    assert reason and all(w in reason for w in words), reason


# ------------------------------------------------------------------- model=keras, model=tflite

@pytest.fixture(scope="module")
def keras_cnn(tmp_path_factory):
    """tests/test_keras.py's small Keras CNN (.keras) and its labelled npz, built in a fresh process."""
    import subprocess

    from tests.conftest import PYTHON
    from tests.test_keras import MAKE

    out = tmp_path_factory.mktemp("ov_keras")
    proc = subprocess.run([PYTHON, "-c", MAKE, str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_keras_model_through_openvino_is_the_export_onnxruntime_measures(keras_cnn, tmp_path):
    """model=keras on openvino converts the same tf2onnx export onnxruntime measures: the same fp32
    predictions, and NNCF's static int8 of it."""
    from tests.test_keras import QUICK

    run_bsb(["-m", "model=keras", f"model.path={keras_cnn}/cnn.keras", "data=npz",
             f"data.path={keras_cnn}/labelled.npz", "quant=fp32,static", "backend=openvino,onnxruntime", *QUICK],
            tmp_path)
    client, runs = runs_of(tmp_path)
    cells = {(r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}
    assert len(cells) == 4
    for key, r in cells.items():
        assert r.data.tags["status"] == "ok", (key, r.data.tags.get("reason"))
        assert r.data.tags["model_source"] == "keras" and r.data.tags["task"] == "classification"
    ov, ort = cells[("fp32", "openvino")], cells[("fp32", "onnxruntime")]
    assert ov.data.tags["fp32_weights_sha256"] == ort.data.tags["fp32_weights_sha256"]
    preds = [np.load(client.download_artifacts(r.info.run_id, "predictions.npy", str(tmp_path / r.info.run_id)))
             for r in (ov, ort)]
    assert (preds[0] == preds[1]).all()
    s = cells[("static", "openvino")].data
    assert "i8:" in s.tags["build.weight_dtypes"] and s.metrics["size_ratio"] < 0.33  # the dense layers' weights
    assert s.metrics["top1_agreement"] >= 0.9


def test_an_already_quantized_tflite_file_stays_on_tflite_and_onnxruntime(monkeypatch):
    """A quantized .tflite is measured as it is: openvino has no such file (it would quantize again)."""
    from bsb_hydra.models.tflite import FileFacts, TfliteModelConfig

    monkeypatch.setattr(TfliteModelConfig, "facts",
                        lambda self: FileFacts(str(self.path), "0" * 64, "int8", [], [], {}))
    cfg = TfliteModelConfig(path="/models/int8.tflite")
    reason = cfg.scheme_reason("openvino", "static")
    assert "int8.tflite is full-integer int8, already quantized" in reason and "backend=openvino" in reason
    assert cfg.scheme_reason("tflite", "static") is None and cfg.scheme_reason("onnxruntime", "static") is None


# ------------------------------------------------------------------------------- quant=auto

DIGITS = ["data=digits", *(o if not o.startswith("benchmark.batch_sizes=") else "benchmark.batch_sizes=[1]"
                           for o in SMOKE)]


@pytest.fixture(scope="module")
def fragile_mlp(tmp_path_factory):
    """The smoke-trained digits mlp (trained by an fp32 openvino cell) with an outlier in its first
    layer's weights on input pixel 0, which is 0 in every digits image: the fp32 function is
    unchanged, but each row's int8 scale spans the outlier and the row's other weights round to zero
    (tests/test_mixed.py's fragile checkpoint)."""
    import torch

    tmp = tmp_path_factory.mktemp("ov_fragile")
    run_bsb(["model=mlp", "quant=fp32", "backend=openvino", *DIGITS], tmp)
    (cached,) = (tmp / "cache" / "models").glob("mlp-*.pt")
    sd = torch.load(cached, weights_only=True)
    sd["1.weight"][:, 0] = 1000.0 * sd["1.weight"].abs().max()
    path = tmp / "fragile.pt"
    torch.save(sd, path)
    return path


def test_auto_is_nncf_accuracy_control_and_keeps_the_fragile_layer_float(fragile_mlp, tmp_path):
    """Full int8 loses far more than the 2 pp budget on the selection subset: NNCF must revert, and
    the one layer it reverts is the fragile one; what it did is logged. With a 0 pp budget it
    reverts every layer, and the cell is that float model, ok."""
    run_bsb(["-m", "model=mlp", f"model.checkpoint={fragile_mlp}", "quant=auto", "backend=openvino",
             "quant.budget_pp=2.0,0.0", *DIGITS], tmp_path)
    client, runs = runs_of(tmp_path)
    by = {float(r.data.params["quant.budget_pp"]): r for r in runs}
    t, m = by[0.0].data.tags, by[0.0].data.metrics
    assert t["status"] == "ok", t.get("reason")
    assert m["auto_float_layers"] == m["auto_layers"] == 3 and "FakeQuantize" not in t["build.ops"]
    assert t["build.weight_dtypes"] == "f32:6" and m["auto_selection_accuracy"] == m["auto_selection_fp32_accuracy"]
    run = by[2.0]
    t, m = run.data.tags, run.data.metrics
    assert t["status"] == "ok", t.get("reason")
    assert t["build.method"].startswith("nncf.quantize_with_accuracy_control")
    assert t["build.auto.nncf_max_drop"] == "0.02 (absolute)" and t["build.auto.max_num_iterations"] == "8"
    assert t["build.auto.float_layers"] == "/1/Gemm/WithoutBiases" and t["build.auto.budget_met"] == "true"
    assert m["auto_layers"] == 3 and m["auto_float_layers"] == 1 and m["auto_budget_drop_pp"] == 2.0
    assert m["auto_selection_int8_accuracy"] < m["auto_selection_fp32_accuracy"] - 0.1
    assert m["auto_selection_fp32_accuracy"] - m["auto_selection_accuracy"] <= 0.02
    assert m["auto_budget_met"] == 1.0 and m["auto_budget_met_test"] == 1.0 and m["accuracy_delta_pp"] >= -2.0
    assert "i8:2" in t["build.weight_dtypes"] and m["size_ratio"] < 0.9  # the two other layers are int8
    files = {a.path for a in client.list_artifacts(run.info.run_id, "analysis")}
    assert files == {"analysis/auto_openvino.json", "analysis/nncf_accuracy_control.log"}
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "analysis/auto_openvino.json",
                                                       str(tmp_path))).read_text())
    assert report["float_layers"] == ["/1/Gemm/WithoutBiases"] and len(report["int8_layers"]) == 3
    assert report["drop_type"] == "absolute" and len(report["selection_indices"]) == m["auto_selection_samples"]
    log = Path(client.download_artifacts(run.info.run_id, "analysis/nncf_accuracy_control.log", str(tmp_path)))
    assert "/1/Gemm/WithoutBiases" in log.read_text()  # NNCF's own account names the same layer


@pytest.mark.parametrize("budget,fp32_accuracy,int8_accuracy", [
    ({"budget_pp": 1.0}, 0.90, 0.8901), ({"budget_pp": 1.0}, 0.90, 0.8899),
    ({"budget_rel": 0.02, "budget_pp": None}, 0.50, 0.4901), ({"budget_rel": 0.02, "budget_pp": None}, 0.50, 0.4899),
    ({"budget_pp": 0.0}, 0.90, 0.90)])
def test_auto_budget_means_the_same_to_nncf(budget, fp32_accuracy, int8_accuracy):
    """NNCF's max_drop / drop_type accept exactly the drops quant=auto's budget (budget_for) accepts."""
    from nncf.quantization.algorithms.accuracy_control.algorithm import calculate_accuracy_drop

    from bsb_hydra.backends.openvino.auto import nncf_budget
    from bsb_hydra.config import AutoQuantConfig

    q = AutoQuantConfig(**budget)
    max_drop, drop_type, _ = nncf_budget(q)
    ours = fp32_accuracy - int8_accuracy <= q.budget_for(fp32_accuracy) + 1e-12
    assert calculate_accuracy_drop(fp32_accuracy, int8_accuracy, max_drop, drop_type)[0] == ours


def test_a_missing_openvino_names_the_install_command(compose_cfg, monkeypatch):
    import importlib.util

    from bsb_hydra.backends import get_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("openvino", "nncf")
                        else real(name, *a))
    cfg = _config(compose_cfg, ["model=cnn", "backend=openvino", "quant=static"])
    reason = get_backend("openvino").unsupported_reason(cfg)
    assert "openvino, nncf" in reason and "pip install -c requirements/lock.txt -e '.[openvino]'" in reason


def test_the_schema_comes_from_the_package(compose_cfg):
    from bsb_hydra.backends.openvino.config import OpenvinoBackendConfig
    from bsb_hydra.config import ConfigError, schemas

    assert schemas("backend")["openvino"] is OpenvinoBackendConfig
    cfg = _config(compose_cfg, ["backend=openvino"])
    assert isinstance(cfg.backend, OpenvinoBackendConfig) and cfg.backend.shapes == "static"
    with pytest.raises(ConfigError, match="backend.shapes"):
        _config(compose_cfg, ["backend=openvino", "backend.shapes=ragged"])
