"""The machine's own limit: ``python -m bsb_hydra.bench.peak [--threads N] [--size N] [--refresh]``.

What this CPU can do, measured through each runtime's own kernels and timed by the same worker
and Runner classes as every cell (bsb_hydra/bench/worker.py; per runtime one fresh process for the GEMMs and one for the floor):

- fp32 GEMM GFLOP/s and int8 GEMM GOP/s: one N x N x N matrix product (a batch of N rows through
  an N -> N fully connected layer without bias; 2 N^3 operations per call), as the runtime's fp32
  artifact and as its int8 artifact built by the runtime's own quantizer (PyTorch: FX x86 int8,
  quantized::linear; ONNX Runtime: quantize_static QDQ -> QLinearMatMul and quantize_dynamic ->
  MatMulInteger, u8 activations x s8 weights; TFLite: TFLiteConverter full-integer FULLY_CONNECTED
  through XNNPACK). GFLOP/s come from the median call.
- the empty-call floor of each runtime: the median b1 latency of a trivial model (an 8 -> 8
  fully connected layer), i.e. what a call costs before any arithmetic.
- the memory bandwidth of a one-thread copy of 256 MiB (numpy, best of 5; read + write bytes).

``int8_peak_ratio`` = the best int8 GOP/s over the best fp32 GFLOP/s, across the runtimes: how much
faster int8 arithmetic can be than fp32 on this CPU. A sweep measures it once per host (cached in
``peak.cache_dir`` under a key of CPU, ISA, threads, size and runtime versions) and every run carries
it (bsb_hydra/scoring.py: limit_metrics)."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from bsb_hydra.bench.harness import Item, run_worker
from bsb_hydra.cache_files import CacheWriteError, cache_lock, check_entry, printed, write_entry
from bsb_hydra.sysinfo import system_info

FLOOR_FEATURES = 8
# The runtime versions the cached figures depend on: every version a run is stamped with (sysinfo).


def gemm_ops(size: int) -> float:
    """Multiply-adds counted as 2 operations: an N x N by N x N product is 2 N^3."""
    return 2.0 * float(size) ** 3


def gflops(size: int, median_ms: float) -> float:
    return gemm_ops(size) / (median_ms / 1000.0) / 1e9


def cache_key(info: Dict[str, str], threads: int, size: int) -> str:
    parts = [platform.node(), info["arch"], info["cpu"], info["isa"], str(threads), str(size),
             *(f"{k}={v}" for k, v in sorted(info.items()) if k.startswith("version_"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------- timing
def peak_backends() -> Dict[str, Any]:
    """Every backend with peak kernels (Backend.peak_kernels), by name."""
    from bsb_hydra.backends import BACKENDS

    found = {}
    for name in BACKENDS.options():
        backend = BACKENDS.get(name)()
        if backend.peak_kernels:
            found[name] = backend
    return found


def runtimes() -> tuple:
    """The backends the peak measures."""
    return tuple(peak_backends())


def _median_ms(samples) -> float:
    return float(np.median(samples))


def measure_runtime(runtime: str, threads: int, size: int, min_duration_s: float, workdir: Path,
                    settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One runtime's GEMM figures and call floor, each timed in a fresh worker process."""
    out = workdir / runtime
    out.mkdir(parents=True, exist_ok=True)
    backend = peak_backends()[runtime]
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # the quantizers' deprecation notices, not about this machine
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)  # ORT quantization's "consider pre-processing"
        paths = backend.peak_artifacts(out, size, FLOOR_FEATURES, threads)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = out / "gemm_input.npy"
    np.save(x, rng.standard_normal((size, size)).astype(np.float32))
    floor_x = out / "floor_input.npy"
    np.save(floor_x, rng.standard_normal((1, FLOOR_FEATURES)).astype(np.float32))
    common = dict(backend=runtime, threads=threads, settings=settings or {}, eval_input=None, eval_batch_size=1,
                  workdir=out / "bench", timeout_s=600.0)
    gemm_items = [Item(name, path, "float32") for name, path in paths.items() if name != "floor"]
    res = run_worker(items=gemm_items, latency_input=x, tag="gemm", latency={
        "batch_sizes": [size], "warmup_runs": 3, "min_runs": 10, "min_duration_s": min_duration_s,
        "max_duration_s": 30.0 * min_duration_s}, **common)
    floor = run_worker(items=[Item("floor", paths["floor"], "float32")], latency_input=floor_x, tag="floor", latency={
        "batch_sizes": [1], "warmup_runs": 50, "min_runs": 300, "min_duration_s": min_duration_s,
        "max_duration_s": 30.0 * min_duration_s}, **common)
    ms = {name: _median_ms(r.data["samples_ms"][str(size)]) for name, r in res.items()}
    int8 = {name: gflops(size, v) for name, v in ms.items() if name.startswith("int8")}
    best_int8 = max(int8, key=int8.get)
    return {"gflops_fp32": gflops(size, ms["fp32"]), "gops_int8": int8[best_int8],
            "int8_kernel": backend.peak_artifact_kernels.get(best_int8, best_int8),
            "gops_int8_by_artifact": int8, "int8_ratio": int8[best_int8] / gflops(size, ms["fp32"]),
            "call_floor_ms": _median_ms(floor["floor"].data["samples_ms"]["1"]), "gemm_median_ms": ms,
            "kernels": backend.peak_kernels, "build_s": build_s}


def memory_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """A one-thread copy (numpy.copyto) of ``mib`` MiB: (read + write bytes) / best time."""
    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * src.nbytes / best / 1e9


def summarize(runtimes: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The machine-level figures from the runtimes that measured: best fp32, best int8, their ratio."""
    ok = {k: v for k, v in runtimes.items() if "gflops_fp32" in v}
    if not ok:
        return {}
    fp32_rt = max(ok, key=lambda k: ok[k]["gflops_fp32"])
    int8_rt = max(ok, key=lambda k: ok[k]["gops_int8"])
    return {"gflops_fp32": ok[fp32_rt]["gflops_fp32"], "gflops_fp32_runtime": fp32_rt,
            "gops_int8": ok[int8_rt]["gops_int8"], "gops_int8_runtime": int8_rt,
            "int8_peak_ratio": ok[int8_rt]["gops_int8"] / ok[fp32_rt]["gflops_fp32"]}


def measure_peak(threads: int, size: int = 1024, min_duration_s: float = 1.0,
                 runtimes=None, settings: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """``runtimes``: the backends to measure (None = every backend with peak kernels); ``settings``:
    their Runner settings (None = what a cell's Runner gets by default, Backend.peak_settings)."""
    info = system_info()
    backends = peak_backends()
    runtimes = tuple(backends) if runtimes is None else runtimes
    settings = settings or {name: backends[name].peak_settings(info["arch"]) for name in runtimes if name in backends}
    result: Dict[str, Any] = {"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "host": platform.node(), "arch": info["arch"], "cpu": info["cpu"], "isa": info["isa"],
                              "threads": threads, "size": size, "runtimes": {}}
    with tempfile.TemporaryDirectory(prefix="bsb_peak_") as tmp:
        for rt in runtimes:
            try:
                result["runtimes"][rt] = measure_runtime(rt, threads, size, min_duration_s, Path(tmp),
                                                         settings.get(rt))
            except Exception as e:  # a runtime that cannot measure here says why; the others still count
                result["runtimes"][rt] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    result["mem_bandwidth_gbs"] = memory_bandwidth_gbs()
    result.update(summarize(result["runtimes"]))
    return result


# Figures this process measured but could not file (a read-only cache, a full disk), by cache file:
# the sweep's later cells read them here instead of measuring again.
_UNFILED: Dict[str, Dict[str, Any]] = {}


def machine_peak(cache_dir: Path, threads: int, size: int = 1024, min_duration_s: float = 1.0,
                 refresh: bool = False, log: Callable[[str], None] = print,
                 note: Callable[[str], None] = printed) -> Dict[str, Any]:
    """The cached figures of this host at this thread count, measured first if there are none.
    ``peak_KEY.json`` holds them and ``peak_KEY.meta.json`` their SHA-256: a file that does not
    match (or cannot be read) is named through ``note`` and measured again. Before, a corrupt
    file made every cell's peak metrics fail (tag peak_error) until someone deleted it."""
    info = system_info()
    path = Path(cache_dir) / f"peak_{cache_key(info, threads, size)}.json"
    meta_path = path.with_suffix(".meta.json")
    # parallel jobs of one host: one measures, the others wait and read
    with cache_lock(path.with_suffix(".lock"), note) as writable:
        if not refresh:
            meta, why = check_entry(path, meta_path)
            if meta is not None:
                try:
                    return {**json.loads(path.read_text()), "cache_file": str(path)}
                except (OSError, ValueError) as e:
                    why = f"{type(e).__name__}: {e}"
            if str(path) in _UNFILED:
                return dict(_UNFILED[str(path)])
            if why:
                note(f"cached peak figures {path} are unusable ({why}): measuring them again")
        log(f"  measuring this machine's limit (fp32/int8 GEMM {size}^3, call floors, memory bandwidth; "
            f"{threads} thread(s)), once per host: python -m bsb_hydra.bench.peak")
        t0 = time.perf_counter()
        result = measure_peak(threads, size, min_duration_s)
        result["seconds"] = time.perf_counter() - t0
        text = json.dumps(result, indent=1)
        unfiled = "" if writable else f"the cache {path.parent} is read-only"
        if writable:
            try:
                write_entry(path, meta_path, lambda f: f.write(text.encode()), {"file": path.name})
            except CacheWriteError as e:
                unfiled = str(e)
        if unfiled:
            note(f"NOTE: {unfiled}: the figures just measured are used from memory (for every later cell "
                 f"of this process), not cached")
            _UNFILED[str(path)] = {**result, "cache_file": ""}
            return dict(_UNFILED[str(path)])
    return {**result, "cache_file": str(path)}


def run_metrics(peak: Dict[str, Any], backend: str) -> Dict[str, float]:
    """What every run carries: the machine's figures, and its own runtime's."""
    m = {k: float(peak[k]) for k in ("gflops_fp32", "gops_int8", "int8_peak_ratio", "mem_bandwidth_gbs") if k in peak}
    own = peak.get("runtimes", {}).get(backend, {})
    for k in ("call_floor_ms", "gflops_fp32", "gops_int8", "int8_ratio"):
        if k in own:
            m[k if k == "call_floor_ms" else f"backend_{k}"] = float(own[k])
    return m


def format_table(peak: Dict[str, Any]) -> str:
    rows = [f"{peak['cpu']} ({peak['arch']}; ISA {peak['isa']}), {peak['threads']} thread(s), "
            f"GEMM {peak['size']}^3, measured {peak['measured_at']}",
            f"{'runtime':<12} {'fp32 GFLOP/s':>13} {'int8 GOP/s':>11} {'int8/fp32':>9} {'call floor ms':>14}  int8 kernel"]
    for rt, r in peak["runtimes"].items():
        if "error" in r:
            rows.append(f"{rt:<12} not measured: {r['error']}")
            continue
        rows.append(f"{rt:<12} {r['gflops_fp32']:>13.1f} {r['gops_int8']:>11.1f} {r['int8_ratio']:>9.2f} "
                    f"{r['call_floor_ms']:>14.4f}  {r['int8_kernel']}")
    if "int8_peak_ratio" in peak:
        rows.append(f"machine: fp32 {peak['gflops_fp32']:.1f} GFLOP/s ({peak['gflops_fp32_runtime']}), int8 "
                    f"{peak['gops_int8']:.1f} GOP/s ({peak['gops_int8_runtime']}): int8_peak_ratio "
                    f"{peak['int8_peak_ratio']:.2f}")
    rows.append(f"memory bandwidth (one-thread copy): {peak['mem_bandwidth_gbs']:.1f} GB/s")
    return "\n".join(rows)


def log_to_mlflow(peak: Dict[str, Any], tracking_uri: str, experiment: str) -> str:
    """One run (tag kind=peak) holding the figures: the report skips it as a cell."""
    import mlflow

    from bsb_hydra.metric_names import mlflow_key, stored

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"peak-{peak['host']}-t{peak['threads']}") as run:
        mlflow.set_tags({"kind": "peak", "isa": peak["isa"], "cpu": peak["cpu"], "arch": peak["arch"],
                         "host": peak["host"], "threads": str(peak["threads"])})
        mlflow.log_metrics(stored(run_metrics(peak, "")))
        for rt, r in peak["runtimes"].items():
            for k in ("gflops_fp32", "gops_int8", "int8_ratio", "call_floor_ms"):
                if k in r:
                    mlflow.log_metric(mlflow_key(f"{rt}_{k}"), r[k])
        mlflow.log_dict(peak, "peak.json")
        return run.info.run_id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime (default 1)")
    ap.add_argument("--size", type=int, default=1024, help="GEMM size N (N x N x N; default 1024)")
    ap.add_argument("--min-duration", type=float, default=1.0, help="seconds of timed calls per artifact")
    ap.add_argument("--refresh", action="store_true", help="measure again even if this host has cached figures")
    ap.add_argument("--cache-dir", default=os.environ.get("BSB_PEAK_DIR", os.path.join(
        os.environ.get("BSB_CACHE_DIR", ".cache/bsb_hydra"), "peak")))
    ap.add_argument("--no-mlflow", action="store_true", help="print only; do not log a kind=peak run")
    a = ap.parse_args(argv)
    for name, v in (("--threads", a.threads), ("--size", a.size)):
        if v < 1:
            ap.error(f"{name}={v} is not allowed: it must be >= 1")
    peak = machine_peak(Path(a.cache_dir), a.threads, a.size, a.min_duration, a.refresh)
    print(format_table(peak))
    if not a.no_mlflow:
        uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd()}/mlflow.db")
        run_id = log_to_mlflow(peak, uri, os.environ.get("BSB_PEAK_EXPERIMENT", "bsb-hydra"))
        print(f"logged to {uri}: run {run_id} (tag kind=peak)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
