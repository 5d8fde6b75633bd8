"""Every runtime side by side on real-size models (issue 33's table in docs/report_runtimes.md):

    python scripts/bench_runtimes.py [--threads 1,2] [--repeats N] [--limit-test N] [--table-only]
                                     [hydra overrides]

Per thread count: experiment=runtimes_grid (torchvision resnet18 and mobilenet_v2 at 224 px, trained with
their default preset, x fp32, static x pytorch, onnxruntime, tflite, executorch, openvino, batch 1 and 8),
and pytorch's static cell once more on the FX flow (backend.flow=fx, torch.ao) beside the default PT2E
one. Every quantized cell is timed paired with the fp32 artifact of its own backend in the same worker
processes; benchmark.profile=below_peak profiles the int8 cells short of the machine's limit, so the
table can name the ops that stop them.

Targets (PASS / FAIL in the report):
- PT2E static is no slower than FX static (p50, each model and batch size) and no less accurate: FX's
  accuracy delta lies at or below the upper end of PT2E's paired 95% interval;
- OpenVINO static is at least as fast as ORT static on resnet18 (p50, each batch size);
- on mobilenet_v2 the best int8 cell over every backend is at least 2.5x the best fp32 cell over every
  backend (p50, each batch size), or the profiles of the int8 cells name what stops it.

The sweeps go to the MLflow experiment bench-runtimes (force=true). The machine's load is sampled while
they run (other runnable processes), and the report says how busy it was."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "bench-runtimes"
MODELS = ("resnet18", "mobilenet_v2")
BACKENDS = ("pytorch", "onnxruntime", "tflite", "executorch", "openvino")
TITLE = "## Every runtime on real-size models (issue 33)"
DOC = ROOT / "docs" / "report_runtimes.md"


def _bench_keras():
    """scripts/bench_keras.py's sweep runner with load sampling (run, others_running)."""
    spec = importlib.util.spec_from_file_location("bench_keras", ROOT / "scripts" / "bench_keras.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sweeps(threads: int, a) -> list:
    common = [f"device.threads={threads}", f"benchmark.repeats={a.repeats}", f"data.limit_test={a.limit_test}",
              f"mlflow.experiment={EXPERIMENT}", "benchmark.profile=below_peak", "force=true", *a.overrides]
    return [("grid", ["experiment=runtimes_grid", *common]),
            ("fx", ["model=torchvision", "model.arch=" + ",".join(MODELS), "quant=static", "backend=pytorch",
                    "backend.flow=fx", "benchmark.batch_sizes=[1,8]", *common])]


# ------------------------------------------------------------------------------------ the table
def flow(r) -> str:
    """pytorch's flow: a flow=fx cell logs no backend.flow param (the value every pytorch run before the
    key measured keeps its config_hash), a pt2e one logs it and the build.flow tag."""
    if r.data.tags.get("backend") != "pytorch":
        return ""
    return r.data.params.get("backend.flow") or r.data.tags.get("build.flow") or "fx"


def latest_runs(client, threads: int) -> dict:
    from bsb_hydra.metric_names import flat_runs
    from bsb_hydra.tracking import search_all

    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise SystemExit(f"no experiment {EXPERIMENT} in the store: run the sweeps first")
    latest = {}
    for r in sorted(flat_runs(search_all(client, exp.experiment_id, f"tags.threads = '{threads}'")),
                    key=lambda r: r.info.start_time):
        t = r.data.tags
        if t.get("model") in MODELS and t.get("kind") != "peak":
            latest[(t["model"], t.get("quant"), t.get("backend"), flow(r))] = r
    return latest


def _f(m, k, fmt):
    return fmt.format(m[k]) if k in m else "–"


def best_fp32(latest, model: str, b: int):
    """(p50, backend) of the fastest fp32 cell of the model at batch b, over every backend."""
    cands = [(r.data.metrics[f"latency_p50_ms_b{b}"], k[2]) for k, r in latest.items()
             if k[0] == model and k[1] == "fp32" and r.data.tags.get("status") == "ok"
             and f"latency_p50_ms_b{b}" in r.data.metrics]
    return min(cands) if cands else None


def row(latest, key, r) -> str:
    model, quant, backend, fl = key
    t, m = r.data.tags, r.data.metrics
    name = f"{quant} / {backend}" + (f" ({fl})" if fl and quant != "fp32" else "")
    head = f"| {model} | {name} | "
    if t.get("status") != "ok":
        reason = " ".join((t.get("reason") or "no reason logged").replace("|", "/").split())[:300]
        return head + f"{t.get('status')}: {reason} |" + " |" * 11
    vs = []
    for b in (1, 8):
        best = best_fp32(latest, model, b)
        vs.append(f"{best[0] / m[f'latency_p50_ms_b{b}']:.2f}x ({best[1]})" if best and f"latency_p50_ms_b{b}" in m
                  else "–")
    ci = (f" ({m['accuracy_delta_ci_low_pp']:+.2f} to {m['accuracy_delta_ci_high_pp']:+.2f})"
          if quant != "fp32" and "accuracy_delta_ci_low_pp" in m else "")
    delegated = t.get("build.delegated_share") or t.get("build.delegated") or ""
    return head + " | ".join([
        f"{m['size_bytes'] / 1e6:.1f}" if "size_bytes" in m else "–", _f(m, "size_ratio", "{:.3f}"),
        _f(m, "latency_p50_ms_b1", "{:.2f}"), _f(m, "latency_p50_ms_b8", "{:.2f}"),
        _f(m, "speedup_b1", "{:.2f}x"), _f(m, "speedup_b8", "{:.2f}x"), *vs,
        f"{100 * m['accuracy']:.2f}" if "accuracy" in m else "–",
        (f"{m['accuracy_delta_pp']:+.2f}{ci}" if "accuracy_delta_pp" in m else "–"),
        f"{m['cell_seconds'] / 60:.1f}" if "cell_seconds" in m else "–",
        str(delegated)[:40] or "–"]) + " |"


def op_family(name: str) -> str:
    """A profiled op without its precision, so an int8 op meets its fp32 twin: ``Convolution (NHWC, QC8)
    DWConv`` and ``Convolution (NHWC, F32) DWConv`` -> ``Convolution DWConv`` (XNNPACK's names, through
    ExecuTorch), ``GroupConvolution[I8]`` -> ``GroupConvolution`` (OpenVINO's). An int8 op a runtime
    names differently (ORT's QLinearConv against Conv) meets no twin and is not compared."""
    name = re.sub(r"\s+#\d+$", "", name)
    name = re.sub(r"\s*\([^)]*\)|\[[^\]]*\]", "", name)
    return " ".join(name.split())


def op_gains(profile: dict) -> list:
    """[(op family, fp32 ms, int8 ms)] from a cell's profile.json: its int8 artifact's ops and those of
    the fp32 reference profiled beside it (same batch, same threads), largest int8 time first."""
    sides = []
    for side in ("ref", "cell"):
        per = defaultdict(float)
        for o in (profile.get(side) or {}).get("ops") or []:
            if o.get("ms_per_run") is not None:
                per[op_family(o["op"])] += o["ms_per_run"]
        sides.append(per)
    fp32, int8 = sides
    if not fp32 or not int8:
        return []
    return sorted(((k, fp32.get(k), v) for k, v in int8.items()), key=lambda t: -t[2])


def stoppers(client, latest, model: str, target: float = 2.5, share: float = 0.10) -> list:
    """What keeps a model's int8 cells under ``target`` x their fp32, named by the profiles that time
    ops (benchmark.profile=below_peak profiles each static cell short of the machine's limit, with its
    fp32 reference, at the smallest batch): per backend, the ops holding at least ``share`` of the int8
    time that gained less than ``target`` over their fp32 twins. TFLite's Python interpreter times no
    op (its profile counts the nodes on XNNPACK); ExecuTorch runs XNNPACK's operators too and times them."""
    import json
    import tempfile

    out = []
    for (m, quant, backend, _), r in sorted(latest.items()):
        if m != model or quant != "static" or r.data.tags.get("status") != "ok":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                gains = op_gains(json.loads(Path(client.download_artifacts(r.info.run_id, "profile.json", tmp)).read_text()))
            except Exception:  # no profile logged (the cell was at its limit), or one that times nothing
                continue
        total = sum(g[2] for g in gains) or 1.0
        named = [f"{fam} {f32:.2f} -> {i8:.2f} ms ({f32 / i8:.2f}x, {100 * i8 / total:.0f}% of int8)"
                 for fam, f32, i8 in gains if f32 and i8 > 0 and i8 / total >= share and f32 / i8 < target]
        if named:
            out.append(f"{backend}: " + ", ".join(named))
    return out


def targets(latest, client=None) -> list:
    """[(target, measured, result)] of the issue's three targets at this thread count."""
    out = []

    def ok(k):
        r = latest.get(k)
        return r if r is not None and r.data.tags.get("status") == "ok" else None

    for model in MODELS:
        pt2e, fx = ok((model, "static", "pytorch", "pt2e")), ok((model, "static", "pytorch", "fx"))
        if pt2e is None or fx is None:
            out.append((f"{model}: PT2E static no slower, no less accurate than FX static",
                        "missing: " + ", ".join(n for n, r in (("pt2e", pt2e), ("fx", fx)) if r is None), "FAIL"))
            continue
        pm, fm = pt2e.data.metrics, fx.data.metrics
        speed = [fm[f"latency_p50_ms_b{b}"] / pm[f"latency_p50_ms_b{b}"] for b in (1, 8)]
        acc_ok = fm["accuracy_delta_pp"] <= pm.get("accuracy_delta_ci_high_pp", pm["accuracy_delta_pp"])
        out.append((f"{model}: PT2E static no slower than FX static (FX p50 / PT2E p50, b1, b8)",
                    f"{speed[0]:.2f}x, {speed[1]:.2f}x", "PASS" if min(speed) >= 1.0 else "FAIL"))
        out.append((f"{model}: PT2E static no less accurate than FX (FX delta <= PT2E's upper 95% bound)",
                    f"PT2E {pm['accuracy_delta_pp']:+.2f} pp (CI to {pm.get('accuracy_delta_ci_high_pp', float('nan')):+.2f}), "
                    f"FX {fm['accuracy_delta_pp']:+.2f} pp", "PASS" if acc_ok else "FAIL"))
    ov, ort = ok(("resnet18", "static", "openvino", "")), ok(("resnet18", "static", "onnxruntime", ""))
    if ov is None or ort is None:
        out.append(("resnet18: OpenVINO static at least as fast as ORT static", "a cell is missing or not ok", "FAIL"))
    else:
        r = [ort.data.metrics[f"latency_p50_ms_b{b}"] / ov.data.metrics[f"latency_p50_ms_b{b}"] for b in (1, 8)]
        out.append(("resnet18: OpenVINO static at least as fast as ORT static (ORT p50 / OV p50, b1, b8)",
                    f"{r[0]:.2f}x, {r[1]:.2f}x", "PASS" if min(r) >= 1.0 else "FAIL"))
    for b in (1, 8):
        best = best_fp32(latest, "mobilenet_v2", b)
        int8 = [(r.data.metrics[f"latency_p50_ms_b{b}"], k) for k, r in latest.items()
                if k[0] == "mobilenet_v2" and k[1] == "static" and r.data.tags.get("status") == "ok"
                and f"latency_p50_ms_b{b}" in r.data.metrics]
        if not best or not int8:
            out.append((f"mobilenet_v2 b{b}: best int8 >= 2.5x best fp32", "no ok cells", "FAIL"))
            continue
        p50, k = min(int8)
        ratio = best[0] / p50
        why, named = "", []  # NAMED only by profiles that time ops against their fp32 twins
        if ratio < 2.5:
            r = latest[k]
            why = "; profile of the best int8 cell: " + (r.data.tags.get("why_short_of_peak") or r.data.tags.get(
                "why_slow") or "none logged")[:300]
            named = stoppers(client, latest, "mobilenet_v2") if client is not None else []
            if named:
                why += ("; ops under 2.5x at b1 (fp32 -> int8 ms per call, from the int8 cells' profiles): "
                        + "; ".join(named))
        out.append((f"mobilenet_v2 b{b}: best int8 ({k[2]}{' ' + k[3] if k[3] else ''}) / best fp32 ({best[1]})",
                    f"{ratio:.2f}x{why}", "PASS" if ratio >= 2.5 else ("NAMED" if named else "FAIL")))
    return out


def table(threads: int, load: dict | None) -> str:
    from mlflow import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/mlflow.db")
    client = MlflowClient(uri)
    latest = latest_runs(client, threads)
    if not latest:
        raise SystemExit(f"no runs at {threads} thread(s) in experiment {EXPERIMENT} of {uri}")
    runs = list(latest.values())
    info = next((r.data.tags for r in runs if r.data.tags.get("isa")), runs[0].data.tags)
    p = runs[0].data.params
    ok = [r for r in runs if r.data.tags.get("status") == "ok"]
    split = next((r.data.tags.get("test_split") for r in ok if r.data.tags.get("test_split")), "?")
    lines = [f"### {threads} thread(s)", "",
             f"Measured {datetime.fromtimestamp(max(r.info.start_time for r in runs) / 1000):%Y-%m-%d} by "
             f"`python scripts/bench_runtimes.py` (`make bench-runtimes`) on {info.get('cpu', '?')} "
             f"({info.get('arch', '?')}; ISA {info.get('isa', '?')}), {threads} thread(s), batch 1 and 8, "
             f"{p.get('benchmark.repeats', '?')} fresh worker processes per artifact; scored on {split}. "
             "Speedup: paired against the fp32 artifact of the same backend in the same processes; 'vs best fp32': "
             "the fastest fp32 cell of the model at that batch over every backend (named) / this cell's p50."
             + (f" Machine load while the sweeps ran: other runnable processes in {100 * load['others_busy_fraction']:.0f}% "
                f"of {load['samples']} samples (mean {load['others_mean']})." if load else ""), "",
             "| model | scheme / backend | size MB | x fp32 | p50 b1 ms | p50 b8 ms | speedup b1 | speedup b8 | "
             "vs best fp32 b1 | vs best fp32 b8 | accuracy % | delta pp (95% CI) | min/cell | delegated |",
             "|" + "---|" * 14]
    order = {b: i for i, b in enumerate(BACKENDS)}
    for key, r in sorted(latest.items(), key=lambda kv: (kv[0][0], order.get(kv[0][2], 9), kv[0][1], kv[0][3])):
        lines.append(row(latest, key, r))
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {res} |" for t, m, res in targets(latest, client)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated device.threads values (default 1,2)")
    ap.add_argument("--repeats", type=int, default=2, help="fresh worker processes per artifact (default 2)")
    ap.add_argument("--limit-test", type=int, default=2000, help="test images scored per cell (default 2000)")
    ap.add_argument("--table-only", action="store_true", help="only write the table from the runs in the store")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every sweep")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    loads = {}
    if not a.table_only:
        bk = _bench_keras()
        for t in threads:
            for name, args in sweeps(t, a):
                res = bk.run(f"runtimes_{name}_t{t}", args, [])
                print(f"{name}, {t} thread(s): {res['seconds'] / 60:.1f} min, exit {res['exit']}", flush=True)
                prev = loads.get(t)
                loads[t] = res if prev is None else {
                    "samples": prev["samples"] + res["samples"],
                    "others_busy_fraction": round((prev["others_busy_fraction"] * prev["samples"] + res[
                        "others_busy_fraction"] * res["samples"]) / max(1, prev["samples"] + res["samples"]), 2),
                    "others_mean": max(prev["others_mean"], res["others_mean"])}
    sections = [table(t, loads.get(t)) for t in threads]
    text = TITLE + "\n\n" + "\n\n".join(sections) + "\n"
    write(text)
    print(text)
    print(f"written to {DOC.relative_to(ROOT)} and its section of docs/report.md")
    return 0


def write(text: str) -> None:
    """docs/report_runtimes.md gets the new tables, its hand-written notes (after the NOTES heading)
    kept; the same section replaces its earlier copy in docs/report.md (`make report` rebuilds that
    file and appends this one)."""
    _bench_keras().write_report(text, DOC, TITLE)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
