"""Why slow: the profiler parsers (bsb_hydra/bench/profile.py), each runtime's Runner.profile, and a
cell made slow on purpose (ONNX Runtime static int8 with graph optimisation off: every QDQ pair stays
unfused and every Conv runs in float between them)."""
import numpy as np
import pytest

from bsb_hydra.bench import peak
from bsb_hydra.backends import BACKENDS
from bsb_hydra.backends.onnxruntime.profile import ort_summary
from bsb_hydra.backends.pytorch.profile import torch_summary
from bsb_hydra.backends.tflite.profile import tflite_summary
from bsb_hydra.bench.profile import why_slow
from tests.conftest import SMOKE, run_bsb, runs_of

PROFILED = [a for a in SMOKE if not a.startswith("benchmark.profile=")]  # the default: benchmark.profile=slow


def _node(op, dtype, dur, name="n"):
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur,
            "args": {"op_name": op, "input_type_shape": [{dtype: [1, 8]}]}}


def test_ort_profile_is_summed_by_op_and_input_dtype():
    events = [{"cat": "Session", "name": "model_run", "dur": 900}]
    for _ in range(2):  # two runs
        events += [_node("QuantizeLinear", "float", 25), _node("DequantizeLinear", "uint8", 25),
                   _node("QuantizeLinear", "float", 25), _node("DequantizeLinear", "uint8", 25),
                   _node("Conv", "float", 300), _node("QLinearConv", "uint8", 100), _node("Relu", "float", 0),
                   {"cat": "Node", "name": "Conv_fence_before", "dur": 7, "args": {"op_name": "Conv"}}]
    s = ort_summary(events, runs=2)
    ops = {r["op"]: r for r in s["ops"]}
    assert s["ops"][0]["op"] == "Conv[float]" and ops["Conv[float]"]["ms_per_run"] == pytest.approx(0.3)
    assert ops["Conv[float]"]["share"] == pytest.approx(300 / 500) and ops["Conv[float]"]["calls_per_run"] == 1
    assert s["float_compute_ops"] == ["Conv[float]"]  # QLinearConv ran on uint8
    assert s["qdq_nodes"] == 4 and s["unfused_qdq"] == 2  # one pair at the float input and output is kept
    line = why_slow(s, ort_summary([_node("Conv", "float", 200)], runs=1))
    assert line.startswith("top ops Conv[float] 0.3 ms (60%)") and "vs fp32 0.2" in line
    assert "in float: Conv[float]" in line and "2 quantize/dequantize nodes per run not fused" in line
    # ORT's dynamic int8 MatMul takes the float activation and quantizes it inside: not a float op
    dyn = ort_summary([_node("DynamicQuantizeMatMul", "float", 50), _node("MatMul", "float", 20)], runs=1)
    assert dyn["float_compute_ops"] == ["MatMul[float]"]
    assert ops["QuantizeLinear[float]"]["calls_per_run"] == 2


def test_torch_profile_names_float_compute_only_in_a_quantized_model():
    rows = [{"name": "quantized::conv2d", "self_cpu_us": 400.0, "count": 4},
            {"name": "aten::linear", "self_cpu_us": 200.0, "count": 2},
            {"name": "aten::quantize_per_tensor", "self_cpu_us": 20.0, "count": 2},
            {"name": "aten::empty", "self_cpu_us": 0.0, "count": 9}]
    s = torch_summary(rows, runs=2, quantized=True)
    assert [r["op"] for r in s["ops"]] == ["quantized::conv2d", "aten::linear", "aten::quantize_per_tensor"]
    assert s["ops"][0]["ms_per_run"] == pytest.approx(0.2) and s["float_compute_ops"] == ["aten::linear"]
    assert s["unfused_qdq"] == 1
    assert torch_summary(rows, runs=2, quantized=False)["float_compute_ops"] == []


def test_tflite_nodes_xnnpack_did_not_take():
    f32, i8 = np.float32, np.int8
    ops = [{"index": 0, "op_name": "QUANTIZE", "inputs": [0], "outputs": [5], "operand_types": [f32]},
           {"index": 1, "op_name": "CONV_2D", "inputs": [5, 4, 3], "outputs": [6], "operand_types": [i8]},
           {"index": 2, "op_name": "SOFTMAX", "inputs": [6], "outputs": [7], "operand_types": [i8]},
           {"index": 3, "op_name": "FULLY_CONNECTED", "inputs": [7, 2, -1], "outputs": [8], "operand_types": [f32]},
           {"index": 4, "op_name": "DELEGATE", "inputs": [0, 4, 3], "outputs": [6], "operand_types": [f32]},
           {"index": 5, "op_name": "DELEGATE", "inputs": [7, 2], "outputs": [8], "operand_types": [i8]}]
    s = tflite_summary(ops)
    assert s["not_delegated"] == ["SOFTMAX"] and s["delegated_nodes"] == 3 and s["nodes"] == 4
    assert s["float_compute_ops"] == ["FULLY_CONNECTED"]
    assert why_slow(s, None).startswith("3 of 4 nodes on XNNPACK") and "not on XNNPACK: SOFTMAX" in why_slow(s, None)


@pytest.mark.parametrize("runtime", ["pytorch", "onnxruntime", "tflite", "openvino", "executorch"])
def test_each_runtime_profiles_its_int8_artifact(runtime, tmp_path):
    backend = BACKENDS.get(runtime)()
    paths = backend.peak_artifacts(tmp_path, 16, peak.FLOOR_FEATURES)
    runner_cls = BACKENDS.runner(runtime)
    settings = backend.peak_settings("x86_64")
    r = runner_cls(str(paths["int8"]), 1, "float32", settings)
    s = r.profile(r.prepare(np.ones((1, 16), np.float32)), 5)
    assert s["runtime"] == runtime and s["ops"]
    if runtime == "pytorch":  # a PT2E AOTInductor package: its compiled oneDNN calls are not aten ops,
        # so the package's own wrapper names its kernels
        from bsb_hydra.backends.pytorch.pt2e import compiled_kernels

        kernels = compiled_kernels(paths["int8"])
        assert any(k.startswith("qlinear") for k in kernels) and not any(k.startswith("mm") for k in kernels), kernels
        # and oneDNN's verbose log times them: an int8 (u8 source, s8 weights) matmul primitive, nothing in float
        int8 = [o for o in s["ops"] if o["op"].startswith("onednn:matmul") and o["op"].endswith(" u8/s8")]
        assert int8 and int8[0]["calls_per_run"] == 1 and int8[0]["ms_per_run"] > 0, s["ops"]
        assert s["float_compute_ops"] == []
    elif runtime == "onnxruntime":
        assert any(o["op"].startswith("QLinearMatMul") for o in s["ops"]) and s["unfused_qdq"] == 0
    elif runtime == "executorch":  # XNNPACK's int8 fully connected, from ETDump
        assert any(o["op"].startswith("Fully Connected (NC, QS8") for o in s["ops"])
    elif runtime == "openvino":  # the CPU plugin's int8 FullyConnected kernel
        assert any(o["op"].startswith("FullyConnected") and o["op"].endswith("[I8]") for o in s["ops"])
        assert s["float_compute_ops"] == []
    else:
        assert "FULLY_CONNECTED" in {o["op"] for o in s["ops"]} and s["delegated_nodes"] >= 1


def test_a_cell_slow_on_purpose_says_why(tmp_path):
    run_bsb(["-m", "model=cnn", "quant=static", "backend=onnxruntime", "backend.graph_optimization=disable",
             "peak.enabled=false", *PROFILED], tmp_path)
    client, (run,) = runs_of(tmp_path)
    assert run.data.tags["status"] == "ok", run.data.tags.get("reason")
    assert run.data.metrics["speedup_b1"] < 1.0  # QDQ unfused: fp32 Conv plus quantize/dequantize around it
    why = run.data.tags["why_slow"]
    assert why.startswith("top ops ") and "in float: Conv[float]" in why
    assert "quantize/dequantize nodes per run not fused" in why
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "profile.json" in names
    prof = client.download_artifacts(run.info.run_id, "profile.json", str(tmp_path))
    import json

    p = json.loads(open(prof).read())
    assert p["slower"] is True and p["ref"]["runtime"] == "onnxruntime" and p["cell"]["unfused_qdq"] > 0
    from types import SimpleNamespace

    from bsb_hydra.report.build import build_report

    rep = build_report(SimpleNamespace(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="bsb-hydra",
                                       arch=None, budget_pp=1.0, out=str(tmp_path / "out"), tag_runs=False,
                                       log_run=False))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Why slow: quantized cells slower than their fp32" in md and why[:60].replace("|", "\\|") in md
    assert rep.groups


def test_an_int8_cell_short_of_the_machines_limit_is_profiled_with_below_peak(tmp_path):
    """benchmark.profile=below_peak: an int8 cell faster than its fp32 but below peak_target x the
    int8_peak_ratio (a target of 10 here, which no cell reaches) gets why_short_of_peak, and the report
    lists it with its share of the peak."""
    # wider convolutions than the default cnn's: its int8 cell must be faster than its fp32 for this path
    # (one slower is profiled as why_slow), and the default's 0.96-1.3x at b1 (call overhead) failed once
    # on a loaded machine
    run_bsb(["-m", "model=cnn", "model.channels=[64,128]", "quant=static", "backend=pytorch",
             "benchmark.profile=below_peak", "benchmark.peak_target=10", *PROFILED], tmp_path)
    client, (run,) = runs_of(tmp_path)
    assert run.data.tags["status"] == "ok", run.data.tags.get("reason")
    m = run.data.metrics
    assert m["speedup_b1"] > 1.0 and m["speedup_vs_peak_b1"] < 10
    why = run.data.tags["why_short_of_peak"]
    assert why.startswith("top ops ") and "quantized::" in why and "why_slow" not in run.data.tags
    from types import SimpleNamespace

    from bsb_hydra.report.build import build_report

    build_report(SimpleNamespace(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="bsb-hydra", arch=None,
                                 budget_pp=1.0, out=str(tmp_path / "out"), tag_runs=False, log_run=False))
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"({m['speedup_vs_peak_b1']:.2f} of peak)" in md and why[:40].replace("|", "\\|") in md
