"""What the harness costs: each runtime's artifact timed by the benchmark worker (bsb_hydra/bench/
worker.py, the path of every cell) and by the runtime's bare API in a loop, side by side, each in a
fresh process with one thread.

    .venv/bin/python scripts/harness_overhead.py [--sizes 8 256 1024] [--rounds 3]

Artifacts: the peak benchmark's (bsb_hydra/bench/peak.py) fp32 fully connected layers, N -> N on a
batch of N rows: 8 (an empty call: overhead at its most visible), 256, 1024. The bare loop is what a
user would write: ORT ``session.run(None, feed)``, torch ``module(x)`` inside one inference_mode block,
TFLite ``set_tensor; invoke; get_tensor``. Rounds alternate the order (harness first, then bare first);
the ratio is harness p50 / bare p50 from the medians over the rounds. Target: at most 1.05."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsb_hydra.bench import peak  # noqa: E402
from bsb_hydra.bench.harness import Item, run_worker  # noqa: E402

BARE = r'''
import json, sys, time
import numpy as np
runtime, path, x_path, seconds, warm = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
x = np.load(x_path)
perf = time.perf_counter
samples = []
def loop(call):
    for _ in range(warm):
        call()
    start = perf()
    while perf() - start < seconds or len(samples) < 10:
        t0 = perf(); call(); samples.append((perf() - t0) * 1000.0)
if runtime == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    loop(lambda: s.run(None, feed))
elif runtime == "pytorch":
    import torch
    torch.set_num_threads(1)
    m = torch.jit.load(path).eval()
    t = torch.from_numpy(x)
    with torch.inference_mode():
        loop(lambda: m(t))
else:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=1)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape)); it.allocate_tensors()
    def call():
        it.set_tensor(inp["index"], x); it.invoke(); it.get_tensor(out["index"])
    loop(call)
print(json.dumps(samples))
'''


def bare_p50(runtime: str, path: Path, x_path: Path, seconds: float, warm: int) -> float:
    out = subprocess.run([sys.executable, "-c", BARE, runtime, str(path), str(x_path), str(seconds), str(warm)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(np.median(json.loads(out.stdout.strip().splitlines()[-1])))


def harness_p50(runtime: str, path: Path, x_path: Path, n: int, seconds: float, warm: int, work: Path) -> float:
    settings = peak.peak_backends()[runtime].peak_settings("x86_64")
    res = run_worker(backend=runtime, items=[Item("a", path, "float32")], threads=1, settings=settings,
                     latency_input=x_path, latency={"batch_sizes": [n], "warmup_runs": warm, "min_runs": 10,
                                                    "min_duration_s": seconds, "max_duration_s": 10 * seconds},
                     eval_input=None, eval_batch_size=1, workdir=work, tag=f"h{time.monotonic_ns()}", timeout_s=600)
    return float(np.median(res["a"].data["samples_ms"][str(n)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 256, 1024])
    # the runtimes BARE has a bare loop for
    ap.add_argument("--runtimes", nargs="+", default=["pytorch", "onnxruntime", "tflite"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for rt in a.runtimes:
            for n in a.sizes:
                d = Path(tmp) / f"{rt}_{n}"
                d.mkdir()
                path = peak.peak_backends()[rt].peak_artifacts(d, n, peak.FLOOR_FEATURES)["fp32"]
                x_path = d / "x.npy"
                np.save(x_path, np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
                warm = 200 if n <= 64 else 5
                h, b = [], []
                for i in range(a.rounds):
                    pair = [lambda: h.append(harness_p50(rt, path, x_path, n, a.seconds, warm, d / "w")),
                            lambda: b.append(bare_p50(rt, path, x_path, a.seconds, warm))]
                    for f in pair if i % 2 == 0 else pair[::-1]:
                        f()
                ratio = float(np.median(h)) / float(np.median(b))
                worst = max(worst, ratio)
                rows.append(f"| {rt} | {n} | {np.median(h):.4f} | {np.median(b):.4f} | {ratio:.3f} |")
                print(rows[-1], flush=True)
    from bsb_hydra.sysinfo import system_info

    info = system_info()
    print(f"\n{info['cpu']} ({info['arch']}, ISA {info['isa']}), 1 thread, {a.rounds} rounds of {a.seconds} s\n")
    print("| runtime | N (N x N x N) | harness p50 ms | bare loop p50 ms | harness / bare |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nworst ratio {worst:.3f} (target <= 1.05): {'PASS' if worst <= 1.05 else 'FAIL'}")
    return 0 if worst <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
