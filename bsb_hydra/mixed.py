"""Per-layer sensitivity and accuracy-aware mixed precision (``quant=auto``).

A backend that can keep chosen layers in float while the rest is static int8 implements two hooks:

    mixed_layers(ctx) -> {layer name: its float weight (numpy)}   (the layers it can quantize)
    build_mixed(ctx, out, float_layers) -> Artifact               (static int8, those layers float)

and may implement prebuild_mixed(ctx, float_sets) to build the analysis's models in one batch.

Everything else is here and the same for every backend:

1. Sensitivity. On a selection subset of the TRAINING split (disjoint from the calibration samples;
   the test split is never seen by the search), evaluated in-process with the backend's own runner:
   the fp32 artifact, the full int8 model, and for each layer L the model with only L in int8
   ("quantize one") and the model with every layer but L in int8 ("keep one float"). For each:
   accuracy and the SQNR of the logits against fp32, 20*log10(|x| / |x - x_q|). Plus, for L's weight
   alone after a symmetric int8 round trip (per channel or per tensor, as configured), its SQNR and
   the fraction of its nonzero weights that int8 rounds to zero.
2. Ranking. Layers by the accuracy that keeping them float recovers, then by the logits SQNR it
   recovers.
3. Search. Keep the top-k in float, k = 1, 2, 4, ... until the selection accuracy drop is within
   the budget, then bisect down to the smallest such k, within quant.max_trials builds. Every trial
   (k, layers, accuracy, SQNR, size, an in-process batch-1 p50) is logged.

The chosen model is then measured by the same harness as every other cell (test split, fresh
processes), so its reported accuracy delta is the test split's, which may differ from the selection
subset's: ``auto_budget_met_test`` records whether the budget held there too."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from bsb_hydra.backends import BACKENDS
from bsb_hydra.backends.base import Artifact, BuildContext, Unsupported, copy_artifact

TRIAL_LATENCY_RUNS = 200
# Samples of the selection subset whose per-layer activations are compared (all tensors held at once)
ACTIVATION_SAMPLES = 256


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """20*log10(|ref| / |ref - x|) over all elements; inf when identical."""
    ref = np.asarray(ref, dtype=np.float64)
    noise = np.linalg.norm(ref - np.asarray(x, dtype=np.float64))
    signal = np.linalg.norm(ref)
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return float(20.0 * math.log10(signal / noise))


def int8_round_trip(w: np.ndarray, per_channel: bool, axis: int = 0) -> np.ndarray:
    """Symmetric int8 (-127..127) quantize-dequantize of a weight, per output channel or per tensor."""
    w = np.asarray(w, dtype=np.float64)
    if per_channel and w.ndim > 1:
        reduce = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        amax = np.max(np.abs(w), axis=reduce, keepdims=True)
    else:
        amax = np.max(np.abs(w))
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.round(w / scale), -127, 127) * scale


def selection_indices(n_train: int, n: int, seed: int, exclude: np.ndarray) -> np.ndarray:
    """``n`` training-split indices, chosen with the seed, none of them a calibration sample."""
    pool = np.setdiff1d(np.arange(n_train), exclude if exclude is not None else [])
    if len(pool) == 0:
        raise ValueError("no training samples are left for the selection subset after the calibration samples")
    n = min(n, len(pool))
    return np.sort(np.random.default_rng(seed + 2).choice(pool, size=n, replace=False))


class Evaluator:
    """Runs artifacts in this process through the backend's Runner on the selection subset."""

    def __init__(self, backend, ctx: BuildContext, x: np.ndarray, y: np.ndarray, engine: str) -> None:
        self.runner_cls = BACKENDS.runner(backend.name)
        self.settings = backend.runner_settings(ctx.cfg, engine)
        self.threads = ctx.cfg.device.threads
        self.batch = ctx.cfg.benchmark.eval_batch_size
        self.x, self.y = x, y

    def _runner(self, art: Artifact):
        import warnings

        with warnings.catch_warnings():  # torch.jit.load's deprecation notice, once per trial
            warnings.simplefilter("ignore", FutureWarning)
            return self.runner_cls(str(art.path), self.threads, art.input_dtype, self.settings)

    def logits(self, art: Artifact) -> np.ndarray:
        r = self._runner(art)
        out = [r.to_numpy(r.run(r.prepare(self.x[i:i + self.batch]))) for i in range(0, len(self.x), self.batch)]
        return np.concatenate(out).astype(np.float32)

    def p50_ms_b1(self, art: Artifact) -> float:
        """Indicative only (in this process, beside the search): the harness measures the final cell."""
        from bsb_hydra.bench.worker import time_batch

        samples = time_batch(self._runner(art), self.x[:1], 20, TRIAL_LATENCY_RUNS, 0.2, 2.0)
        return float(np.median(samples))


def _row(ev: Evaluator, art: Artifact, ref_logits: np.ndarray) -> Dict[str, float]:
    return _scores(ev.logits(art), ev.y, ref_logits)


def _scores(logits: np.ndarray, y: np.ndarray, ref_logits: np.ndarray) -> Dict[str, float]:
    return {"accuracy": float(np.mean(logits.argmax(1) == y)), "sqnr_db": sqnr_db(ref_logits, logits),
            "agreement": float(np.mean(logits.argmax(1) == ref_logits.argmax(1)))}


def analyze(backend, ctx: BuildContext, ev: Evaluator, fp32_art: Artifact, workdir: Path):
    """The sensitivity table: one row per layer, plus the fp32 and full-int8 references."""
    layers = backend.mixed_layers(ctx)
    if not layers:
        raise Unsupported(f"{backend.name} found no quantizable weight layers in model={ctx.cfg.model.name}")
    names = list(layers)
    per_channel = ctx.cfg.quant.granularity.value == "per_channel"
    ref = ev.logits(fp32_art)
    d = workdir / "analysis"
    d.mkdir(parents=True, exist_ok=True)

    def variant(name: str, float_layers) -> Dict[str, float]:
        """One variant's row: scored in this process where the backend has a reference of its int8
        arithmetic (Backend.mixed_logits: pytorch's PT2E module), else built and run by the Runner."""
        logits = backend.mixed_logits(ctx, float_layers, ev.x, ev.batch)
        if logits is None:
            return _row(ev, backend.build_mixed(ctx, d / f"{name}{backend.suffix}", float_layers), ref)
        return _scores(logits, ev.y, ref)

    int8_logits = backend.mixed_logits(ctx, [], ev.x, ev.batch)
    scored_in_process = int8_logits is not None
    acts = {}
    if scored_in_process:
        full = _scores(int8_logits, ev.y, ref)
    else:
        # every build below in one batch, where the backend can (tflite: one TensorFlow start-up)
        backend.prebuild_mixed(ctx, [[]] + [[n for n in names if n != name] for name in names] + [[n] for n in names])
        int8_art = backend.build_mixed(ctx, d / f"int8{backend.suffix}", [])
        full = _row(ev, int8_art, ref)
        # Per-layer activations, where the backend can expose them (onnxruntime): each layer's output in
        # the all-int8 model, and its activation through its own int8 grid alone, against fp32.
        acts = backend.layer_activation_sqnr(ctx, int8_art.path, ev.x[:ACTIVATION_SAMPLES])
    fp32 = {"accuracy": float(np.mean(ref.argmax(1) == ev.y)), "sqnr_db": math.inf, "agreement": 1.0}
    rows = []
    for i, name in enumerate(names):
        w, axis = layers[name]
        wq = int8_round_trip(w, per_channel, axis)
        nonzero = np.asarray(w) != 0
        only = variant(f"only{i}", [n for n in names if n != name])
        keep = variant(f"keep{i}", [name])
        rows.append({
            "layer": name, "params": int(np.asarray(w).size),
            "weight_sqnr_db": sqnr_db(w, wq),
            "activation_sqnr_db": acts.get(name, {}).get("activation_sqnr_db", math.nan),
            "output_sqnr_db": acts.get(name, {}).get("output_sqnr_db", math.nan),
            # SQNR is dominated by the largest weights: an outlier that widens the scale until the
            # rest round to zero barely moves it. This says how many weights int8 wiped out.
            "weight_zeroed_fraction": float(np.mean(wq[nonzero] == 0)) if nonzero.any() else 0.0,
            "only_int8_accuracy_delta_pp": 100.0 * (only["accuracy"] - fp32["accuracy"]),
            "only_int8_sqnr_db": only["sqnr_db"],
            "keep_float_accuracy_delta_pp": 100.0 * (keep["accuracy"] - fp32["accuracy"]),
            "keep_float_sqnr_db": keep["sqnr_db"],
            "keep_float_recovers_pp": 100.0 * (keep["accuracy"] - full["accuracy"]),
        })
    rows.sort(key=lambda r: (-r["keep_float_recovers_pp"], -r["keep_float_sqnr_db"], r["only_int8_sqnr_db"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    shutil.rmtree(d, ignore_errors=True)
    scored_on = (f"{backend.name}'s reference module, in process (Backend.mixed_logits)" if scored_in_process
                 else f"{backend.name}'s artifacts, run by its runtime")
    return {"fp32": fp32, "int8": full, "layers": rows, "scored_on": scored_on}


def search(backend, ctx: BuildContext, ev: Evaluator, table, fp32_art: Artifact, workdir: Path):
    """Smallest top-k float set within the budget, in at most quant.max_trials builds."""
    q = ctx.cfg.quant
    ranked = [r["layer"] for r in table["layers"]]
    budget = q.budget_for(table["fp32"]["accuracy"])  # allowed drop, as a fraction
    ref = ev.logits(fp32_art)
    d = workdir / "trials"
    d.mkdir(parents=True, exist_ok=True)
    trials: List[Dict] = []

    def trial(k: int) -> Dict:
        art = backend.build_mixed(ctx, d / f"k{k}{backend.suffix}", ranked[:k])
        row = _row(ev, art, ref)
        t = {"trial": len(trials) + 1, "k": k, "float_layers": ranked[:k], **row,
             "accuracy_delta_pp": 100.0 * (row["accuracy"] - table["fp32"]["accuracy"]),
             "within_budget": table["fp32"]["accuracy"] - row["accuracy"] <= budget + 1e-12,
             "size_bytes": art.path.stat().st_size, "p50_ms_b1_in_process": ev.p50_ms_b1(art),
             "path": str(art.path), "input_dtype": art.input_dtype, "info": art.info}
        trials.append(t)
        return t

    first = trial(0)  # the full int8 model: within budget already?
    lo, hi = (None, 0) if first["within_budget"] else (0, None)
    k = 1
    while hi is None and len(trials) < q.max_trials and lo < len(ranked):
        k = min(max(1, 2 * lo), len(ranked)) if lo else 1
        if trial(k)["within_budget"]:
            hi = k
        else:
            lo = k
    while hi is not None and lo is not None and hi - lo > 1 and len(trials) < q.max_trials:
        mid = (lo + hi) // 2
        if trial(mid)["within_budget"]:
            hi = mid
        else:
            lo = mid
    met = hi is not None
    if met:
        chosen = next(t for t in trials if t["k"] == hi and t["within_budget"])
    else:  # the budget was not reached: the best accuracy found, said plainly
        chosen = max(trials, key=lambda t: (t["accuracy"], -t["k"]))
    return {"budget_drop_pp": 100.0 * budget, "budget_met": met, "chosen": chosen, "trials": trials,
            "ranked": ranked}


def _db(v) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.1f}"


def _markdown(table, result, cfg) -> str:
    lines = [f"# Sensitivity: model={cfg.model.name} backend={cfg.backend.name} "
             f"({cfg.quant.granularity.value} static int8, selection subset of the training split)", "",
             f"fp32 accuracy {100 * table['fp32']['accuracy']:.2f}%, full int8 {100 * table['int8']['accuracy']:.2f}% "
             f"(logits SQNR {table['int8']['sqnr_db']:.1f} dB)", "",
             "SQNR columns are against fp32, in dB (higher is better). weight: the layer's weight through its "
             "int8 grid alone. activation: its output activation through its own calibrated int8 grid alone. "
             "output in int8 model: its output in the all-int8 model (error accumulated up to it). "
             "only int8 / kept float: the model's logits with only this layer int8 / only this layer float. "
             "n/a: the backend does not expose that tensor.", "",
             f"Variants scored on {table['scored_on']}; the search's trials below are built artifacts.", "",
             "| rank | layer | params | weight SQNR | weights zeroed | activation SQNR | output in int8 model SQNR | "
             "only int8: d pp | only int8: SQNR | kept float: d pp | kept float: SQNR | kept float recovers pp |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table["layers"]:
        lines.append(f"| {r['rank']} | `{r['layer']}` | {r['params']} | {r['weight_sqnr_db']:.1f} | "
                     f"{100 * r['weight_zeroed_fraction']:.1f}% | {_db(r.get('activation_sqnr_db'))} | "
                     f"{_db(r.get('output_sqnr_db'))} | "
                     f"{r['only_int8_accuracy_delta_pp']:+.2f} | {r['only_int8_sqnr_db']:.1f} | "
                     f"{r['keep_float_accuracy_delta_pp']:+.2f} | {r['keep_float_sqnr_db']:.1f} | "
                     f"{r['keep_float_recovers_pp']:+.2f} |")
    if result is None:  # quant.analyze=true on a static cell: the analysis alone
        return "\n".join(lines) + "\n"
    lines += ["", f"## Search (budget: a drop of at most {result['budget_drop_pp']:.2f} pp; "
                  f"{'met' if result['budget_met'] else 'NOT met'} with {result['chosen']['k']} float layers)", "",
              "| trial | float layers | accuracy % | d pp | logits SQNR dB | size KiB | p50 b1 ms (in-process) |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for t in result["trials"]:
        lines.append(f"| {t['trial']} | {t['k']} | {100 * t['accuracy']:.2f} | {t['accuracy_delta_pp']:+.2f} | "
                     f"{t['sqnr_db']:.1f} | {t['size_bytes'] / 1024:.0f} | {t['p50_ms_b1_in_process']:.4f} |")
    return "\n".join(lines) + "\n"


def _plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(table["layers"], key=lambda r: r["rank"])
    labels = [r["layer"][-40:] for r in rows]
    y = np.arange(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.28 * len(rows) + 1.5)), sharey=True)
    finite = lambda v: v if math.isfinite(v) else np.nan  # noqa: E731
    a.barh(y - 0.3, [finite(r["only_int8_sqnr_db"]) for r in rows], 0.2, label="logits, only this layer int8")
    a.barh(y - 0.1, [finite(r["weight_sqnr_db"]) for r in rows], 0.2, label="its weight alone")
    if any(math.isfinite(r.get("activation_sqnr_db", math.nan)) for r in rows):
        a.barh(y + 0.1, [finite(r["activation_sqnr_db"]) for r in rows], 0.2, label="its output activation alone")
        a.barh(y + 0.3, [finite(r["output_sqnr_db"]) for r in rows], 0.2, label="its output, all-int8 model")
    a.set_xlabel("SQNR vs fp32 (dB, higher is better)")
    a.legend(fontsize=7)
    b.barh(y - 0.2, [r["only_int8_accuracy_delta_pp"] for r in rows], 0.4, label="only this layer int8")
    b.barh(y + 0.2, [r["keep_float_recovers_pp"] for r in rows], 0.4, label="kept float (rest int8): recovers")
    b.axvline(0, color="k", lw=0.5)
    b.set_xlabel("accuracy (pp)")
    b.legend(fontsize=7)
    a.set_yticks(y, labels, fontsize=7)
    a.invert_yaxis()
    fig.suptitle("Per-layer sensitivity (ranked; selection subset of the training split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Analysis:
    """The sensitivity analysis of one cell, with what the search needs to go on from it."""

    def __init__(self, backend, ctx: BuildContext) -> None:
        from bsb_hydra.sysinfo import torch_engine

        q, ds = ctx.cfg.quant, ctx.data
        self.idx = selection_indices(len(ds.y_train), q.eval_samples, ctx.cfg.seed, ctx.calibration_indices)
        self.ev = Evaluator(backend, ctx, ds.x_train[self.idx], ds.y_train[self.idx],
                            torch_engine(ctx.cfg.device.torch_engine, ctx.arch))
        t0 = time.perf_counter()
        self.fp32_art = backend.build("fp32", ctx, ctx.workdir / f"analysis_fp32_ref{backend.suffix}")
        self.table = analyze(backend, ctx, self.ev, self.fp32_art, ctx.workdir)
        self.seconds = time.perf_counter() - t0
        self.dir = ctx.workdir / "analysis_report"
        self.dir.mkdir(parents=True, exist_ok=True)

    def metrics(self) -> Dict[str, float]:
        t = self.table
        return {"sensitivity_layers": len(t["layers"]), "sensitivity_seconds": self.seconds,
                "sensitivity_selection_samples": len(self.idx),
                "sensitivity_selection_fp32_accuracy": t["fp32"]["accuracy"],
                "sensitivity_selection_int8_accuracy": t["int8"]["accuracy"],
                "sensitivity_int8_logits_sqnr_db": t["int8"]["sqnr_db"]}

    def write(self, cfg, result=None) -> List[Path]:
        d = self.dir
        (d / "sensitivity.json").write_text(json.dumps(self.table, indent=1, default=str))
        (d / "sensitivity.md").write_text(_markdown(self.table, result, cfg))
        _plot(self.table, d / "sensitivity.png")
        files = [d / "sensitivity.json", d / "sensitivity.md", d / "sensitivity.png"]
        if result is not None:
            (d / "trials.json").write_text(json.dumps({k: v for k, v in result.items() if k != "chosen"}, indent=1,
                                                      default=str))
            files.append(d / "trials.json")
        return files


def analysis_only(backend, ctx: BuildContext, art: Artifact) -> Artifact:
    """quant.analyze=true on a static cell: the same table and plot, logged with the cell; the
    artifact measured is the plain static one."""
    a = Analysis(backend, ctx)
    art.files.extend(a.write(ctx.cfg))
    art.metrics.update(a.metrics())
    art.info["sensitivity.ranking"] = ",".join(r["layer"] for r in a.table["layers"])
    return art


def build_auto(backend, ctx: BuildContext, out: Path) -> Artifact:
    """quant=auto for a backend with the two hooks: analysis, search, the chosen artifact at ``out``."""
    q = ctx.cfg.quant
    if q.fallback.value not in backend.mixed_fallbacks:  # unsupported_reason said so before any work
        raise Unsupported(f"quant.fallback={q.fallback.value} on {backend.name}: {backend.no_fp16_fallback_reason}")
    a = Analysis(backend, ctx)
    t0 = time.perf_counter()
    result = search(backend, ctx, a.ev, a.table, a.fp32_art, ctx.workdir)
    search_s = time.perf_counter() - t0
    chosen = result["chosen"]
    out = out.with_suffix(Path(chosen["path"]).suffix)  # the build's own (pytorch's PT2E builds are .pt2 packages)
    copy_artifact(Path(chosen["path"]), out)  # with its other batch sizes' files
    info = dict(chosen["info"])
    info.update({"auto.float_layers": ",".join(chosen["float_layers"]) or "(none)", "auto.fallback": q.fallback.value,
                 "auto.budget_met": str(result["budget_met"]).lower(),
                 "auto.selection": f"{len(a.idx)} training samples, disjoint from the calibration samples",
                 "auto.ranking": ",".join(result["ranked"])})
    metrics = {**a.metrics(), "auto_trials": len(result["trials"]), "auto_float_layers": chosen["k"],
               "auto_layers": len(a.table["layers"]), "auto_budget_drop_pp": result["budget_drop_pp"],
               "auto_selection_accuracy": chosen["accuracy"],
               "auto_selection_fp32_accuracy": a.table["fp32"]["accuracy"],
               "auto_selection_int8_accuracy": a.table["int8"]["accuracy"],
               "auto_selection_accuracy_delta_pp": chosen["accuracy_delta_pp"],
               "auto_budget_met": float(result["budget_met"]),
               "auto_analysis_seconds": a.seconds, "auto_search_seconds": search_s}
    curves = {"auto_trial_accuracy": [t["accuracy"] for t in result["trials"]],
              "auto_trial_float_layers": [float(t["k"]) for t in result["trials"]]}
    return Artifact(out, chosen["input_dtype"], info, curves=curves, metrics=metrics,
                    files=a.write(ctx.cfg, result))
