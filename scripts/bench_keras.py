"""keras.applications at 224 px through onnxruntime and tflite, every scheme (issue 32's table in docs/report.md):

    python scripts/bench_keras.py [--threads N] [--repeats N] [--limit-test N] [--batch-sizes 1,8]
                                  [--only mobilenet_v2,efficientnet_b0] [--table-only] [hydra overrides]

The models are what a Keras user would bring, built here with ``weights=None`` (no hub download works
offline) and ``classes=10``, then trained briefly on real data in a TensorFlow process of their own:

mobilenet_v2     keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=10);
                 inputs in [-1, 1] (its preprocess_input: x / 127.5 - 1, here data.mean=0.5 data.std=0.5)
efficientnet_b0  keras.applications.EfficientNetB0(weights=None, input_shape=(224, 224, 3), classes=10);
                 inputs in [0, 255] (its rescaling is inside the model: data.mean=0 data.std=1/255)

Data: Fashion-MNIST (the Debian package dataset-fashion-mnist). The npz holds the 28x28 images as NCHW
float32 in [0, 1] (x_train: the seeded training subset the models were trained on, which static
calibration draws from; x_test: the whole t10k split, of which data.limit_test scores a seeded subset); the
tool fits them to the model (data.resize=224 data.channels=3 data.mean/std: bilinear antialiased resize,
gray repeated to 3 channels, then the app's normalisation), and training feeds the same transform
(bsb_hydra.data.transforms.ImageTransform), so train and test inputs are made identically.

Training (TRAIN below; the recipe is written beside each model as <name>.json and into the report): AdamW,
learning rate warmed up over the first 10% of the steps to 2e-3 then cosine-decayed to 0, weight decay
0.01, batch 32, one epoch over a seeded 2048-image subset of the training split (train=realsize's recipe);
then batch norm's moving statistics recomputed as a plain average over 1024 of those images (Keras'
momentum 0.99 leaves them half at their initial values after 64 steps). The weights are far from
converged: accuracy is low and stated as such; latency, size and agreement with fp32 do not depend on it.

Writes the models and data under .cache/bench_keras (reused when present), sweeps each model into the
MLflow experiment bench-keras (force=true: always measured again), and writes docs/report_keras.md
(make report appends it to docs/report.md) with the section spliced into docs/report.md in place."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench_keras"
PY = sys.executable
EXPERIMENT = "bench-keras"  # --experiment changes it (a smoke run kept apart)
FASHION = Path("/usr/share/datasets/fashion-mnist")
TITLE = "## Keras applications at 224 (issue 32)"
NOTES = "### Notes on this table"
TRAIN_SAMPLES, TEST_SAMPLES = 2048, 10000
SCHEMES = ("fp32", "fp16", "dynamic", "static")
BACKENDS = ("onnxruntime", "tflite")

# name -> (keras.applications class, data.mean, data.std, what the normalisation is)
APPS = {
    "mobilenet_v2": ("MobileNetV2", [0.5], [0.5], "x / 127.5 - 1 (MobileNetV2's preprocess_input), i.e. [-1, 1]"),
    "efficientnet_b0": ("EfficientNetB0", [0.0], [1 / 255.0],
                        "pixels in [0, 255] (EfficientNet's rescaling and normalisation layers are inside the model)"),
}

RECIPE = {"images": TRAIN_SAMPLES, "epochs": 1, "batch_size": 32, "optimizer": "AdamW", "lr": 2e-3,
          "weight_decay": 0.01, "warmup_fraction": 0.1, "schedule": "linear warmup then cosine decay to 0",
          "bn_recalibration_images": 1024, "seed": 0}

# The TensorFlow process: build, train, recalibrate batch norm, save. argv: app, mean, std, npz, out, recipe, threads.
TRAIN = r'''
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras
import tensorflow as tf
from bsb_hydra.data.transforms import ImageTransform

app, mean, std, data, out, recipe, threads = sys.argv[1:8]
mean, std, recipe, threads = json.loads(mean), json.loads(std), json.loads(recipe), int(threads)
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
keras.utils.set_random_seed(recipe["seed"])
f = np.load(data)
x, y = f["x_train"], f["y_train"].astype(np.int64)
t = ImageTransform((224, 224), 3, tuple(mean) * 3, tuple(std) * 3)  # what the sweep's data.resize/channels/mean/std do
bs = recipe["batch_size"]


class Batches(keras.utils.PyDataset):
    def __init__(self, order):
        super().__init__()
        self.order = order

    def __len__(self):
        return (len(self.order) + bs - 1) // bs

    def __getitem__(self, i):
        idx = np.sort(self.order[i * bs:(i + 1) * bs])
        return t(x[idx]).transpose(0, 2, 3, 1), y[idx]  # NCHW -> the (H, W, C) Keras takes


model = getattr(keras.applications, app)(weights=None, input_shape=(224, 224, 3), classes=10)
order = np.random.default_rng(recipe["seed"]).permutation(len(x))[:recipe["images"]]
steps = recipe["epochs"] * ((len(order) + bs - 1) // bs)
warm = max(1, int(recipe["warmup_fraction"] * steps))
lr = keras.optimizers.schedules.CosineDecay(0.0, steps - warm, alpha=0.0, warmup_target=recipe["lr"], warmup_steps=warm)
model.compile(keras.optimizers.AdamW(lr, weight_decay=recipe["weight_decay"]),
              keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"], jit_compile=False)
t0 = time.perf_counter()
hist = model.fit(Batches(order), epochs=recipe["epochs"], verbose=2, shuffle=False)
train_s = time.perf_counter() - t0
# batch norm's moving statistics for the final weights: the plain average over the batches below
# (momentum 1 - 1/k at the k-th batch), dropout off meanwhile
bns = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
drops = [l for l in model._flatten_layers() if isinstance(l, keras.layers.Dropout)]
rates = [d.rate for d in drops]
for d in drops:
    d.rate = 0.0
t1 = time.perf_counter()
recal = np.random.default_rng(recipe["seed"] + 1).permutation(len(x))[:recipe["bn_recalibration_images"]]
for k, i in enumerate(range(0, len(recal), 64), 1):
    for b in bns:
        b.momentum = 1.0 - 1.0 / k
    idx = np.sort(recal[i:i + 64])
    model(t(x[idx]).transpose(0, 2, 3, 1), training=True)
for b in bns:
    b.momentum = 0.99
for d, r in zip(drops, rates):
    d.rate = r
recal_s = time.perf_counter() - t1
model.save(out)
info = {**recipe, "app": f"keras.applications.{app}", "params": int(model.count_params()),
        "train_seconds": round(train_s, 1), "bn_recalibration_seconds": round(recal_s, 1),
        "final_train_loss": float(hist.history["loss"][-1]), "final_train_accuracy": float(hist.history["accuracy"][-1]),
        "threads": threads, "tensorflow": tf.__version__, "keras": keras.__version__}
json.dump(info, open(out[:-len(".keras")] + ".json", "w"), indent=1)
print(json.dumps(info))
'''


def fashion(split: str):
    import gzip

    pre = "train" if split == "train" else "t10k"
    x = np.frombuffer(gzip.open(FASHION / f"{pre}-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
    y = np.frombuffer(gzip.open(FASHION / f"{pre}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return x, y


def make_data() -> Path:
    """x_train: a seeded 2048-image subset of the training split; x_test: all of t10k; NCHW float32 in [0, 1]."""
    path = WORK / "fashion28.npz"
    if not path.is_file():
        if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
            raise SystemExit(f"no Fashion-MNIST in {FASHION}: `make setup` installs dataset-fashion-mnist")
        x, y = fashion("train")
        tx, ty = fashion("test")
        idx = np.sort(np.random.default_rng(0).permutation(len(x))[:TRAIN_SAMPLES])
        f32 = lambda a: (a[:, None].astype(np.float32) / 255.0)  # noqa: E731
        np.savez(str(path) + ".tmp.npz", x_train=f32(x[idx]), y_train=y[idx].astype(np.int64), x_test=f32(tx),
                 y_test=ty.astype(np.int64))
        os.replace(str(path) + ".tmp.npz", path)
    return path


def trained(name: str, data: Path, threads: int) -> Path:
    out = WORK / f"{name}_224.keras"
    if out.is_file() and (WORK / f"{name}_224.json").is_file():
        return out
    app, mean, std, _ = APPS[name]
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update(PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
    print(f"training {name} (keras.applications.{app}, weights=None) in a TensorFlow process ...", flush=True)
    tmp = WORK / f"{name}_224.tmp.keras"
    subprocess.run([PY, "-c", TRAIN, app, json.dumps(mean), json.dumps(std), str(data), str(tmp), json.dumps(RECIPE),
                    str(threads)], cwd=ROOT, env=env, check=True)
    os.replace(WORK / f"{name}_224.tmp.json", WORK / f"{name}_224.json")
    os.replace(tmp, out)
    return out


def grid(name: str, model: Path, data: Path, a) -> list:
    _, mean, std, _ = APPS[name]
    fmt = lambda v: "[" + ",".join(repr(float(x)) for x in v) + "]"  # noqa: E731
    return ["model=keras", f"model.path={model}", "data=npz", f"data.path={data}", "data.resize=224", "data.channels=3",
            f"data.mean={fmt(mean)}", f"data.std={fmt(std)}", f"data.limit_test={a.limit_test}",
            f"quant={','.join(SCHEMES)}", f"backend={','.join(BACKENDS)}", f"benchmark.batch_sizes=[{a.batch_sizes}]",
            f"benchmark.repeats={a.repeats}", f"device.threads={a.threads}", f"mlflow.experiment={EXPERIMENT}",
            "benchmark.profile=never", "force=true"]


def others_running(root_pid: int) -> int:
    """Runnable (state R) processes on the machine outside the process tree of root_pid (and of this
    script): what competes with the sweep for the cores. concurrent_jobs counts only bsb_hydra jobs
    registered in this user's jobs folder (the tests register theirs in their own: BSB_JOBS_DIR)."""
    parent, state = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state[int(d)], parent[int(d)] = fields[0], int(fields[1])
    mine = {os.getpid(), root_pid}

    def ours(pid):
        seen = 0
        while pid > 1 and seen < 64:
            if pid in mine:
                return True
            pid, seen = parent.get(pid, 0), seen + 1
        return False

    return sum(1 for pid, st in state.items() if st == "R" and not ours(pid))


def run(name: str, args, extra) -> dict:
    import threading

    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    sweep_dir = ROOT / "multirun_outputs" / f"bench_keras_{name}_{datetime.now():%Y%m%d_%H%M%S}"
    cmd = [PY, "-m", "bsb_hydra", "-m", *args, *extra, f"hydra.sweep.dir={sweep_dir}"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    samples, done = [], threading.Event()

    def sample():  # every 5 s while the sweep runs: the other runnable processes and the load average
        while not done.wait(5.0):
            try:
                samples.append((others_running(proc.pid), os.getloadavg()[0]))
            except Exception:  # never fail the bench over a sample
                pass

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    code = proc.wait()
    done.set()
    th.join()
    other = [o for o, _ in samples] or [0]
    load = [lv for _, lv in samples] or [0.0]
    return {"seconds": round(time.perf_counter() - t0), "exit": code, "samples": len(samples),
            "others_busy_fraction": round(sum(o > 0 for o in other) / len(other), 2),
            "others_mean": round(sum(other) / len(other), 2), "others_max": max(other),
            "load1_mean": round(sum(load) / len(load), 2), "load1_max": round(max(load), 2),
            "sweep_dir": str(sweep_dir)}


# ------------------------------------------------------------------------------------ the table
def latest_runs(client, threads: int):
    from bsb_hydra.metric_names import flat_runs
    from bsb_hydra.tracking import search_all

    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise SystemExit(f"no experiment {EXPERIMENT} in the store: run the sweeps first")
    latest = {}
    for r in sorted(flat_runs(search_all(client, exp.experiment_id, f"tags.threads = '{threads}'")),
                    key=lambda r: r.info.start_time):
        path = r.data.params.get("model.path", "")
        name = next((n for n in APPS if Path(path).name.startswith(f"{n}_224")), None)
        if name:
            latest[(name, r.data.tags.get("quant"), r.data.tags.get("backend"))] = r
    return latest


def cell(r, name, quant, backend) -> str:
    t, m = r.data.tags, r.data.metrics
    head = f"| {name} | {quant} / {backend} | "
    if t.get("status") != "ok":
        reason = " ".join((t.get("reason") or "no reason logged").replace("|", "/").split())[:300]
        return head + f"{t.get('status')}: {reason} |" + " |" * 9
    f = lambda k, fmt: (fmt.format(m[k]) if k in m else "–")  # noqa: E731
    ci = (f" ({m['accuracy_delta_ci_low_pp']:+.2f} to {m['accuracy_delta_ci_high_pp']:+.2f})"
          if quant != "fp32" and "accuracy_delta_ci_low_pp" in m else "")
    delta = f"{m['accuracy_delta_pp']:+.2f}{ci}" if "accuracy_delta_pp" in m else "–"
    conc = int(m.get("concurrent_jobs", 1))
    return head + " | ".join([
        f"{m['size_bytes'] / 1e6:.2f}" if "size_bytes" in m else "–", f("size_ratio", "{:.3f}"),
        f("latency_p50_ms_b1", "{:.2f}"), f("latency_p50_ms_b8", "{:.2f}"),
        f("speedup_b1", "{:.2f}x"), f("speedup_b8", "{:.2f}x"),
        f"{100 * m['accuracy']:.2f}" if "accuracy" in m else "–", delta,
        f"{m['cell_seconds'] / 60:.1f}" if "cell_seconds" in m else "–", str(conc)]) + " |"


def table(threads: int, walls: dict | None) -> str:
    from mlflow import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/mlflow.db")
    latest = latest_runs(MlflowClient(uri), threads)
    if not latest:
        raise SystemExit(f"no runs of {', '.join(APPS)} at {threads} thread(s) in experiment {EXPERIMENT} of {uri}")
    runs = list(latest.values())
    info = next((r.data.tags for r in runs if r.data.tags.get("isa")), runs[0].data.tags)
    p = runs[0].data.params
    ok = [r for r in runs if r.data.tags.get("status") == "ok"]
    split = next((r.data.tags.get("test_split") for r in ok if r.data.tags.get("test_split")), "?")
    samples = sorted({int(r.data.metrics["test_samples"]) for r in ok if "test_samples" in r.data.metrics})
    conc = max((int(r.data.metrics.get("concurrent_jobs", 1)) for r in runs), default=1)
    sizes = p.get("benchmark.batch_sizes", "?")
    lines = [TITLE, "",
             f"Measured {datetime.fromtimestamp(max(r.info.start_time for r in runs) / 1000):%Y-%m-%d} by "
             f"`python scripts/bench_keras.py` (`make bench-keras`) on {info.get('cpu', '?')} ({info.get('arch', '?')}; "
             f"ISA {info.get('isa', '?')}), {threads} thread(s) (device.threads), batch sizes {sizes}, "
             f"{p.get('benchmark.repeats', '?')} fresh worker processes per artifact, the quantized artifact timed "
             "paired with the fp32 artifact of the same backend in the same processes (speedup = fp32 p50 / this p50); "
             "accuracy delta against that fp32 artifact on the same test images, with its paired 95% interval. "
             f"Scored on {split}; test images per cell: {', '.join(map(str, samples)) or '?'}. Size: the artifact's "
             "file (ONNX on onnxruntime, .tflite on tflite). Every figure below is read from the MLflow runs "
             f"(experiment `{EXPERIMENT}`).", ""]
    for name in APPS:
        j = WORK / f"{name}_224.json"
        if not j.is_file() or not any(k[0] == name for k in latest):
            continue
        t = json.loads(j.read_text())
        static = [r for k, r in latest.items() if k[0] == name and k[1] == "static" and "calibration_samples_used" in
                  r.data.metrics]
        calib = ", ".join(sorted({str(int(r.data.metrics["calibration_samples_used"])) for r in static})) or "?"
        lines.append(f"- **{name}**: `{t['app']}(weights=None, input_shape=(224, 224, 3), classes=10)`, "
                     f"{t['params'] / 1e6:.2f} M parameters, input {APPS[name][3]}. Trained here (TensorFlow "
                     f"{t['tensorflow']}, Keras {t['keras']}, {t['threads']} threads) from random initialisation: "
                     f"{t['epochs']} epoch over {t['images']} Fashion-MNIST training images (a seeded subset; 28x28 "
                     f"resized to 224 bilinear, gray repeated to 3 channels), batch {t['batch_size']}, {t['optimizer']} "
                     f"(lr {t['lr']:g}, {t['schedule']} with {int(100 * t['warmup_fraction'])}% warmup, weight decay "
                     f"{t['weight_decay']:g}), {t['train_seconds'] / 60:.1f} min; final training loss "
                     f"{t['final_train_loss']:.3f} (running accuracy {100 * t['final_train_accuracy']:.1f}%); batch "
                     f"norm's moving statistics then recomputed over {t['bn_recalibration_images']} training images "
                     f"({t['bn_recalibration_seconds']:.0f} s). Static int8 calibrated on {calib} of those training images "
                     "(quant.samples).")
    lines += ["", "| model | scheme / backend | size MB | x fp32 | p50 b1 ms | p50 b8 ms | speedup b1 | speedup b8 | "
              "accuracy % | delta pp (95% CI) | min/cell | concurrent jobs |", "|" + "---|" * 12]
    order = {q: i for i, q in enumerate(SCHEMES)}
    for (name, quant, backend), r in sorted(latest.items(), key=lambda kv: (list(APPS).index(kv[0][0]), kv[0][2],
                                                                            order.get(kv[0][1], 9))):
        lines.append(cell(r, name, quant, backend))
    missing = [f"{n} {q}/{b}" for n in APPS for b in BACKENDS for q in SCHEMES
               if (n, q, b) not in latest and any(k[0] == n for k in latest)]
    if missing:
        lines += ["", f"Not in the store (no run logged): {', '.join(missing)}."]
    lines.append("")
    if conc > 1:
        lines.append(f"**Timings disturbed**: up to {conc} bsb_hydra jobs ran on this machine while cells were timed "
                     "(the runs' concurrent_jobs, last column); their latencies and speedups are distorted. Re-run on a "
                     "quiet machine: `make bench-keras` (or the command below).")
    else:
        lines.append("concurrent_jobs was 1 for every cell (no other bsb_hydra job of this user was seen while timing); "
                     "other processes on the machine are not counted by that tag: see the load averages below.")
    if walls:
        lines.append("")
        lines.append("Wall time of each sweep, and what else ran on the machine meanwhile (sampled every 5 s: "
                     "runnable processes outside the sweep's process tree, e.g. tests run beside it, whose jobs "
                     "concurrent_jobs does not see; and the 1-minute load average, the sweep's own processes "
                     f"included; {os.cpu_count()} cores): " + "; ".join(
                         f"{n} {w['seconds'] / 60:.1f} min (exit {w['exit']}; other runnable processes present in "
                         f"{100 * w.get('others_busy_fraction', 0):.0f}% of {w.get('samples', 0)} samples, mean "
                         f"{w.get('others_mean', 0)}, max {w.get('others_max', 0)}; load mean {w.get('load1_mean', '?')}, "
                         f"max {w.get('load1_max', '?')})" for n, w in walls.items()) + ".")
        if any(w.get("others_busy_fraction", 0) >= 0.25 for w in walls.values()):
            lines.append("")
            lines.append("**Timings disturbed**: other processes competed for the cores during a large part of the "
                         "sweep(s) above, so latencies and speedups are distorted (the paired speedups less than the "
                         f"p50s). Re-run on a quiet machine: `make bench-keras ARGS='{' '.join(sys.argv[1:])}'`.")
    return "\n".join(lines) + "\n"


def write_report(text: str, out: Path = ROOT / "docs" / "report_keras.md", title: str = TITLE) -> None:
    """``out`` (docs/report_keras.md; make report appends it), its hand-written notes (after NOTES)
    kept, and the section starting at ``title`` replaced or appended in docs/report.md.
    scripts/bench_runtimes.py writes its own file through it."""
    old = out.read_text() if out.is_file() else ""
    notes = old.split(NOTES, 1)[1] if NOTES in old else ""
    section = text + (f"\n{NOTES}{notes}" if notes else "")
    out.write_text(section)  # the hand-written notes stay
    report = ROOT / "docs" / "report.md"
    body = report.read_text() if report.is_file() else ""
    if title in body:
        before, after = body.split(title, 1)
        nxt = after.find("\n## ")
        body = before + section.rstrip("\n") + ("\n" + after[nxt:] if nxt >= 0 else "\n")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    report.write_text(body)


def main() -> int:
    global EXPERIMENT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="device.threads of the sweeps (training uses every core)")
    ap.add_argument("--repeats", type=int, default=3, help="benchmark.repeats: fresh processes per artifact")
    ap.add_argument("--limit-test", type=int, default=1000, help="data.limit_test: seeded test subset per cell")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment of the sweeps and the table")
    ap.add_argument("--only", default=",".join(APPS), help=f"comma-separated, of {', '.join(APPS)}")
    ap.add_argument("--table-only", action="store_true", help="write the table from the runs already in the store")
    ap.add_argument("--no-report", action="store_true", help="print the table, leave docs/ alone")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every sweep")
    a = ap.parse_args()
    EXPERIMENT = a.experiment
    wanted = [n.strip() for n in a.only.split(",") if n.strip()]
    bad = [n for n in wanted if n not in APPS]
    if bad:
        ap.error(f"--only {','.join(bad)}: valid models are {', '.join(APPS)}")
    walls = None
    if not a.table_only:
        WORK.mkdir(parents=True, exist_ok=True)
        data = make_data()
        walls = {}
        for n in wanted:
            t0 = time.perf_counter()
            model = trained(n, data, os.cpu_count() or 1)
            print(f"{n}: model ready in {time.perf_counter() - t0:.0f} s ({model})", flush=True)
            walls[n] = run(n, grid(n, model, data, a), a.overrides)
        print(json.dumps(walls), flush=True)
        (WORK / f"walls_threads{a.threads}.json").write_text(json.dumps(walls))
    elif (WORK / f"walls_threads{a.threads}.json").is_file():  # the last sweeps' wall times
        walls = json.loads((WORK / f"walls_threads{a.threads}.json").read_text())
    text = table(a.threads, walls)
    if not a.no_report:
        write_report(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
