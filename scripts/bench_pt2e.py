#!/usr/bin/env python
"""PT2E static int8 against FX static int8 on the pytorch backend, side by side (issue 33 item 2).

Speed: torchvision resnet18 and mobilenet_v2 (random init: speed does not depend on the weights) at
224 px, batch 1 and 8, 1 and 2 threads. Every artifact is built by the backend's own build code
(bsb_hydra.backends.pytorch.PytorchBackend, the same files a sweep times) and timed by the sweep's
benchmark worker (one fresh process per artifact and thread count, bsb_hydra.bench.harness):
  fp32 TorchScript (channels_last, the default fp32 cell), fp32 AOTInductor (backend.export=aoti),
  FX static (backend.flow=fx: torch.ao x86, TorchScript), PT2E static (backend.flow=pt2e:
  X86InductorQuantizer, AOTInductor). Calibration: 32 random samples. An AOTInductor package is
  compiled for one thread count, so the aoti and PT2E artifacts are built once per thread count;
  their compile seconds are printed beside.
Accuracy: a small trained model, through real sweeps (--accuracy-model, default cnn on
data=digits with its default training): fp32, FX static and PT2E static cells on the test split,
read back from the sweep's MLflow store.

    python scripts/bench_pt2e.py [--archs resnet18,mobilenet_v2] [--threads 1,2] [--skip-accuracy]

Timings on a machine shared with other jobs are noisy: repeat before concluding from small gaps."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = (  # name, quant, extra overrides
    ("fp32 TorchScript", "fp32", []),
    ("fp32 AOTI", "fp32", ["backend.export=aoti"]),
    ("FX static", "static", ["backend.flow=fx"]),
    ("PT2E static", "static", ["backend.flow=pt2e"]),
)


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bsb_hydra.config import register_configs, validate

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    cfg.paths.root = str(ROOT)
    return validate(cfg)


def build(arch: str, quant: str, extra, threads: int, workdir: Path):
    import torch
    import torchvision

    from bsb_hydra.backends.base import BuildContext
    from bsb_hydra.backends.pytorch.build import PytorchBackend
    from bsb_hydra.sysinfo import system_info

    cfg = compose(["model=torchvision", f"model.arch={arch}", "backend=pytorch", f"quant={quant}",
                   f"device.threads={threads}", *extra])
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
    info = system_info()
    ctx = BuildContext(model, calib[:1], calib, cfg, "x86" if info["arch"] == "x86_64" else "qnnpack", info["arch"],
                       info["isa"], workdir)
    t0 = time.perf_counter()
    art = getattr(PytorchBackend(), f"build_{quant}")(ctx, workdir / f"{quant}.pt")
    return art, time.perf_counter() - t0


def time_artifact(art, threads: int, workdir: Path, batch_sizes):
    from bsb_hydra.bench.harness import Item, run_worker
    from bsb_hydra.feeds import save_inputs

    x = np.random.default_rng(1).standard_normal((max(batch_sizes), 3, 224, 224)).astype(np.float32)
    spec = save_inputs(workdir / "latency_input", x)
    res = run_worker(backend="pytorch", items=[Item("a", art.path, "float32")], threads=threads,
                     settings={"engine": "x86"}, latency_input=spec,
                     latency={"batch_sizes": list(batch_sizes), "warmup_runs": 10, "min_runs": 30,
                              "min_duration_s": 2.0, "max_duration_s": 30.0},
                     eval_input=None, eval_batch_size=1, workdir=workdir / "bench", tag="t", timeout_s=900.0)
    return {int(b): float(np.median(s)) for b, s in res["a"].data["samples_ms"].items()}


def speed(archs, threads_list, batch_sizes):
    rows = []
    for arch in archs:
        for threads in threads_list:
            for name, quant, extra in VARIANTS:
                with tempfile.TemporaryDirectory(prefix="bench_pt2e_") as tmp:
                    art, seconds = build(arch, quant, extra, threads, Path(tmp))
                    ms = time_artifact(art, threads, Path(tmp), batch_sizes)
                    size = os.path.getsize(art.path)
                rows.append({"arch": arch, "threads": threads, "variant": name, "ms": ms, "build_s": seconds,
                             "size_mb": size / 1e6, "kernels": art.info.get("compiled_int8_kernels", "")})
                print(f"  {arch} t{threads} {name}: " + ", ".join(f"b{b} {v:.2f} ms" for b, v in ms.items())
                      + f" (build {seconds:.1f} s, {size / 1e6:.1f} MB)", flush=True)
    return rows


def speed_table(rows, batch_sizes) -> str:
    lines = ["| model | threads | variant | " + " | ".join(f"b{b} p50 ms" for b in batch_sizes)
             + " | vs fp32 TorchScript b1 | build s | size MB |",
             "|---|---|---|" + "---|" * len(batch_sizes) + "---|---|---|"]
    for r in rows:
        base = next(x for x in rows if x["arch"] == r["arch"] and x["threads"] == r["threads"]
                    and x["variant"] == "fp32 TorchScript")
        lines.append(f"| {r['arch']} | {r['threads']} | {r['variant']} | "
                     + " | ".join(f"{r['ms'][b]:.2f}" for b in batch_sizes)
                     + f" | {base['ms'][batch_sizes[0]] / r['ms'][batch_sizes[0]]:.2f}x | {r['build_s']:.1f} | "
                     + f"{r['size_mb']:.1f} |")
    return "\n".join(lines)


def accuracy(model: str, data: str, workdir: Path) -> str:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db", BSB_CACHE_DIR=str(workdir / "cache"),
               BSB_JOBS_DIR=str(workdir / "jobs"))
    cmd = [sys.executable, "-m", "bsb_hydra", "-m", f"model={model}", f"data={data}", "quant=fp32,static",
           "backend=pytorch", "backend.flow=pt2e,fx", "peak.enabled=false", "benchmark.profile=never",
           f"mlflow.artifact_root={workdir}/artifacts", f"hydra.sweep.dir={workdir}/sweep"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("bsb-hydra")
    lines = ["| cell | flow | accuracy | delta vs fp32 (pp, 95% CI) | top-1 agreement with fp32 | p50 b1 ms "
             "| speedup b1 |",
             "|---|---|---|---|---|---|---|"]
    from bsb_hydra.metric_names import run_metrics

    for r in client.search_runs([exp.experiment_id]):
        m, t, p = run_metrics(r), r.data.tags, r.data.params
        if t.get("status") != "ok":
            lines.append(f"| {t.get('cell')} | | {t.get('status')}: {t.get('reason', '')[:120]} | | | | |")
            continue
        flow = p.get("backend.flow", "fx" if t["quant"] != "fp32" else "-")
        lines.append(f"| {t['cell']} | {flow} | {100 * m['accuracy']:.2f}% | {m.get('accuracy_delta_pp', 0):+.2f} "
                     f"[{m.get('accuracy_delta_ci_low_pp', 0):+.2f}, {m.get('accuracy_delta_ci_high_pp', 0):+.2f}] | "
                     f"{100 * m.get('top1_agreement', 1):.2f}% | {m['latency_p50_ms_b1']:.3f} | "
                     f"{m.get('speedup_b1', 1):.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,mobilenet_v2")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--accuracy-model", default="cnn")
    ap.add_argument("--accuracy-data", default="digits")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    from bsb_hydra.sysinfo import system_info

    info = system_info()
    print(f"# PT2E vs FX static on pytorch: {info.get('cpu', '?')} ({info['arch']}, ISA {info['isa']}), "
          f"torch {info.get('version_torch', '?')}", flush=True)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if not args.skip_speed:
        rows = speed(args.archs.split(","), [int(t) for t in args.threads.split(",")], batch_sizes)
        print("\n## Speed (random-init weights, 224 px)\n\n" + speed_table(rows, batch_sizes), flush=True)
    if not args.skip_accuracy:
        with tempfile.TemporaryDirectory(prefix="bench_pt2e_acc_") as tmp:
            table = accuracy(args.accuracy_model, args.accuracy_data, Path(tmp))
        print(f"\n## Accuracy (model={args.accuracy_model}, data={args.accuracy_data}, default training)\n\n" + table)


if __name__ == "__main__":
    main()
