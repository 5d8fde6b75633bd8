"""One cell of the grid, in order: validate -> support check -> data -> fp32 model (trained once,
cached) -> deployable artifact for the backend and scheme -> measurements in fresh processes ->
MLflow. A cell never raises out of a sweep: it ends ok, unsupported (with the reason) or failed
(with the traceback logged)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bsb_hydra import tracking
from bsb_hydra.backends.base import BuildContext, Unsupported
from bsb_hydra.bench import stats
from bsb_hydra.bench.harness import Item, run_worker
from bsb_hydra.concurrency import JobSlot
from bsb_hydra.config import validate
from bsb_hydra.sysinfo import git_sha, system_info, torch_engine


class InjectedFault(RuntimeError):
    pass


def _name(v) -> str:
    return v.value if hasattr(v, "value") else str(v)


def cell_id(cfg) -> str:
    q = cfg.quant
    scheme = _name(q.scheme)
    if scheme == "fake_quant":  # a sweep over bits: tell its cells apart (fake_quant_w4a4_qat)
        scheme += f"_w{q.bits}" + (f"a{q.bits}" if q.activations else "") + ("_qat" if q.qat else "")
    return f"{cfg.model.name}-{cfg.data.name}-{scheme}-{cfg.backend.name}"


def config_hash(dict_cfg: DictConfig) -> str:
    c = OmegaConf.to_container(dict_cfg, resolve=True, enum_to_str=True)
    for k in ("hydra", "mlflow", "paths", "debug", "force"):
        c.pop(k, None)
    tracking.drop_inert(c)  # keys added later, inert here: earlier runs keep their hash
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]


def _maybe_fault(cfg, stage: str) -> None:
    d = cfg.debug
    if d.fail_stage.value == stage and d.fail_cell in cell_id(cfg):
        raise InjectedFault(f"debug.fail_stage={stage}: injected failure in cell {cell_id(cfg)}")


def _worker_fault(cfg) -> Optional[str]:
    d = cfg.debug
    if d.fail_cell in cell_id(cfg):
        return {"worker_crash": "crash", "worker_oom": "oom", "worker_hang": "hang"}.get(d.fail_stage.value)
    return None


def _job_info() -> Dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return {"output_dir": hc.runtime.output_dir, "sweep_dir": hc.sweep.dir if hc.mode.name == "MULTIRUN" else "",
                "job_num": str(hc.job.num) if hc.mode.name == "MULTIRUN" else "0"}
    except Exception:
        return {"output_dir": tempfile.mkdtemp(prefix="bsb_hydra_"), "sweep_dir": "", "job_num": "0"}


def device_mismatch(device, info: Dict[str, str]) -> None:
    """A named device that this machine is not: Unsupported, with what differs."""
    if device.expected_arch and device.expected_arch != info["arch"]:
        raise Unsupported(f"device={device.name} expects arch {device.expected_arch}, this machine is {info['arch']}")
    missing = sorted(set(device.expected_isa) - set(info["isa"].split(",")))
    if missing:
        raise Unsupported(f"device={device.name} has {', '.join(missing)}, which this CPU ({info['cpu']}; isa "
                          f"{info['isa']}) lacks: this machine is not a {device.name}")
    if device.core_pinning is not None:
        have = os.sched_getaffinity(0)
        if not set(device.core_pinning) <= have:
            raise Unsupported(f"device.core_pinning={list(device.core_pinning)} names CPUs this process cannot "
                              f"use; available: {sorted(have)}")


def measure(cfg, dict_cfg, workdir: Path, log, slot: Optional[JobSlot] = None) -> Dict[str, Any]:
    """Everything after the support check. Returns metrics; logs artifacts through ``log``. ``slot``
    counts the bsb_hydra jobs running on this machine while the workers time."""
    from bsb_hydra.backends import get_backend
    from bsb_hydra.data import calibration_indices, load_dataset
    from bsb_hydra.train import get_fp32_model

    info = system_info()
    scheme = cfg.quant.scheme.value
    backend = get_backend(cfg.backend.name)
    engine = torch_engine(cfg.device.torch_engine, info["arch"])

    ds = load_dataset(cfg.data, cfg.seed)
    calib_idx = calibration_indices(ds, cfg.quant.samples, cfg.seed) \
        if scheme in ("static", "qat", "auto") or (scheme == "fake_quant" and cfg.quant.activations) else None
    calibration = ds.x_train[calib_idx] if calib_idx is not None else None
    _maybe_fault(cfg, "train")
    fp32 = get_fp32_model(cfg, ds, cfg.paths.cache_dir)
    log.tags({"fp32_source": fp32.source, "fp32_key": fp32.key, "fp32_weights_sha256": fp32.weights_sha256})
    for step, loss in enumerate(fp32.loss_curve):
        log.metric("train_loss", loss, step)
    if fp32.train_seconds:
        log.metrics({"train_seconds": fp32.train_seconds})

    _maybe_fault(cfg, "quantize")
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = BuildContext(fp32.module, ds.x_train[:1].copy(), calibration, cfg, engine, info["arch"], info["isa"],
                       workdir, data=ds, calibration_indices=calib_idx)
    if calib_idx is not None:  # proof that calibration used real training samples, and which ones
        log.json({"split": "train", "indices": calib_idx.tolist()}, "calibration_indices.json")
    t0 = time.perf_counter()
    fp32_art = backend.build("fp32", ctx, workdir / f"fp32{backend.suffix}")
    art = fp32_art if scheme == "fp32" else backend.build(scheme, ctx, workdir / f"{scheme}{backend.suffix}")
    log.metrics({"quantize_seconds": time.perf_counter() - t0})
    if scheme == "static" and cfg.quant.analyze:  # timed apart (sensitivity_seconds), not as quantization
        from bsb_hydra.mixed import analysis_only

        art = analysis_only(backend, ctx, art)
    log.tags({f"build.{k}": v[:5000] for k, v in art.info.items()})
    for name, curve in art.curves.items():
        for step, value in enumerate(curve):
            log.metric(name, value, step)
    log.metrics(art.metrics)
    for path in art.files:
        log.artifact(path, "analysis")

    _maybe_fault(cfg, "benchmark")
    b = cfg.benchmark
    latency_input = workdir / "latency_input.npy"
    np.save(latency_input, ds.x_test[:max(b.batch_sizes)])
    eval_input = workdir / "eval_input.npy"
    np.save(eval_input, ds.x_test)
    # min_runs, min_duration_s and max_duration_s are totals over the benchmark.repeats processes:
    # each process times its share (warm-up runs are per process).
    lat = {"batch_sizes": list(b.batch_sizes), "warmup_runs": b.warmup_runs,
           "min_runs": math.ceil(b.min_runs / b.repeats), "min_duration_s": b.min_duration_s / b.repeats,
           "max_duration_s": b.max_duration_s / b.repeats}
    common = dict(backend=cfg.backend.name, threads=cfg.device.threads,
                  cpus=list(cfg.device.core_pinning) if cfg.device.core_pinning is not None else None,
                  settings=backend.runner_settings(cfg, engine), latency_input=latency_input, eval_input=eval_input,
                  latency=lat, eval_batch_size=b.eval_batch_size, workdir=workdir / "bench", timeout_s=b.timeout_s)
    slot = slot or JobSlot()
    slot.sample()
    # benchmark.repeats fresh processes. Each times the cell and, with the paired baseline, the fp32
    # artifact of the same backend right beside it, in alternating order (cell first in processes
    # 0, 2, ...; fp32 first in 1, 3, ...). Process 0 also evaluates both on the test split and takes
    # the cell's memory, with the cell loaded first so that its peak RSS is its own.
    # A simulated cell (quant=fake_quant) is not deployable: one process evaluates it and its fp32
    # reference; nothing is timed and no memory is reported.
    simulated = art.simulated
    ref_latency = scheme != "fp32" and b.paired_baseline and not simulated
    lat_ref: list = []  # per batch size, a list of sample lists (one per process) for each side
    lat_cell: list = []
    res = base = None
    for i in range(1 if simulated else b.repeats):
        items = [Item(scheme, art.path, art.input_dtype, latency=not simulated, evaluate=i == 0)]
        if scheme != "fp32" and (i == 0 or ref_latency):
            ref_item = Item("fp32_reference", fp32_art.path, fp32_art.input_dtype, latency=ref_latency,
                            evaluate=i == 0)
            items = items + [ref_item] if i % 2 == 0 else [ref_item] + items
        out = run_worker(items=items, tag=f"r{i}", inject_fault=_worker_fault(cfg) if i == 0 else None, **common)
        slot.sample()  # between worker processes: a job that came and went in between is counted too
        if not simulated:
            lat_cell.append(out[scheme].data["samples_ms"])
        if ref_latency:
            lat_ref.append(out["fp32_reference"].data["samples_ms"])
        if i == 0:
            res, base = out[scheme], out.get("fp32_reference")
    ref = base if base is not None else res

    slot.sample()
    m: Dict[str, float] = {}
    m["concurrent_jobs"] = slot.peak
    if slot.peak > 1:
        print(f"  WARNING: {slot.peak} bsb_hydra jobs ran on this machine while this cell was timed: they share "
              f"cores and caches, so its latencies are distorted (tag concurrent_jobs={slot.peak})", flush=True)
    if simulated:  # bits x parameters + scales, against 32 bits x parameters (bsb_hydra/fake_quant.py)
        m["size_bytes"], m["fp32_size_bytes"] = art.theoretical_size
        m["simulated"] = 1.0
    else:
        m["size_bytes"] = os.path.getsize(art.path)
        m["fp32_size_bytes"] = os.path.getsize(fp32_art.path)
    m["size_ratio"] = m["size_bytes"] / m["fp32_size_bytes"]
    acc = stats.accuracy_metrics(res.logits, ds.y_test, ds.num_classes)
    ref_acc = stats.accuracy_metrics(ref.logits, ds.y_test, ds.num_classes)
    m.update({k: acc[k] for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high")})
    m["fp32_accuracy"] = ref_acc["accuracy"]
    m["accuracy_delta_pp"] = 100.0 * (acc["accuracy"] - ref_acc["accuracy"])
    m["test_samples"] = acc["n"]
    correct = res.logits.argmax(axis=1) == ds.y_test
    paired = stats.paired_accuracy(correct, ref.logits.argmax(axis=1) == ds.y_test)  # same samples: McNemar
    m.update({"accuracy_delta_ci_low_pp": paired["ci_low_pp"], "accuracy_delta_ci_high_pp": paired["ci_high_pp"],
              "accuracy_delta_p_value": paired["p_value"], "gained_vs_fp32": paired["gained"],
              "lost_vs_fp32": paired["lost"]})
    m.update(stats.agreement_metrics(res.logits, ref.logits))
    if scheme == "auto":  # the search chose on training samples: did its budget hold on the test split?
        budget_pp = 100.0 * cfg.quant.budget_for(ref_acc["accuracy"])
        m["auto_budget_met_test"] = float(m["accuracy_delta_pp"] >= -budget_pp - 1e-9)
    if cfg.backend.name != "pytorch":  # the same weights on another runtime: how close is its fp32?
        torch_logits = _torch_logits(fp32.module, ds.x_test, b.eval_batch_size)
        m["fp32_vs_pytorch_agreement"] = float(np.mean(ref.logits.argmax(1) == torch_logits.argmax(1)))
        m["fp32_vs_pytorch_max_abs_logit_diff"] = float(np.max(np.abs(ref.logits - torch_logits)))
    for key in ("load_ms", "first_inference_ms", "peak_rss_mb", "rss_delta_mb", "rss_after_import_mb"):
        if not simulated:
            m[key] = res.data[key]
    for bs in res.data.get("samples_ms", {}):
        s = stats.pooled_latency_stats([p[bs] for p in lat_cell], int(bs), b.bootstrap_resamples, cfg.seed)
        for k in ("mean", "p50", "p90", "p95", "p99", "std"):
            m[f"latency_{k}_ms_b{bs}"] = s[f"{k}_ms"]
        m[f"latency_cv_b{bs}"] = s["cv"]
        m[f"latency_p50_ci_low_ms_b{bs}"] = s["p50_ci_low_ms"]
        m[f"latency_p50_ci_high_ms_b{bs}"] = s["p50_ci_high_ms"]
        m[f"latency_count_b{bs}"] = s["count"]
        m[f"latency_processes_b{bs}"] = s["processes"]
        m[f"latency_process_p50_spread_b{bs}"] = s["process_p50_spread"]
        m[f"throughput_sps_b{bs}"] = s["throughput_sps"]
        if scheme == "fp32":
            m[f"speedup_b{bs}"] = 1.0
        elif lat_ref:
            fs = stats.pooled_latency_stats([p[bs] for p in lat_ref], int(bs), b.bootstrap_resamples, cfg.seed)
            m[f"fp32_latency_p50_ms_b{bs}"] = fs["p50_ms"]
            m[f"fp32_latency_p50_ci_low_ms_b{bs}"] = fs["p50_ci_low_ms"]
            m[f"fp32_latency_p50_ci_high_ms_b{bs}"] = fs["p50_ci_high_ms"]
            m[f"speedup_b{bs}"] = fs["p50_ms"] / s["p50_ms"]
    log.json({"per_class_accuracy": {ds.class_names[c] if c < len(ds.class_names) else str(c): v
                                     for c, v in acc["per_class"].items()},
              "fp32_per_class_accuracy": {str(c): v for c, v in ref_acc["per_class"].items()}},
             "per_class_accuracy.json")
    log.json({"per_process": True, "samples_ms": lat_cell, "fp32_reference_samples_ms": lat_ref or None},
             "latency_samples.json")
    log.artifact(art.path, "model")
    pred_path = workdir / "predictions.npy"  # top-1 class per test sample: cross-backend agreement
    np.save(pred_path, res.logits.argmax(axis=1).astype(np.int16))
    log.artifact(pred_path, "")
    correct_path = workdir / "correct.npy"  # right or wrong per test sample: paired tests between cells
    np.save(correct_path, correct)
    log.artifact(correct_path, "")
    log.tags({"test_set_digest": test_set_digest(ds)})
    log.tags({"concurrent_jobs": slot.peak, "size_kind": "theoretical" if simulated else "artifact",
              "simulated": str(simulated).lower()})
    log.tags({"worker_imports": ",".join(res.data["heavy_modules"]), "input_dtype": art.input_dtype,
              # the affinity the worker itself reported, when pinning was asked for
              "cpus_pinned": ",".join(map(str, res.data.get("cpus", []))) if cfg.device.core_pinning else "",
              "torch_engine": engine if cfg.backend.name == "pytorch" else ""})
    return m


def test_set_digest(ds) -> str:
    """Which test samples a cell was scored on (inputs and labels): two cells' per-sample results
    pair up only when this matches."""
    h = hashlib.sha256()
    for a in (ds.x_test, ds.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _torch_logits(module, x: np.ndarray, batch: int) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([module(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


class RunLog:
    """Thin wrapper over the active MLflow run, so measure() reads as a list of steps."""

    def __init__(self, mlflow) -> None:
        self.mlflow = mlflow

    def tags(self, d: Dict[str, Any]) -> None:
        """A tag that does not apply to this cell (cpus_pinned unpinned, seq_len on images, the
        reason of an ok cell) is left out, not logged as ''."""
        d = {k: str(v) for k, v in d.items() if v is not None and str(v) != ""}
        if d:
            self.mlflow.set_tags(d)

    def metrics(self, d: Dict[str, float]) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in d.items()})

    def metric(self, key: str, value: float, step: int) -> None:
        self.mlflow.log_metric(key, float(value), step=step)

    def json(self, obj: Any, name: str) -> None:
        self.mlflow.log_dict(obj, name)

    def artifact(self, path: Path, folder: str) -> None:
        self.mlflow.log_artifact(str(path), folder)


def run_cell(dict_cfg: DictConfig) -> Dict[str, Any]:
    import mlflow

    from bsb_hydra import tracking
    from bsb_hydra.backends import get_backend

    job = _job_info()
    out_dir = Path(job["output_dir"])
    cid = cell_id(dict_cfg)
    result: Dict[str, Any] = {"cell": cid, "status": "failed", "reason": "", "metrics": {},
                              "job_num": job["job_num"]}
    t_start = time.perf_counter()
    try:
        experiment_id = tracking.setup(dict_cfg)
    except Exception as e:
        result["reason"] = tracking.mask_text(f"MLflow store {dict_cfg.mlflow.tracking_uri} unusable: {e}")
        print(f"[failed] {cid}: {result['reason']}", flush=True)
        _write_result(out_dir, result)
        return result
    info = system_info()
    chash = config_hash(dict_cfg)
    me = tracking.process_identity()
    client = mlflow.MlflowClient()
    closed = tracking.close_dead_runs(client, experiment_id, me)
    if closed:
        print(f"[resume] marked {len(closed)} run(s) of dead processes KILLED: {', '.join(closed)}", flush=True)
    prior = None if dict_cfg.get("force", False) else tracking.finished_run(client, experiment_id, chash, info)
    if prior is not None:
        result.update(status="skipped", run_id=prior.info.run_id, seconds=time.perf_counter() - t_start,
                      reason=f"run {prior.info.run_id} already measured config_hash {chash} on this machine "
                             f"(status ok); force=true measures it again")
        result["metrics"] = dict(prior.data.metrics)
        print(summary_line(result), flush=True)
        _write_result(out_dir, result)
        return result
    with mlflow.start_run(experiment_id=experiment_id, run_name=cid) as run:
        log = RunLog(mlflow)
        result["run_id"] = run.info.run_id
        log.tags({"status": "running", "cell": cid, "config_hash": chash, "git_sha": git_sha(),
                  "sweep_dir": job["sweep_dir"], "job_num": job["job_num"], **me, **info})
        try:
            log.tags({"model": dict_cfg.model.name, "data": dict_cfg.data.name, "quant": _name(dict_cfg.quant.scheme),
                      "backend": dict_cfg.backend.name, "device": dict_cfg.device.name,
                      "threads": dict_cfg.device.threads, "seq_len": dict_cfg.data.get("seq_len") or ""})
            mlflow.log_params(tracking.resolved_params(dict_cfg))
            log.json(tracking.resolved_config(dict_cfg), "config.json")
            cfg = validate(dict_cfg)
            device_mismatch(cfg.device, info)
            reason = get_backend(cfg.backend.name).unsupported_reason(cfg)
            if reason:
                raise Unsupported(reason)
            with JobSlot() as slot:
                result["metrics"] = measure(cfg, dict_cfg, out_dir / "artifacts", log, slot)
            log.metrics(result["metrics"])
            result["status"] = "ok"
        except Unsupported as e:
            result["status"], result["reason"] = "unsupported", str(e)
        except Exception as e:  # one failing cell never stops the sweep
            result["status"], result["reason"] = "failed", f"{type(e).__name__}: {e}"
            tb = traceback.format_exc()
            (out_dir / "traceback.txt").parent.mkdir(parents=True, exist_ok=True)
            (out_dir / "traceback.txt").write_text(tb)
            try:
                mlflow.log_text(tb, "traceback.txt")
            except Exception:
                pass
        result["seconds"] = time.perf_counter() - t_start
        log.tags({"status": result["status"], "reason": result["reason"][:5000]})
        log.metrics({"cell_seconds": result["seconds"]})
        if result["status"] == "failed":
            mlflow.end_run(status="FAILED")
    print(summary_line(result), flush=True)
    _write_result(out_dir, result)
    return result


def summary_line(r: Dict[str, Any]) -> str:
    m = r.get("metrics") or {}
    if r["status"] == "skipped":
        return f"[skipped] {r['cell']}: {r['reason']}"
    if r["status"] != "ok":
        return f"[{r['status']}] {r['cell']}: {r['reason'].splitlines()[0] if r['reason'] else ''}"
    simulated = bool(m.get("simulated"))
    theoretical = " theoretical" if simulated else ""
    parts = [f"size {m['size_bytes'] / 1024:.0f} KiB{theoretical} ({m['size_ratio']:.2f}x fp32)",
             f"acc {100 * m['accuracy']:.2f}% ({m['accuracy_delta_pp']:+.2f} pp)",
             f"agree {100 * m['top1_agreement']:.2f}%"]
    if "latency_p50_ms_b1" in m:
        parts.append(f"p50@b1 {m['latency_p50_ms_b1']:.3f} ms (speedup {m.get('speedup_b1', float('nan')):.2f}x)")
    parts.append("SIMULATED: not deployable, not timed" if simulated else f"peak {m['peak_rss_mb']:.0f} MB")
    return f"[ok] {r['cell']}: " + ", ".join(parts)


def _write_result(out_dir: Path, result: Dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
