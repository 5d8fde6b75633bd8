"""The TFLite (LiteRT) backend and QAT: a real smoke multirun over the TFLite cells plus one QAT
cell per other backend, and the Keras twin's weight transfer on a 3-channel input."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bsb_hydra.metric_names import mlflow_key
from tests.conftest import ROOT, SMOKE, run_bsb, runs_of

pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")

GRID = ["-m", "model=mlp,cnn", "quant=fp32,dynamic,static,qat", "backend=tflite"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tflite")
    proc = run_bsb([*GRID, *SMOKE], tmp, timeout=1800)
    # one QAT cell on each other backend, into the same store (the fp32 model comes from the cache)
    proc2 = run_bsb(["-m", "model=cnn", "quant=qat", "backend=pytorch,onnxruntime", *SMOKE], tmp,
                    timeout=1800)
    client, runs = runs_of(tmp)
    return tmp, proc.stdout + proc2.stdout, client, runs


def cells_of(runs):
    return {(r.data.tags["model"], r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}


def test_every_cell_ok(sweep):
    _, out, _, runs = sweep
    cells = cells_of(runs)
    assert len(runs) == 10 and len(cells) == 10, sorted(cells)
    for key, r in cells.items():
        assert r.data.tags["status"] == "ok", (key, r.data.tags.get("reason"), out[-3000:])


def test_static_int8_tflite_at_most_30_percent(sweep):
    cells = cells_of(sweep[3])
    for model in ("mlp", "cnn"):
        for quant in ("static", "qat"):
            r = cells[(model, quant, "tflite")]
            fp32 = cells[(model, "fp32", "tflite")].data.metrics["size_bytes"]
            assert r.data.metrics["size_bytes"] <= 0.30 * fp32, (model, quant)
            assert r.data.tags["build.float_ops"] == "none", r.data.tags["build.ops"]


def test_fp32_tflite_agrees_with_pytorch(sweep):
    tmp, _, client, runs = sweep
    cells = cells_of(runs)
    for model in ("mlp", "cnn"):
        m = cells[(model, "fp32", "tflite")].data.metrics
        assert m["fp32_vs_pytorch_agreement"] >= 0.999, model
        assert m["fp32_vs_pytorch_max_abs_logit_diff"] < 1e-3, model
        # and against the predictions the pytorch backend logged (through MLflow) for the same weights
        for r in runs:
            if r.data.tags["backend"] == "onnxruntime":
                assert r.data.metrics["fp32_vs_pytorch_agreement"] >= 0.999


def test_representative_dataset_is_training_samples(sweep):
    """The converter's representative dataset is exactly x_train[indices] of the logged indices."""
    tmp, _, client, runs = sweep
    from bsb_hydra.config import DataConfig
    from bsb_hydra.data import load_dataset

    ds = load_dataset(DataConfig(name="fashion_mnist", limit_test=1000), seed=0)
    r = cells_of(runs)[("cnn", "static", "tflite")]
    path = client.download_artifacts(r.info.run_id, "calibration_indices.json", str(tmp / "dl-calib"))
    logged = json.loads(open(path).read())
    assert logged["split"] == "train" and len(logged["indices"]) == 256
    samples = np.ascontiguousarray(ds.x_train[np.asarray(logged["indices"])], dtype=np.float32)
    assert hashlib.sha256(samples.tobytes()).hexdigest() == r.data.tags["build.calibration_sha256"]
    # not test samples: none of them equals a test image
    test_hashes = {hashlib.sha1(x.tobytes()).digest() for x in ds.x_test}
    assert not any(hashlib.sha1(x.tobytes()).digest() in test_hashes for x in samples[:64])


def test_qat_cells_log_loss_curve_and_are_int8(sweep):
    _, _, client, runs = sweep
    cells = cells_of(runs)
    for backend in ("pytorch", "onnxruntime", "tflite"):
        r = cells[("cnn", "qat", backend)]
        history = client.get_metric_history(r.info.run_id, mlflow_key("qat_loss"))
        assert len(history) == 1 and np.isfinite(history[0].value), backend
        m = r.data.metrics
        if backend == "pytorch":  # a PT2E package: its int8 constants, beside ~0.3 MB of compiled code
            assert m["aoti_constants_bytes"] / m["fp32_size_bytes"] <= 0.30, m
        else:
            assert m["size_ratio"] <= 0.30, backend
        assert r.data.tags["build.qat_method"]


def test_onnxruntime_qat_keeps_the_learned_ranges(sweep):
    """Both QAT cells fine-tune the same cached model with the same seed; the ORT one is exported as
    QDQ with the learned scales. Its predictions track torch's convert_fx model, and its graph holds
    int8 weights (no QuantizeLinear on a float weight left to run)."""
    tmp, _, client, runs = sweep
    cells = cells_of(runs)
    preds = {}
    for backend in ("pytorch", "onnxruntime"):
        r = cells[("cnn", "qat", backend)]
        path = client.download_artifacts(r.info.run_id, "predictions.npy", str(tmp / f"dl-qat-{backend}"))
        preds[backend] = np.load(path)
    assert (preds["pytorch"] == preds["onnxruntime"]).mean() >= 0.95
    ops = dict(kv.split(":") for kv in cells[("cnn", "qat", "onnxruntime")].data.tags["build.ops"].split(","))
    assert int(ops["QuantizeLinear"]) < int(ops["DequantizeLinear"])  # weights enter through DQ only


def test_tflite_worker_imports_only_litert(sweep):
    for r in sweep[3]:
        if r.data.tags["backend"] == "tflite":
            assert r.data.tags["worker_imports"] == "ai_edge_litert", r.data.tags["worker_imports"]


def test_twin_weight_transfer_on_three_channel_input(tmp_path):
    """Keras twins of randomly initialised models (non-trivial batch-norm statistics) on a 3x32x32
    input, where torch's (C,H,W) flatten order differs from Keras' (H,W,C): fp32 TFLite == torch."""
    import torch

    from bsb_hydra.models.cnn import CnnConfig
    from bsb_hydra.models.mlp import MlpConfig
    from bsb_hydra.models.mobilenet import MobilenetConfig
    from bsb_hydra.models import build_model

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32)
    for cfg in (MlpConfig(hidden=[32]), CnnConfig(channels=[8, 16], fc=32), MobilenetConfig(width_mult=0.25)):
        model = build_model(cfg, (3, 32, 32), 10)
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.uniform_(0.5, 1.5)
                mod.bias.data.uniform_(-0.2, 0.2)
        model.eval()
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        work = tmp_path / cfg.name
        work.mkdir()
        np.savez(work / "w.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
        req = {"model": cfg.name, "model_cfg": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
               "input_shape": [3, 32, 32], "num_classes": 10, "weights": str(work / "w.npz"),
               "quant": {"scheme": "fp32"}, "int8_io": False, "seed": 0,
               "outputs": [{"scheme": "fp32", "out": str(work / "m.tflite"), "info_out": str(work / "info.json")}]}
        (work / "req.json").write_text(json.dumps(req))
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        subprocess.run([sys.executable, "-m", "bsb_hydra.backends.tflite.tflite_convert", str(work / "req.json")],
                       cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
        from bsb_hydra.backends.tflite.runner import TfliteRunner

        runner = TfliteRunner(str(work / "m.tflite"), 1, "float32", {"xnnpack": True})
        got = runner.to_numpy(runner.run(runner.prepare(x)))
        assert np.abs(got - expected).max() < 1e-4, (cfg.name, np.abs(got - expected).max())
        # backend.xnnpack_latest_features: the same delegate with its flag-protected features on
        latest = TfliteRunner(str(work / "m.tflite"), 1, "float32", {"xnnpack": True, "xnnpack_latest_features": True})
        assert np.abs(latest.to_numpy(latest.run(latest.prepare(x))) - expected).max() < 1e-4, cfg.name


def test_int8_io_and_per_tensor_static_cell(tmp_path):
    """Full-integer model I/O (the worker quantizes inputs with the model's scale before the clock)
    and the converter's per-tensor switch, in one cell."""
    run_bsb(["model=mlp", "quant=static", "quant.granularity=per_tensor", "backend=tflite", "backend.int8_io=true",
             *SMOKE], tmp_path)
    _, runs = runs_of(tmp_path)
    (r,) = runs
    assert r.data.tags["status"] == "ok", r.data.tags.get("reason")
    assert r.data.tags["input_dtype"] == "int8" and r.data.tags["build.io_dtype"] == "int8"
    assert r.data.tags["build.granularity"].startswith("per_tensor")
    assert "DEQUANTIZE" not in r.data.tags["build.ops"] and r.data.tags["build.float_ops"] == "none"
    m = r.data.metrics
    assert m["top1_agreement"] >= 0.95 and m["size_ratio"] <= 0.30


def test_report_pairs_qat_with_static_ptq_per_sample(sweep):
    """Issue 3's QAT-vs-PTQ comparison, on the real runs: the report pairs each tflite QAT cell with
    the static cell of the same model from their logged per-sample results, and its counts add up
    to the two cells' own accuracies."""
    from types import SimpleNamespace

    from bsb_hydra.report.build import build_report

    tmp, _, client, runs = sweep
    cells = cells_of(runs)
    rep = build_report(SimpleNamespace(tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="bsb-hydra", arch=None,
                                       budget_pp=1.0, out=str(tmp / "report"), tag_runs=False, log_run=False))
    by = {(p.cell.model, p.cell.backend): p for p in rep.pairs}
    assert sorted(by) == [("cnn", "tflite"), ("mlp", "tflite")]  # the other QAT cells have no static beside them
    for model in ("mlp", "cnn"):
        p = by[(model, "tflite")]
        q, s = cells[(model, "qat", "tflite")].data.metrics, cells[(model, "static", "tflite")].data.metrics
        assert p.base.run_id == cells[(model, "static", "tflite")].info.run_id and p.paired is not None, p.verdict
        n = p.paired["n"]
        assert n == q["test_samples"]
        assert (p.paired["gained"] - p.paired["lost"]) / n == pytest.approx(q["accuracy"] - s["accuracy"])
        assert p.verdict in ("no significant difference", "qat more accurate (p < 0.05)",
                             "static more accurate (p < 0.05)")
    assert (tmp / "report" / "comparisons.csv").is_file()


def test_an_xnnpack_refusal_says_how_to_measure_the_model_anyway():
    """The unrolled full-integer LSTM at seq_len 64 is refused by XNNPACK at its first invoke: the
    cell's reason then names backend.xnnpack=false. Other runtime errors pass unchanged."""
    import numpy as np

    from bsb_hydra.backends import BACKENDS

    RUNNER = BACKENDS.runner("tflite")

    class Interpreter:
        def __init__(self, message):
            self.message = message

        def set_tensor(self, index, value):
            pass

        def invoke(self):
            raise RuntimeError(self.message)

    runner = RUNNER.__new__(RUNNER)
    runner.inps, runner.outps = [{"index": 0}], [{"index": 1}]
    runner.interpreter = Interpreter("Node number 906 (TfLiteXNNPackDelegate) failed to prepare.")
    with pytest.raises(RuntimeError, match=r"failed to prepare\. XNNPACK could not run this model; "
                                           r"backend\.xnnpack=false measures it"):
        runner.run([np.zeros(1)])
    runner.interpreter = Interpreter("tensor shape mismatch")
    with pytest.raises(RuntimeError, match=r"^tensor shape mismatch$"):
        runner.run([np.zeros(1)])
