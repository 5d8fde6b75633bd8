#!/usr/bin/env python
"""`make bench`: measure the foundation's targets on this machine and say PASS or FAIL for each.

1. Runs the default grid (experiment=default_grid: mlp,cnn,mobilenet x fp32,fp16,dynamic,static x
   pytorch,onnxruntime) with the default training on the full Fashion-MNIST from a COLD model cache,
   one thread, default timing settings, into the experiment `bench` of the project's store (or
   MLFLOW_TRACKING_URI), and times it. (--targets-only: just mlp,cnn x fp32,static x both backends.)
2. Reads that sweep's runs back through MLflow's search API and checks:
   - static int8 per-channel >= 2.5x faster than fp32 at batch 1 (p50, paired in the same job), cnn,
     on pytorch AND onnxruntime;
   - static int8 artifact <= 0.27 of the fp32 artifact, cnn, both backends;
   - accuracy drop <= 0.5 pp, mlp and cnn, per-channel static, both backends.
   - the default grid finishes in under 15 minutes, every cell ok.
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
    sweep_dir = ROOT / "multirun_outputs" / f"bench-{stamp}"  # the runs' sweep_dir tag holds this path
    env = {**os.environ, **(extra_env or {})}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bsb_hydra", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
                   cwd=ROOT, env=env, check=True)
    return str(sweep_dir), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="bench")
    ap.add_argument("--targets-only", action="store_true",
                    help="sweep only mlp,cnn x fp32,static x pytorch,onnxruntime (warm cache), not the whole grid")
    ap.add_argument("--evaluate", metavar="SWEEP_DIR", help="only check the targets on a finished sweep's runs")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the target sweep")
    a = ap.parse_args()

    # quant=static defaults to granularity=per_channel, method=minmax, 256 training samples.
    if a.evaluate:  # check the targets on a finished sweep
        sweep_dir, seconds = str(Path(a.evaluate).resolve()), float("nan")
    elif a.targets_only:
        sweep_dir, seconds = sweep(["model=mlp,cnn", "quant=fp32,static", "backend=pytorch,onnxruntime",
                                    f"mlflow.experiment={a.experiment}", *a.overrides])
    else:  # the default grid holds every target cell; time it from a cold model cache
        with tempfile.TemporaryDirectory() as cold:
            sweep_dir, seconds = sweep(["experiment=default_grid", f"mlflow.experiment={a.experiment}",
                                        *a.overrides], {"BSB_CACHE_DIR": cold})
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/mlflow.db")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[a.experiment], filter_string=f"tags.sweep_dir = '{sweep_dir}'",
                              output_format="list")
    if not runs:
        print(f"no runs with tags.sweep_dir = '{sweep_dir}' in experiment {a.experiment} of {uri}")
        return 1
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
        rows.append(f"| (info) cnn static speedup b8 / b32, {backend} | {m.get('speedup_b8', float('nan')):.2f}x / "
                    f"{m.get('speedup_b32', float('nan')):.2f}x | - | - |")
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
    if not a.targets_only and not a.evaluate:
        check("default grid wall time (cold model cache, training included)", f"{seconds / 60:.1f} min",
              "< 15 min", seconds < 900)
        statuses = [r.data.tags["status"] for r in runs]
        check("default grid cells ok", f"{statuses.count('ok')}/{len(runs)} ok", "all ok",
              statuses.count("ok") == len(runs) == 24)

    info = runs[0].data.tags
    head = (f"# bsb-hydra bench, {datetime.now():%Y-%m-%d %H:%M}\n\n"
            f"Machine: {info.get('cpu', '?')} ({info.get('arch', '?')}, isa {info.get('isa', '?')}), "
            f"threads {info.get('threads', '?')}. Sweep: {Path(sweep_dir).relative_to(ROOT) if sweep_dir.startswith(str(ROOT)) else sweep_dir} ({seconds / 60:.1f} min).\n\n"
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
