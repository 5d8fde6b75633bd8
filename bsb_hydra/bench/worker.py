"""One measurement in a fresh process: ``python -m bsb_hydra.bench.worker REQUEST.json``.

Imports numpy, the standard library and ONE runtime (through its backend module). Order:
import runtime -> baseline RSS -> then for each artifact of the request, in order (a cell and its
paired fp32 reference share a process): load (timed) -> first inference (timed) -> per batch size:
inputs prepared, warm-up, timed runs until BOTH min_runs and min_duration_s (or max_duration_s)
-> peak RSS (first artifact only) -> predictions on the evaluation inputs. Only ``runner.run`` is
inside the clock. Inputs are one array or several named ones (bsb_hydra/feeds.py); every output
tensor of every evaluation batch goes to disk (bsb_hydra/bench/outputs.py). Between those steps (after each evaluation batch, and every 10 s of timed runs)
it touches the request's heartbeat file: the parent kills a worker only when that stops moving
(harness.run_worker)."""
from __future__ import annotations

import importlib
import json
import os
import sys
import time

import numpy as np

from bsb_hydra.backends import BACKENDS
from bsb_hydra.bench.outputs import OutputWriter
from bsb_hydra.feeds import load_inputs, materialize, resize

# What a benchmark worker must not load beside its own runtime: the sweep's side (MLflow, Hydra, model
# code) and every backend's runtime (each Runner's runtime_module; this worker imports them all's
# runner modules, numpy only, to know them). The tag worker_imports lists the ones that were loaded.
SWEEP_SIDE = ("torch", "torchvision", "tensorflow", "mlflow", "hydra", "transformers", "onnx")


def heavy_modules() -> set:
    runtimes = {r.runtime_module.split(".")[0] for r in BACKENDS.runners().values() if r.runtime_module}
    return set(SWEEP_SIDE) | runtimes


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    # VmHWM belongs to this address space (reset at exec). getrusage's ru_maxrss is NOT: it keeps
    # the high-water mark of the forked parent across execve, which is the whole sweep process.
    return _status_mb("VmHWM")


def _fault(req) -> None:
    kind = req.get("inject_fault")
    if kind == "crash":
        os.kill(os.getpid(), 11)  # SIGSEGV
    elif kind == "oom":
        os.kill(os.getpid(), 9)  # SIGKILL, what the kernel's OOM killer sends
    elif kind == "hang":
        time.sleep(10**6)


def beat(req) -> None:
    """Progress for the parent's stall timeout (benchmark.timeout_s): touched between steps, never
    inside the clock."""
    if req.get("heartbeat"):
        os.utime(req["heartbeat"])


def time_batch(runner, x: np.ndarray, warmup: int, min_runs: int, min_s: float, max_s: float,
               progress=None):
    """``progress`` (the heartbeat) is called between timed calls, at most every 10 s."""
    prepared = runner.prepare(x)  # input conversion happens before the clock
    for _ in range(warmup):
        runner.run(prepared)
    samples = []
    perf = time.perf_counter
    start = last = perf()
    while True:
        t0 = perf()
        runner.run(prepared)
        samples.append((perf() - t0) * 1000.0)
        now = perf()
        elapsed = now - start
        if (len(samples) >= min_runs and elapsed >= min_s) or elapsed >= max_s:
            break
        if progress is not None and now - last >= 10.0:
            progress()
            last = now
    return samples


# Input elements per evaluation batch. benchmark.eval_batch_size (256) samples of 224x224 images made
# the worker hold 3.7 GB (a 21-class segmentation model: 1 GB of outputs per batch, plus the runtime's
# activations); capped, 27 such images at a time: the outputs are the same, the memory is not.
EVAL_ELEMENTS = 2 ** 22


def eval_batch(x, largest: int) -> int:
    """Samples per evaluation batch: at most ``largest`` (benchmark.eval_batch_size) and EVAL_ELEMENTS
    input elements (every input of a sample counted)."""
    from bsb_hydra.feeds import Feeds

    arrays = list(x.arrays.values()) if isinstance(x, Feeds) else [x]
    per_sample = sum(int(np.prod(a.shape[1:])) for a in arrays) or 1
    return max(1, min(largest, EVAL_ELEMENTS // per_sample))


def measure(runner_cls, item: dict, req: dict, clean_memory: bool) -> dict:
    """One artifact: load (timed), first inference (timed), latency per batch size, peak RSS (only
    when it is the first artifact of the process: later ones share the high-water mark), logits."""
    out: dict = {"tag": item["tag"]}
    t0 = time.perf_counter()
    runner = runner_cls(item["artifact"], req["threads"], item["input_dtype"], req.get("settings", {}))
    out["load_ms"] = (time.perf_counter() - t0) * 1000.0
    beat(req)

    latency_x = materialize(load_inputs(req["latency_input"]))
    lat = req.get("latency") if item.get("latency", True) else None
    if lat:
        first = runner.prepare(latency_x[:1])
        t0 = time.perf_counter()
        runner.run(first)
        out["first_inference_ms"] = (time.perf_counter() - t0) * 1000.0
        out["samples_ms"] = {}
        for b in lat["batch_sizes"]:
            x = resize(latency_x, b)  # repeats real samples if b > available
            out["samples_ms"][str(b)] = time_batch(runner, x, lat["warmup_runs"], lat["min_runs"],
                                                   lat["min_duration_s"], lat["max_duration_s"], lambda: beat(req))
            beat(req)
        if clean_memory:
            out["peak_rss_mb"] = peak_rss_mb()
            out["rss_delta_mb"] = out["peak_rss_mb"] - req["_rss_after_import_mb"]

    if item.get("profile"):  # after the timing, never inside it
        try:
            out["profile"] = runner.profile(runner.prepare(latency_x[:1]), int(req.get("profile_runs", 20)))
        except Exception as e:  # a profiler that fails says why; the measurement stands
            out["profile"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        beat(req)

    if item.get("evaluate"):  # every output of every batch, to disk: the parent reduces them batch by batch
        x = load_inputs(req["eval_input"], mmap=True)
        bs = eval_batch(x, req["eval_batch_size"])
        writer = OutputWriter(item["outputs_dir"])
        for i in range(0, len(x), bs):
            writer.write(runner.outputs(runner.run(runner.prepare(materialize(x[i:i + bs])))))
            beat(req)
        writer.close(runner.output_names())
    return out


def main(request_path: str) -> None:
    with open(request_path) as f:
        req = json.load(f)
    if req.get("cpus"):  # device.core_pinning: before anything starts a thread
        os.sched_setaffinity(0, req["cpus"])
    runner_cls = BACKENDS.runner(req["backend"])
    # Import the runtime itself before the baseline, so the baseline is "runtime imported, no model".
    importlib.import_module(runner_cls.runtime_module)
    runner_cls.enter_process()
    req["_rss_after_import_mb"] = rss_mb()
    beat(req)
    out = {"rss_after_import_mb": req["_rss_after_import_mb"], "cpus": sorted(os.sched_getaffinity(0))}
    _fault(req)
    # The artifacts in the request's order, one after another. The first one's memory is its own
    # (nothing else was loaded yet); it is the only one whose peak RSS is reported.
    out["items"] = [measure(runner_cls, item, req, clean_memory=i == 0) for i, item in enumerate(req["items"])]
    loaded = {m.split(".")[0] for m in list(sys.modules)}  # before heavy_modules() imports the runner modules
    out["heavy_modules"] = sorted(loaded & heavy_modules())
    tmp = req["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, req["result"])


if __name__ == "__main__":
    from bsb_hydra.local_state import die_with_parent, exit_now

    # a sweep killed by any signal (SIGKILL too) takes its worker with it
    die_with_parent(int(os.environ["BSB_PARENT_PID"]) if os.environ.get("BSB_PARENT_PID") else None)
    main(sys.argv[1])
    exit_now(0)  # the result is written; the sweep waits for this process's exit
