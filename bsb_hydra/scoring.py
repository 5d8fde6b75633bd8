"""Scoring: from what the workers measured to the cell's metrics, in one result.

- the task's score (bsb_hydra/tasks): the cell's and its fp32 reference's outputs read from disk
  batch by batch and reduced as they go, with the labels of the same samples (the sweep process's
  peak RSS over this stage is stage_score_peak_rss_mb, bsb_hydra/steps.py);
- the same weights on another runtime: the backend's fp32 artifact against the PyTorch fp32 model
  (fp32_vs_pytorch_*);
- size, latency statistics and speedups, the machine's limit, the best fp32 of the same input.

``score_cell`` returns one ``CellScore``; the cell logs it once (``log_score``)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from bsb_hydra.bench import stats
from bsb_hydra.cache_files import CacheWriteError, Note, Notes, cache_lock, check_entry, printed, write_entry
from bsb_hydra.tasks.base import Fidelity, Score


@dataclass
class CellScore:
    """Everything the cell's scoring found: metrics, tags, JSON and per-sample arrays to log."""
    metrics: Dict[str, float] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)
    json: Dict[str, Any] = field(default_factory=dict)
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, s: Score) -> None:
        self.metrics.update(s.metrics)
        self.tags.update(s.tags)
        self.json.update(s.json)
        self.arrays.update(s.arrays)


# ------------------------------------------------------------------------------- peak RSS
def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: /proc/self/clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    from bsb_hydra.bench.worker import peak_rss_mb as hwm

    return hwm()


# ------------------------------------------------------------------------------------ the task
def task_score(task, ds, timed) -> Score:
    """The task's scorer over the cell's and its reference's outputs, batch by batch, with the labels
    of the same test samples."""
    cell, ref = timed.res.outputs, timed.ref.outputs
    if cell.batches != ref.batches or cell.samples != ref.samples:
        raise RuntimeError(f"the cell's outputs ({cell.samples} samples in {cell.batches} batches) and its fp32 "
                           f"reference's ({ref.samples} in {ref.batches}) do not pair up")
    scorer = task.scorer()
    start = 0
    for a, b in zip(cell, ref):
        n = len(a[0])
        scorer.update(a, b, task.labels_batch(start, start + n))
        start += n
    return scorer.result()


def timing_metrics(cfg, art, fp32_art, timed) -> Dict[str, float]:
    """What the worker processes measured, before any scoring: size and latency (steps.measure logs
    them at once, so a scoring or storage failure after them never loses them)."""
    return {**size_metrics(art, fp32_art), **latency_metrics(cfg, art, timed)}


def score_cell(cfg, task, ds, fp32, art, fp32_art, timed, facts: Dict[str, float],
               peak: Optional[Dict[str, Any]], timing: Optional[Dict[str, float]] = None) -> CellScore:
    """Every metric of the cell (the timing's, ``timing`` when already computed, and the task's) in
    one result."""
    out = CellScore()
    out.add(task_score(task, ds, timed))
    if fp32_art is None:  # the cell was its own reference: only what does not compare with fp32 stays
        out.metrics = {k: v for k, v in out.metrics.items() if not compares_with_fp32(k)}
        out.json = {k: v for k, v in out.json.items() if not compares_with_fp32(k)}
        out.arrays = {k: v for k, v in out.arrays.items() if not compares_with_fp32(k)}
    notes = Notes()
    out.metrics.update(agreement_with_pytorch(cfg, task, fp32, ds, timed, notes))
    if notes:
        out.tags["pytorch_logits_cache_note"] = notes.text()
    if task.name == "classification" and cfg.quant.scheme.value == "auto" and "accuracy_delta_pp" in out.metrics:
        # the search chose on training samples: did its budget hold on the test split?
        budget_pp = 100.0 * cfg.quant.budget_for(out.metrics["fp32_accuracy"])
        out.metrics["auto_budget_met_test"] = float(out.metrics["accuracy_delta_pp"] >= -budget_pp - 1e-9)
    out.metrics.update(timing if timing is not None else timing_metrics(cfg, art, fp32_art, timed))
    out.metrics.update(facts)
    out.metrics.update(limit_metrics(cfg, out.metrics, peak))
    out.metrics.update(task.quality_values(out.metrics))
    return out


# What a task's scorer computes against the fp32 reference's outputs (tasks/*.py: every key that
# pairs the cell with fp32), dropped when there is no reference: those numbers would compare the cell
# with itself. tests/test_tflite_file.py checks that a cell without a reference keeps none of them, and
# tests/test_tasks.py that every task scorer's comparison keys match.
FP32_COMPARISONS = re.compile(
    r"^fp32_|^reference_|^fidelity/|agreement|_vs_fp32|confidence_drift|^kl_|max_abs|sqnr|cosine|mcnemar|^speedup|^size_ratio|"
    r"^(?!rss_)[a-z0-9]+_delta")


def compares_with_fp32(key: str) -> bool:
    return FP32_COMPARISONS.search(key) is not None


def log_score(s: CellScore, workdir: Path, log) -> None:
    """The score's tags and files (its metrics are logged by the caller as soon as they exist)."""
    log.tags(s.tags)
    for name, obj in s.json.items():
        log.json(obj, name)
    for name, a in s.arrays.items():
        path = workdir / name
        np.save(path, a)
        log.artifact(path, "")


# ---------------------------------------------------------------- the same weights on PyTorch
TORCH_BATCH = 16


def agreement_with_pytorch(cfg, task, fp32, ds, timed, note: Note = printed) -> Dict[str, float]:
    """The same weights on another runtime: how close is its fp32 artifact to the PyTorch model?
    A classifier: top-1 agreement and the largest logit difference (the PyTorch logits cached per
    weights and test set). Any other task: every output's fidelity (SQNR, cosine, max |error|),
    the PyTorch model run on the same batches as the artifact's outputs are read."""
    if cfg.backend.name == "pytorch" or fp32.module is None:  # model=onnx has no PyTorch model
        return {}
    if task.name == "classification":
        ref = timed.ref.outputs.first_output()
        torch_logits = pytorch_test_logits(fp32, ds, cfg.benchmark.eval_batch_size, cfg.paths.cache_dir, note)
        return {"fp32_vs_pytorch_agreement": float(np.mean(ref.argmax(1) == torch_logits.argmax(1))),
                "fp32_vs_pytorch_max_abs_logit_diff": float(np.max(np.abs(ref - torch_logits)))}
    from bsb_hydra.feeds import materialize, torch_outputs

    reader = timed.ref.outputs
    fid = Fidelity([o.name for o in task.probe.outputs])
    start = 0
    for b in reader:
        n = len(b[0])
        for i in range(0, n, TORCH_BATCH):  # the PyTorch model's activations: a few samples at a time
            j = min(n, i + TORCH_BATCH)
            fid.update(torch_outputs(fp32.module, materialize(ds.x_test[start + i:start + j])), [a[i:j] for a in b])
        start += n
    m = {f"fp32_vs_pytorch/{k.split('/', 1)[1]}": v for k, v in fid.metrics().items()}
    primary = fid.names[task.index]
    if f"fp32_vs_pytorch/{primary}/cosine_mean" in m:
        m["fp32_vs_pytorch_cosine_mean"] = m[f"fp32_vs_pytorch/{primary}/cosine_mean"]
    return m


def test_set_digest(ds) -> str:
    """Which test samples a cell was scored on (inputs and labels): two cells' per-sample results
    pair up only when this matches. Read in chunks (a fitted 224-px split is not one array)."""
    from bsb_hydra.data.transforms import chunks
    from bsb_hydra.feeds import Feeds

    h = hashlib.sha256()
    xs = list(ds.x_test.values()) if isinstance(ds.x_test, Feeds) else [ds.x_test]
    for a in xs + ([ds.y_test] if ds.labelled else []):
        h.update(f"{np.dtype(a.dtype)}{tuple(a.shape)}".encode())
        for part in chunks(a):
            h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


def pytorch_test_logits(fp32, ds, batch: int, cache_dir: str, note: Note = printed) -> np.ndarray:
    """The PyTorch fp32 model's logits on the test split, computed once per (weights, test set,
    eval batch, torch version, thread count) and cached under CACHE/logits (KEY.npy, and KEY.json
    with its SHA-256, shape and dtype): every ORT and TFLite cell of a model compares its fp32
    reference with them (a 2000-image 224-px split took 48 s per cell). An entry that does not
    match its record is computed again and said so (``note``): read as it was, an altered file
    scored fp32_vs_pytorch_agreement=0.0 in a cell with status ok."""
    import torch

    key = hashlib.sha256(f"{fp32.weights_sha256}|{test_set_digest(ds)}|{batch}|{torch.__version__}|"
                         f"{torch.get_num_threads()}".encode()).hexdigest()[:20]
    folder = Path(cache_dir) / "logits"
    path = folder / f"{key}.npy"
    meta_path = path.with_suffix(".json")
    with cache_lock(folder / f".{key}.lock", note) as writable:  # concurrent cells of one model compute once
        meta, why = check_entry(path, meta_path)
        if meta is not None:
            try:
                logits = np.load(path, allow_pickle=False)
                if [list(logits.shape), str(logits.dtype)] != [meta.get("shape"), meta.get("dtype")]:
                    raise ValueError(f"holds {logits.dtype} {tuple(logits.shape)}, not the {meta.get('dtype')} "
                                     f"{tuple(meta.get('shape') or ())} recorded in {meta_path.name}")
                return logits
            except (OSError, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
        if why:
            note(f"cached PyTorch logits {path} are unusable ({why}): computing them again")
        logits = _torch_logits(fp32.module, ds.x_test, batch)
        if writable:
            try:
                write_entry(path, meta_path, lambda f: np.save(f, logits, allow_pickle=False),
                            {"shape": list(logits.shape), "dtype": str(logits.dtype)})
            except CacheWriteError as e:
                note(f"NOTE: {e}: the logits are used from memory, not cached")
    return logits


def _torch_logits(module, x, batch: int) -> np.ndarray:
    from bsb_hydra.data.transforms import chunks
    from bsb_hydra.feeds import torch_outputs

    return np.concatenate([torch_outputs(module, part)[0].astype(np.float32) for part in chunks(x, batch)])


# ------------------------------------------------------------------------------ size and time
def size_metrics(art, fp32_art) -> Dict[str, float]:
    if art.simulated:  # bits x parameters + scales, against 32 bits x parameters (bsb_hydra/fake_quant.py)
        size, fp32_size = art.theoretical_size
        return {"size_bytes": size, "fp32_size_bytes": fp32_size, "size_ratio": size / fp32_size, "simulated": 1.0}
    if fp32_art is None:  # a quantized file given alone
        return {"size_bytes": float(art.size_bytes)}
    size, fp32_size = art.size_bytes, fp32_art.size_bytes  # a file and its companions (IR: .xml + .bin)
    return {"size_bytes": size, "fp32_size_bytes": fp32_size, "size_ratio": size / fp32_size}


def latency_metrics(cfg, art, timed) -> Dict[str, float]:
    """Memory of process 0; per batch size, the pooled latency statistics of every process and the
    speedup against the paired fp32 reference."""
    b = cfg.benchmark
    m: Dict[str, float] = {}
    if not art.simulated:
        for key in ("load_ms", "first_inference_ms", "peak_rss_mb", "rss_delta_mb", "rss_after_import_mb"):
            m[key] = timed.res.data[key]
    for bs in timed.res.data.get("samples_ms", {}):
        s = stats.pooled_latency_stats([p[bs] for p in timed.lat_cell], int(bs), b.bootstrap_resamples, cfg.seed)
        for k in ("mean", "p50", "p90", "p95", "p99", "std"):
            m[f"latency_{k}_ms_b{bs}"] = s[f"{k}_ms"]
        m[f"latency_cv_b{bs}"] = s["cv"]
        m[f"latency_p50_ci_low_ms_b{bs}"] = s["p50_ci_low_ms"]
        m[f"latency_p50_ci_high_ms_b{bs}"] = s["p50_ci_high_ms"]
        m[f"latency_count_b{bs}"] = s["count"]
        m[f"latency_processes_b{bs}"] = s["processes"]
        m[f"latency_process_p50_spread_b{bs}"] = s["process_p50_spread"]
        m[f"throughput_sps_b{bs}"] = s["throughput_sps"]
        if cfg.quant.scheme.value == "fp32":
            m[f"speedup_b{bs}"] = 1.0
        elif timed.lat_ref:
            fs = stats.pooled_latency_stats([p[bs] for p in timed.lat_ref], int(bs), b.bootstrap_resamples, cfg.seed)
            m[f"fp32_latency_p50_ms_b{bs}"] = fs["p50_ms"]
            m[f"fp32_latency_p50_ci_low_ms_b{bs}"] = fs["p50_ci_low_ms"]
            m[f"fp32_latency_p50_ci_high_ms_b{bs}"] = fs["p50_ci_high_ms"]
            m[f"speedup_b{bs}"] = fs["p50_ms"] / s["p50_ms"]
    return m


def limit_metrics(cfg, m: Dict[str, float], peak: Optional[Dict[str, Any]]) -> Dict[str, float]:
    """Per batch size: achieved GFLOP/s (2 x MACs x batch / p50), and with the machine's limit,
    speedup_vs_peak (an int8 cell's speedup over its own fp32 / the machine's int8_peak_ratio) and
    overhead_bound (1 when the p50 is within 2x of the backend's empty-call floor: then the ratio
    says more about the call than about quantization)."""
    from bsb_hydra.bench import peak as peak_mod

    out: Dict[str, float] = {}
    limits = peak_mod.run_metrics(peak, cfg.backend.name) if peak else {}
    out.update(limits)
    for key in [k for k in m if k.startswith("latency_p50_ms_b")]:
        bs = key[len("latency_p50_ms_b"):]
        p50 = m[key]
        if m.get("model_macs"):
            out[f"achieved_gflops_b{bs}"] = 2.0 * m["model_macs"] * int(bs) / (p50 / 1000.0) / 1e9
        if "call_floor_ms" in limits:
            out[f"overhead_bound_b{bs}"] = float(p50 < 2.0 * limits["call_floor_ms"])
        if cfg.quant.int8 and f"speedup_b{bs}" in m and limits.get("int8_peak_ratio"):
            out[f"speedup_vs_peak_b{bs}"] = m[f"speedup_b{bs}"] / limits["int8_peak_ratio"]
    return out


SAME_INPUT_TAGS = ("model_ref", "input_shape", "data", "arch", "cpu", "emulated", "threads")


def best_fp32_metrics(cfg, m: Dict[str, float], log) -> Dict[str, float]:
    """speedup_vs_best_fp32_b{N}: the fastest fp32 p50 at batch N of the same model, input and data on
    this machine (arch, cpu, emulation, threads), across every backend's ok fp32 cell in the
    experiment and this cell's own paired fp32 reference, over this cell's p50. The question it
    answers: how much faster than the best fp32 I could ship here. Tagged best_fp32_b{N} (backend
    and ms). The report recomputes it over all its runs (fp32 cells measured later count there)."""
    import mlflow

    from bsb_hydra import tracking
    from bsb_hydra.metric_names import run_metrics

    run = mlflow.active_run()
    client = mlflow.MlflowClient()
    tags = client.get_run(run.info.run_id).data.tags
    if any(k not in tags for k in SAME_INPUT_TAGS):
        return {}
    # a value with a quote (torchvision's model_ref: models.get_model('resnet18', ...)) cannot go into
    # the filter string: it is matched here instead
    where = " and ".join([f"tags.{k} = '{tags[k]}'" for k in SAME_INPUT_TAGS if "'" not in tags[k]] +
                         ["tags.quant = 'fp32'", "tags.status = 'ok'"])
    others = [r for r in tracking.search_all(client, run.info.experiment_id, where) if r.info.status == "FINISHED"
              and all(r.data.tags.get(k) == tags[k] for k in SAME_INPUT_TAGS)]
    own = cfg.backend.name
    out: Dict[str, float] = {}
    fp32_cells = [(run_metrics(r), r.data.tags.get("backend", "?")) for r in others]  # by flat name
    for key in [k for k in m if k.startswith("latency_p50_ms_b")]:
        bs = key[len("latency_p50_ms_b"):]
        candidates = [(rm[key], backend) for rm, backend in fp32_cells if key in rm]
        ref = m[key] if cfg.quant.scheme.value == "fp32" else m.get(f"fp32_latency_p50_ms_b{bs}")
        if ref is not None:
            candidates.append((ref, own))
        if candidates:
            best_ms, backend = min(candidates)
            out[f"speedup_vs_best_fp32_b{bs}"] = best_ms / m[key]
            out[f"best_fp32_latency_p50_ms_b{bs}"] = best_ms
            log.tags({f"best_fp32_b{bs}": f"{backend} {best_ms:.4g} ms"})
    return out
