#!/usr/bin/env python
"""`make bench`: measure the foundation's targets on this machine and say PASS or FAIL for each.

1. Sweeps model=mlp,cnn x quant=fp32,static (per-channel) x backend=pytorch,onnxruntime with the
   default training on the full Fashion-MNIST, one thread, the default timing settings, into the
   experiment `bench` of the project's store (or MLFLOW_TRACKING_URI).
2. Reads that sweep's runs back through MLflow's search API and checks:
   - static int8 per-channel >= 2.5x faster than fp32 at batch 1 (p50, paired in the same job), cnn,
     on pytorch AND onnxruntime;
   - static int8 artifact <= 0.27 of the fp32 artifact, cnn, both backends;
   - accuracy drop <= 0.5 pp, mlp and cnn, per-channel static, both backends.
3. With --grid, also times `python -m bsb_hydra -m experiment=default_grid` from a cold model cache
   (a fresh BSB_CACHE_DIR) against the 15-minute target.
Writes the table to reports/bench-<time>.md as well.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(args, extra_env=None) -> tuple[str, float]:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = ROOT / "multirun_outputs" / f"bench-{stamp}"
    env = {**os.environ, **(extra_env or {})}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bsb_hydra", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
                   cwd=ROOT, env=env, check=True)
    return str(sweep_dir.relative_to(ROOT)), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="bench")
    ap.add_argument("--grid", action="store_true", help="also time the default grid from a cold cache")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the target sweep")
    a = ap.parse_args()

    # quant=static defaults to granularity=per_channel, method=minmax, 256 training samples
    sweep_dir, seconds = sweep(["model=mlp,cnn", "quant=fp32,static", "backend=pytorch,onnxruntime",
                                f"mlflow.experiment={a.experiment}", *a.overrides])
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/mlflow.db")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[a.experiment], filter_string=f"tags.sweep_dir = '{sweep_dir}'",
                              output_format="list")
    cells = {(r.data.tags["model"], r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}
    rows, ok_all = [], True

    def check(name, value, target, passed):
        nonlocal ok_all
        ok_all &= passed
        rows.append(f"| {name} | {value} | {target} | {'PASS' if passed else 'FAIL'} |")

    for backend in ("pytorch", "onnxruntime"):
        r = cells.get(("cnn", "static", backend))
        if r is None or r.data.tags["status"] != "ok":
            check(f"cnn static {backend}", "missing: " + (r.data.tags.get("reason", "") if r else "no run"), "ok", False)
            continue
        m = r.data.metrics
        check(f"cnn static per-channel speedup b1, {backend}",
              f"{m['speedup_b1']:.2f}x (fp32 {m['fp32_latency_p50_ms_b1']:.4f} ms -> int8 {m['latency_p50_ms_b1']:.4f} ms)",
              ">= 2.5x", m["speedup_b1"] >= 2.5)
        check(f"cnn static size ratio, {backend}",
              f"{m['size_ratio']:.4f} ({m['size_bytes']:.0f} / {m['fp32_size_bytes']:.0f} B)", "<= 0.27",
              m["size_ratio"] <= 0.27)
    for model in ("mlp", "cnn"):
        for backend in ("pytorch", "onnxruntime"):
            r = cells.get((model, "static", backend))
            if r is None or r.data.tags["status"] != "ok":
                check(f"{model} static {backend}", "missing", "ok", False)
                continue
            m = r.data.metrics
            check(f"{model} static per-channel accuracy delta, {backend}",
                  f"{m['accuracy_delta_pp']:+.2f} pp ({100 * m['fp32_accuracy']:.2f}% -> {100 * m['accuracy']:.2f}%)",
                  ">= -0.5 pp", m["accuracy_delta_pp"] >= -0.5)
    if a.grid:
        with tempfile.TemporaryDirectory() as cold:
            _, grid_s = sweep(["experiment=default_grid", f"mlflow.experiment={a.experiment}-grid"],
                              {"BSB_CACHE_DIR": cold})
        check("default grid wall time (cold model cache)", f"{grid_s / 60:.1f} min", "< 15 min", grid_s < 900)

    info = runs[0].data.tags if runs else {}
    head = (f"# bsb-hydra bench, {datetime.now():%Y-%m-%d %H:%M}\n\n"
            f"Machine: {info.get('cpu', '?')} ({info.get('arch', '?')}, isa {info.get('isa', '?')}), "
            f"threads 1. Target sweep: {sweep_dir} ({seconds / 60:.1f} min).\n\n"
            "| target | measured | goal | result |\n|---|---|---|---|\n")
    text = head + "\n".join(rows) + "\n"
    print("\n" + text)
    out = ROOT / "reports" / f"bench-{datetime.now():%Y-%m-%d_%H-%M-%S}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"written to {out.relative_to(ROOT)}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
