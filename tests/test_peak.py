"""The machine's limit (bsb_hydra/bench/peak.py): the micro-benchmark's structure, its cache, the
ratios every cell derives from it, and the CLI. Figures are never asserted, only their shape and the
arithmetic that links them."""
import json
import subprocess
from types import SimpleNamespace

import pytest

from bsb_hydra.bench import peak
from bsb_hydra.scoring import limit_metrics
from tests.conftest import PEAK_DIR, PEAK_SIZE, PYTHON, ROOT, metrics_of, session_peak


@pytest.fixture(scope="module")
def cli():
    """The session's measurement (tests/conftest.py: session_peak), made through the CLI (python -m
    bsb_hydra.bench.peak) into PEAK_DIR, the cache every sweep of the tests reads, and an MLflow store
    of its own: the test of the CLI and the test of the figures read that one run."""
    env, proc = session_peak()
    return env, proc


def test_peak_measures_every_runtime_through_its_own_kernels(cli):
    _, proc = cli
    assert proc.returncode == 0, proc.stderr[-3000:]
    from bsb_hydra.sysinfo import system_info

    cache = PEAK_DIR / f"peak_{peak.cache_key(system_info(), 1, PEAK_SIZE)}.json"
    r = json.loads(cache.read_text())
    assert set(r["runtimes"]) == set(peak.runtimes()) == {"pytorch", "onnxruntime", "tflite", "openvino", "executorch"}
    for rt, x in r["runtimes"].items():
        assert "error" not in x, (rt, x)
        assert x["gflops_fp32"] > 0 and x["gops_int8"] > 0 and x["call_floor_ms"] > 0
        assert x["int8_ratio"] == pytest.approx(x["gops_int8"] / x["gflops_fp32"])
        assert x["gflops_fp32"] == pytest.approx(peak.gflops(PEAK_SIZE, x["gemm_median_ms"]["fp32"]))
    assert r["runtimes"]["onnxruntime"]["gops_int8_by_artifact"].keys() == {"int8", "int8_dynamic"}
    best_fp32 = max(x["gflops_fp32"] for x in r["runtimes"].values())
    best_int8 = max(x["gops_int8"] for x in r["runtimes"].values())
    assert r["int8_peak_ratio"] == pytest.approx(best_int8 / best_fp32)
    assert r["mem_bandwidth_gbs"] > 0 and r["isa"] and r["threads"] == 1
    table = peak.format_table(r)
    assert f"ISA {r['isa']}" in table and "int8_peak_ratio" in table
    assert "QLinearMatMul" in table or "MatMulInteger" in table


def test_gemm_arithmetic():
    assert peak.gemm_ops(1024) == 2 * 1024 ** 3
    assert peak.gflops(1000, 2.0) == pytest.approx(2e9 / 2e-3 / 1e9)


def test_summary_skips_a_runtime_that_could_not_measure():
    rts = {"pytorch": {"gflops_fp32": 80.0, "gops_int8": 120.0},
           "onnxruntime": {"gflops_fp32": 100.0, "gops_int8": 400.0},
           "tflite": {"error": "RuntimeError: TFLite conversion exited 1"}}
    s = peak.summarize(rts)
    assert s == {"gflops_fp32": 100.0, "gflops_fp32_runtime": "onnxruntime", "gops_int8": 400.0,
                 "gops_int8_runtime": "onnxruntime", "int8_peak_ratio": 4.0}
    assert peak.summarize({"tflite": {"error": "x"}}) == {}


def _cfg(scheme, backend="pytorch"):
    from bsb_hydra.config.store import schemas

    int8 = schemas("quant")[scheme].int8  # the scheme's own property
    return SimpleNamespace(quant=SimpleNamespace(scheme=SimpleNamespace(value=scheme), int8=int8),
                           backend=SimpleNamespace(name=backend))


PEAK = {"gflops_fp32": 100.0, "gops_int8": 250.0, "int8_peak_ratio": 2.5, "mem_bandwidth_gbs": 20.0,
        "runtimes": {"pytorch": {"gflops_fp32": 80.0, "gops_int8": 250.0, "int8_ratio": 3.125, "call_floor_ms": 0.5}}}


def test_ratios_of_a_cell_to_the_limit():
    m = {"latency_p50_ms_b1": 0.8, "latency_p50_ms_b8": 4.0, "speedup_b1": 2.0, "speedup_b8": 3.0,
         "model_macs": 1e9}
    out = limit_metrics(_cfg("static"), m, PEAK)
    assert out["speedup_vs_peak_b1"] == pytest.approx(2.0 / 2.5)
    assert out["speedup_vs_peak_b8"] == pytest.approx(3.0 / 2.5)
    assert out["achieved_gflops_b8"] == pytest.approx(2 * 1e9 * 8 / 4e-3 / 1e9)
    assert out["overhead_bound_b1"] == 1.0 and out["overhead_bound_b8"] == 0.0  # 0.8 < 2 x 0.5; 4.0 is not
    assert out["call_floor_ms"] == 0.5 and out["backend_int8_ratio"] == 3.125 and out["int8_peak_ratio"] == 2.5
    fp32 = limit_metrics(_cfg("fp32"), {**m, "speedup_b1": 1.0}, PEAK)
    assert "speedup_vs_peak_b1" not in fp32 and "achieved_gflops_b1" in fp32  # int8 schemes only
    assert "call_floor_ms" not in limit_metrics(_cfg("static", "tflite"), m, PEAK)  # no floor of that runtime
    assert set(limit_metrics(_cfg("static"), m, None)) == {"achieved_gflops_b1", "achieved_gflops_b8"}


def test_peak_is_measured_once_per_host_and_thread_count(tmp_path, monkeypatch):
    calls = []

    def fake(threads, size, min_duration_s):
        calls.append(threads)
        return {"measured_at": "now", "threads": threads, "size": size, "runtimes": {}, "mem_bandwidth_gbs": 1.0}

    monkeypatch.setattr(peak, "measure_peak", fake)
    a = peak.machine_peak(tmp_path, 1, 64, log=lambda s: None)
    b = peak.machine_peak(tmp_path, 1, 64, log=lambda s: None)
    assert calls == [1] and a["cache_file"] == b["cache_file"]
    peak.machine_peak(tmp_path, 2, 64, log=lambda s: None)
    peak.machine_peak(tmp_path, 1, 64, refresh=True, log=lambda s: None)
    assert calls == [1, 2, 1]
    assert json.loads(open(a["cache_file"]).read())["threads"] == 1


def test_cli_prints_and_logs_the_figures(cli):
    env, proc = cli
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "int8_peak_ratio" in proc.stdout and "call floor ms" in proc.stdout and "GB/s" in proc.stdout
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("peak").experiment_id])
    assert run.data.tags["kind"] == "peak" and run.data.tags["isa"]
    assert {"gflops_fp32", "gops_int8", "int8_peak_ratio", "mem_bandwidth_gbs", "onnxruntime_call_floor_ms"} <= \
        set(metrics_of(run))
    assert "limit/int8_peak_ratio" in run.data.metrics  # stored under its group
    bad = subprocess.run([PYTHON, "-m", "bsb_hydra.bench.peak", "--size", "0"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--size=0 is not allowed: it must be >= 1" in bad.stderr


def test_a_sweep_carries_the_limit_and_the_ratios(sweep):
    """The shared sweep's mlp cells (fp32 before static, on onnxruntime and pytorch)."""
    _, _, _, shared = sweep
    runs = [r for r in shared if r.data.tags.get("model") == "mlp" and r.data.tags["quant"] in ("fp32", "static")]
    by = {(r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}
    assert len(by) == 4 and all(r.data.tags["status"] == "ok" for r in runs)
    ratio = {r.data.metrics["int8_peak_ratio"] for r in runs}
    assert len(ratio) == 1  # one measurement per host, cached
    for r in runs:
        m = r.data.metrics
        assert {"gflops_fp32", "gops_int8", "call_floor_ms", "achieved_gflops_b1", "overhead_bound_b1",
                "speedup_vs_best_fp32_b1"} <= set(m), r.data.tags["cell"]
        assert r.data.tags["peak_measured_at"] and r.data.tags["best_fp32_b1"]
    st = by[("static", "pytorch")].data.metrics
    assert st["speedup_vs_peak_b1"] == pytest.approx(st["speedup_b1"] / st["int8_peak_ratio"])
    # the fp32 cells ran first: the best of them (or the cell's own paired reference) over the cell's p50
    fp32_best = min(by[("fp32", b)].data.metrics["latency_p50_ms_b8"] for b in ("onnxruntime", "pytorch"))
    best = min(fp32_best, st["fp32_latency_p50_ms_b8"])
    assert st["speedup_vs_best_fp32_b8"] == pytest.approx(best / st["latency_p50_ms_b8"])
    assert by[("fp32", "pytorch")].data.metrics["speedup_vs_best_fp32_b1"] <= 1.0 + 1e-9


def test_best_fp32_is_found_when_a_tag_holds_a_quote(tmp_path, monkeypatch):
    """torchvision's model_ref (models.get_model('resnet18', ...)) cannot go into an MLflow filter
    string: the fp32 cells are still found (matched in Python), and another model's never counts."""
    from types import SimpleNamespace as NS

    import mlflow

    from bsb_hydra.scoring import SAME_INPUT_TAGS, best_fp32_metrics

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")  # not set_tracking_uri: that sticks
    exp = mlflow.MlflowClient().create_experiment("quotes")
    tags = {**{k: "x" for k in SAME_INPUT_TAGS}, "model_ref": "models.get_model('resnet18', weights=None)"}
    for ref, backend, p50 in ((tags["model_ref"], "onnxruntime", 10.0),
                              ("models.get_model('mobilenet_v2', weights=None)", "tflite", 1.0)):
        with mlflow.start_run(experiment_id=exp):
            mlflow.set_tags({**tags, "model_ref": ref, "quant": "fp32", "status": "ok", "backend": backend})
            mlflow.log_metric("latency_p50_ms_b1", p50)
    logged = {}
    with mlflow.start_run(experiment_id=exp):
        mlflow.set_tags({**tags, "quant": "static", "backend": "pytorch"})
        cfg = NS(backend=NS(name="pytorch"), quant=NS(scheme=NS(value="static")))
        out = best_fp32_metrics(cfg, {"latency_p50_ms_b1": 2.0, "fp32_latency_p50_ms_b1": 20.0},
                                NS(tags=logged.update))
    assert out["speedup_vs_best_fp32_b1"] == pytest.approx(5.0) and logged["best_fp32_b1"] == "onnxruntime 10 ms"
