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
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bsb_hydra import tracking
from bsb_hydra.backends.base import BuildContext, Unsupported
from bsb_hydra.bench import stats
from bsb_hydra.bench.harness import Item, run_worker
from bsb_hydra.concurrency import JobSlot
from bsb_hydra.models import model_label
from bsb_hydra.config import InputError, validate
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
    return f"{model_label(cfg.model)}-{cfg.data.name}-{scheme}-{cfg.backend.name}"


def config_hash(dict_cfg: DictConfig) -> str:
    c = OmegaConf.to_container(dict_cfg, resolve=True, enum_to_str=True)
    for k in ("hydra", "mlflow", "paths", "debug", "force", "peak"):  # where and how, not what
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


class Stages:
    """Wall-clock seconds of each stage of a cell: data, fp32 (train or load), peak (the machine's
    limit; measured by a host's first cell, read from the cache after), convert (the backend's fp32
    artifact), quantize (the cell's own artifact), measure (the timing and evaluation processes),
    profile (benchmark.profile's extra process), score (the statistics, and for onnxruntime and tflite
    the PyTorch fp32 model over the test split for fp32_vs_pytorch_agreement), log (the artifacts
    and tags to MLflow). Logged as stage_<name>_seconds, also for a cell that
    fails (the stages it got through); make bench prints them per cell."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> Dict[str, float]:
        return {f"stage_{k}_seconds": v for k, v in self.seconds.items()}


def build_artifact(backend, scheme: str, ctx: BuildContext, out: Path):
    """The deployable artifact of ``scheme``: the backend's own build, or for quant=auto the
    mixed-precision search over the backend's hooks (bsb_hydra/mixed.py)."""
    if scheme == "auto":
        from bsb_hydra.mixed import build_auto

        return build_auto(backend, ctx, out)
    return backend.build(scheme, ctx, out)


def measure(cfg, dict_cfg, workdir: Path, log, slot: Optional[JobSlot] = None) -> Dict[str, Any]:
    """Everything after the support check, step by step. Returns the metrics; logs tags, curves and
    artifacts through ``log``. ``slot`` counts the bsb_hydra jobs on this machine while the workers time."""
    from bsb_hydra.backends import get_backend

    info = system_info()
    backend = get_backend(cfg.backend.name)
    engine = torch_engine(cfg.device.torch_engine, info["arch"])
    stage = Stages()
    try:
        with stage("data"):
            ds = load_data(cfg, log)
            calib_idx = calibration_for(cfg, ds, log)  # before training: too few samples is the data's error
        with stage("fp32"):
            fp32 = load_fp32(cfg, ds, log)
            facts = model_cost(fp32, ds, log)
        with stage("peak"):
            peak = machine_limit(cfg, log)
        ctx = build_context(cfg, ds, fp32, calib_idx, engine, info, workdir)
        fp32_art, art = build_artifacts(cfg, backend, ctx, workdir, log, stage)
        slot = slot or JobSlot()
        timed = run_workers(cfg, backend, engine, ds, fp32_art, art, workdir, slot, stage, peak)
        m: Dict[str, float] = {"concurrent_jobs": slot.peak}
        if slot.peak > 1:
            print(f"  WARNING: {slot.peak} bsb_hydra jobs ran on this machine while this cell was timed: they share "
                  f"cores and caches, so its latencies are distorted (tag concurrent_jobs={slot.peak})", flush=True)
        with stage("score"):  # the statistics, and the PyTorch fp32 model run over the test split
            m.update(size_metrics(art, fp32_art))
            m.update(accuracy_metrics(cfg, ds, timed))
            m.update(agreement_with_pytorch(cfg, fp32, ds, timed))
            m.update(latency_metrics(cfg, art, timed))
            m.update(facts)
            m.update(limit_metrics(cfg, m, peak))
        with stage("log"):
            log_outputs(cfg, ds, art, engine, timed, slot, workdir, log)
    finally:
        log.metrics(stage.metrics())
    return m


def load_data(cfg, log):
    """The data set, its images fitted to the model's input (resize, channels, normalisation)."""
    from bsb_hydra.data import load_dataset
    from bsb_hydra.data.transforms import fit_to_model

    want = cfg.model.fixed_input_shape()
    ds = fit_to_model(load_dataset(cfg.data, cfg.seed, want), want, cfg.data, model_label(cfg.model))
    log.tags({"data_source": ds.source, "test_split": ds.test_split, "data_transform": ds.transform,
              "input_shape": "x".join(map(str, ds.input_shape)), "labelled": str(ds.labelled).lower()})
    if not ds.labelled:
        needs = labels_needed(cfg)
        if needs:
            raise InputError(f"data={ds.name} has no labels, and {needs}: give labelled data, or measure "
                             "quant=fp32,fp16,dynamic,static on unlabelled inputs")
    return ds


def labels_needed(cfg) -> str:
    """Why this cell's scheme cannot run on unlabelled inputs ('' = it can)."""
    q = cfg.quant
    scheme = q.scheme.value
    if scheme == "qat" or (scheme == "fake_quant" and q.qat):
        return f"quant={scheme} fine-tunes on labelled training samples"
    if scheme == "auto" or (scheme == "static" and q.analyze):
        return f"quant={scheme} ranks layers by the accuracy they cost"
    return ""


def load_fp32(cfg, ds, log):
    """The fp32 model (trained once and cached, or a checkpoint), with its training curve."""
    from bsb_hydra.train import get_fp32_model

    _maybe_fault(cfg, "train")
    fp32 = get_fp32_model(cfg, ds, cfg.paths.cache_dir)
    log.tags({"fp32_source": fp32.source, "fp32_key": fp32.key, "fp32_weights_sha256": fp32.weights_sha256})
    for step, loss in enumerate(fp32.loss_curve):
        log.metric("train_loss", loss, step)
    if fp32.train_seconds:
        log.metrics({"train_seconds": fp32.train_seconds})
    return fp32


def model_cost(fp32, ds, log) -> Dict[str, float]:
    """model_params and model_macs (per sample, at the model's input size), logged before any build."""
    from bsb_hydra.model_facts import model_facts, onnx_facts

    facts = (model_facts(fp32.module, ds.x_train[:1]) if fp32.module is not None
             else onnx_facts(fp32.onnx_path, ds.input_shape))
    log.metrics(facts)
    return facts


def machine_limit(cfg, log) -> Optional[Dict[str, Any]]:
    """This host's measured limit at the cell's thread count (bsb_hydra/bench/peak.py; measured by
    the first cell of a host, cached for the others), logged as metrics; None when peak.enabled=false.
    A measurement that fails is tagged peak_error and the cell goes on without the ratios."""
    from bsb_hydra.bench import peak as peak_mod

    p = cfg.peak
    if not p.enabled:
        return None
    if system_info()["emulated"] == "true":  # timings under QEMU say nothing about a CPU's limit
        log.tags({"peak_error": "not measured under emulation: its timings mean nothing"})
        return None
    try:
        cache = p.cache_dir or os.environ.get("BSB_PEAK_DIR") or str(Path(cfg.paths.cache_dir) / "peak")
        peak = peak_mod.machine_peak(Path(cache), cfg.device.threads, p.size, p.min_duration_s)
    except Exception as e:
        log.tags({"peak_error": f"{type(e).__name__}: {e}"[:500]})
        return None
    errors = {rt: r["error"] for rt, r in peak["runtimes"].items() if "error" in r}
    log.tags({"peak_measured_at": peak["measured_at"], "peak_gemm_size": peak["size"],
              "peak_errors": "; ".join(f"{k}: {v}" for k, v in errors.items())[:500],
              "int8_peak_runtime": peak.get("gops_int8_runtime"), "fp32_peak_runtime": peak.get("gflops_fp32_runtime")})
    log.metrics(peak_mod.run_metrics(peak, cfg.backend.name))
    return peak


INT8_SCHEMES = ("static", "dynamic", "qat", "auto")


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
        if (cfg.quant.scheme.value in INT8_SCHEMES and f"speedup_b{bs}" in m
                and limits.get("int8_peak_ratio")):
            out[f"speedup_vs_peak_b{bs}"] = m[f"speedup_b{bs}"] / limits["int8_peak_ratio"]
    return out


def calibration_for(cfg, ds, log) -> Optional[np.ndarray]:
    """The training-split indices of the calibration samples (seeded; which ones is logged), for the
    schemes that calibrate; None for the others."""
    from bsb_hydra.data import calibration_indices

    scheme = cfg.quant.scheme.value
    if not (scheme in ("static", "qat", "auto") or (scheme == "fake_quant" and cfg.quant.activations)):
        return None
    idx = calibration_indices(ds, cfg.quant.samples, cfg.seed)
    log.json({"split": "train", "indices": idx.tolist()}, "calibration_indices.json")
    return idx


def build_context(cfg, ds, fp32, calib_idx, engine: str, info: Dict[str, str], workdir: Path) -> BuildContext:
    """What every backend's build reads: the fp32 model, an example input and the calibration samples
    (real training samples). The work folder starts empty: single runs started within the same second
    share Hydra's run dir, and a backend reuses what it finds there within a cell (an ONNX export)."""
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return BuildContext(fp32.module, ds.x_train[:1].copy(), ds.x_train[calib_idx] if calib_idx is not None else None, cfg,
                        engine, info["arch"], info["isa"], workdir, data=ds, calibration_indices=calib_idx,
                        source_onnx=Path(fp32.onnx_path) if fp32.onnx_path else None,
                        weights_sha256=fp32.weights_sha256)


def build_artifacts(cfg, backend, ctx: BuildContext, workdir: Path, log, stage: Optional[Stages] = None):
    """The backend's fp32 artifact and the cell's own (the same file for quant=fp32), with the facts
    of the conversion logged as build.* tags. quantize_seconds covers both builds; the stages
    convert (fp32) and quantize (the cell's own) split it."""
    scheme = cfg.quant.scheme.value
    stage = stage or Stages()
    _maybe_fault(cfg, "quantize")
    t0 = time.perf_counter()
    with stage("convert"):
        fp32_art = fp32_artifact(cfg, backend, ctx, workdir / f"fp32{backend.suffix}", log)
    with stage("quantize"):
        art = fp32_art if scheme == "fp32" else build_artifact(backend, scheme, ctx, workdir / f"{scheme}{backend.suffix}")
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
    return fp32_art, art


def fp32_artifact(cfg, backend, ctx: BuildContext, out: Path, log):
    """The backend's fp32 artifact: converted by this cell, or copied from the artifact cache where an
    earlier cell converted the same weights the same way (bsb_hydra/artifact_cache.py). Tagged
    fp32_artifact_cache = hit | stored | off."""
    build = lambda: build_artifact(backend, "fp32", ctx, out)  # noqa: E731
    if not (cfg.paths.reuse_fp32_artifacts and ctx.weights_sha256):
        log.tags({"fp32_artifact_cache": "off"})
        return build()
    from bsb_hydra import artifact_cache

    art, how, key = artifact_cache.fp32_artifact(backend, ctx, build, cfg.paths.cache_dir)
    log.tags({"fp32_artifact_cache": how, "fp32_artifact_key": key})
    return art


@dataclass
class Timed:
    """What the worker processes returned: the cell's result from process 0 (memory, logits), its
    fp32 reference's (or the cell's own, for fp32), and the latency samples of every process."""
    res: Any
    ref: Any
    lat_cell: List[dict] = field(default_factory=list)  # per process: {batch size: samples}
    lat_ref: List[dict] = field(default_factory=list)
    profile: Optional[dict] = None  # {"cell", "ref" (summaries of bsb_hydra/bench/profile.py), "slower"}


def run_workers(cfg, backend, engine: str, ds, fp32_art, art, workdir: Path, slot: JobSlot,
                stage: Optional[Stages] = None, peak: Optional[Dict[str, Any]] = None) -> Timed:
    """benchmark.repeats fresh processes. Each times the cell and, with the paired baseline, the fp32
    artifact of the same backend right beside it, in alternating order (cell first in processes 0, 2,
    ...; fp32 first in 1, 3, ...). Process 0 also evaluates both on the test split and takes the
    cell's memory, with the cell loaded first so that its peak RSS is its own. A simulated cell
    (quant=fake_quant) is not deployable: one process evaluates it and its fp32 reference; nothing is
    timed and no memory is reported."""
    from bsb_hydra.data.transforms import save_array

    _maybe_fault(cfg, "benchmark")
    scheme = cfg.quant.scheme.value
    b = cfg.benchmark
    latency_input = workdir / "latency_input.npy"
    np.save(latency_input, ds.x_test[:max(b.batch_sizes)])
    eval_input = workdir / "eval_input.npy"
    save_array(eval_input, ds.x_test)
    # min_runs, min_duration_s and max_duration_s are totals over the benchmark.repeats processes:
    # each process times its share (warm-up runs are per process).
    lat = {"batch_sizes": list(b.batch_sizes), "warmup_runs": b.warmup_runs,
           "min_runs": math.ceil(b.min_runs / b.repeats), "min_duration_s": b.min_duration_s / b.repeats,
           "max_duration_s": b.max_duration_s / b.repeats}
    common = dict(backend=cfg.backend.name, threads=cfg.device.threads,
                  cpus=list(cfg.device.core_pinning) if cfg.device.core_pinning is not None else None,
                  settings=backend.runner_settings(cfg, engine), latency_input=latency_input, eval_input=eval_input,
                  latency=lat, eval_batch_size=b.eval_batch_size, workdir=workdir / "bench", timeout_s=b.timeout_s)
    slot.sample()
    simulated = art.simulated
    ref_latency = scheme != "fp32" and b.paired_baseline and not simulated
    timed = Timed(None, None)
    stage = stage or Stages()
    try:
        with stage("measure"):
            for i in range(1 if simulated else b.repeats):
                items = [Item(scheme, art.path, art.input_dtype, latency=not simulated, evaluate=i == 0)]
                if scheme != "fp32" and (i == 0 or ref_latency):
                    ref_item = Item("fp32_reference", fp32_art.path, fp32_art.input_dtype, latency=ref_latency,
                                    evaluate=i == 0)
                    items = items + [ref_item] if i % 2 == 0 else [ref_item] + items
                out = run_worker(items=items, tag=f"r{i}", inject_fault=_worker_fault(cfg) if i == 0 else None, **common)
                slot.sample()  # between worker processes: a job that came and went in between is counted too
                if not simulated:
                    timed.lat_cell.append(out[scheme].data["samples_ms"])
                if ref_latency:
                    timed.lat_ref.append(out["fp32_reference"].data["samples_ms"])
                if i == 0:
                    timed.res, timed.ref = out[scheme], out.get("fp32_reference")
        with stage("profile"):
            timed.profile = profile_cell(cfg, art, fp32_art, timed, common, peak)
    finally:  # a 224-px test split is gigabytes: the inputs go, the results and artifacts stay
        eval_input.unlink(missing_ok=True)
    timed.ref = timed.ref if timed.ref is not None else timed.res
    slot.sample()
    return timed


def profile_cell(cfg, art, fp32_art, timed: Timed, common: Dict[str, Any],
                 peak: Optional[Dict[str, Any]] = None) -> Optional[dict]:
    """benchmark.profile: the cell (and its fp32 reference) under the runtime's own profiler, in one
    more fresh process after the timing: for "slow", only when the cell's median at the smallest
    batch size is above its fp32 reference's (pooled over the processes); "below_peak" also when an
    int8 cell's speedup there is short of benchmark.peak_target x the machine's int8_peak_ratio."""
    from bsb_hydra.bench import peak as peak_mod

    scheme, mode = cfg.quant.scheme.value, cfg.benchmark.profile
    if mode == "never" or art.simulated:
        return None
    b = str(min(cfg.benchmark.batch_sizes))
    speedup = None
    if timed.lat_ref and scheme != "fp32":
        speedup = float(np.median(np.concatenate([p[b] for p in timed.lat_ref]))) / \
            float(np.median(np.concatenate([p[b] for p in timed.lat_cell])))
    slower = speedup is not None and speedup < 1.0
    ratio = peak_mod.run_metrics(peak, cfg.backend.name).get("int8_peak_ratio") if peak else None
    short = None
    if speedup is not None and ratio and scheme in INT8_SCHEMES and speedup / ratio < cfg.benchmark.peak_target:
        short = speedup / ratio
    if mode == "slow" and not slower:
        return None
    if mode == "below_peak" and not (slower or short is not None):
        return None
    items = [Item(scheme, art.path, art.input_dtype, latency=False, profile=True)]
    if scheme != "fp32":
        items.append(Item("fp32_reference", fp32_art.path, fp32_art.input_dtype, latency=False, profile=True))
    out = run_worker(items=items, tag="profile", **{**common, "latency": None}, profile_runs=cfg.benchmark.profile_runs)
    return {"cell": out[scheme].data["profile"], "slower": slower, "short_of_peak": short,
            "ref": out["fp32_reference"].data["profile"] if scheme != "fp32" else None}


def size_metrics(art, fp32_art) -> Dict[str, float]:
    if art.simulated:  # bits x parameters + scales, against 32 bits x parameters (bsb_hydra/fake_quant.py)
        size, fp32_size = art.theoretical_size
        return {"size_bytes": size, "fp32_size_bytes": fp32_size, "size_ratio": size / fp32_size, "simulated": 1.0}
    size, fp32_size = os.path.getsize(art.path), os.path.getsize(fp32_art.path)
    return {"size_bytes": size, "fp32_size_bytes": fp32_size, "size_ratio": size / fp32_size}


def accuracy_metrics(cfg, ds, timed: Timed) -> Dict[str, float]:
    """Top-1 on the test split with its interval; the delta against the fp32 reference with the paired
    (per-sample) test; agreement with the fp32 reference's logits. Unlabelled inputs: agreement only
    (accuracy metrics are absent, not zero)."""
    if not ds.labelled:
        return {"test_samples": float(len(timed.res.logits)), **stats.agreement_metrics(timed.res.logits,
                                                                                         timed.ref.logits)}
    m: Dict[str, float] = {}
    acc = stats.accuracy_metrics(timed.res.logits, ds.y_test, ds.num_classes)
    ref_acc = stats.accuracy_metrics(timed.ref.logits, ds.y_test, ds.num_classes)
    m.update({k: acc[k] for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high")})
    m["fp32_accuracy"] = ref_acc["accuracy"]
    m["accuracy_delta_pp"] = 100.0 * (acc["accuracy"] - ref_acc["accuracy"])
    m["test_samples"] = acc["n"]
    correct = timed.res.logits.argmax(axis=1) == ds.y_test
    paired = stats.paired_accuracy(correct, timed.ref.logits.argmax(axis=1) == ds.y_test)  # same samples: McNemar
    m.update({"accuracy_delta_ci_low_pp": paired["ci_low_pp"], "accuracy_delta_ci_high_pp": paired["ci_high_pp"],
              "accuracy_delta_p_value": paired["p_value"], "gained_vs_fp32": paired["gained"],
              "lost_vs_fp32": paired["lost"]})
    m.update(stats.agreement_metrics(timed.res.logits, timed.ref.logits))
    if cfg.quant.scheme.value == "auto":  # the search chose on training samples: did its budget hold on the test split?
        budget_pp = 100.0 * cfg.quant.budget_for(ref_acc["accuracy"])
        m["auto_budget_met_test"] = float(m["accuracy_delta_pp"] >= -budget_pp - 1e-9)
    return m


def agreement_with_pytorch(cfg, fp32, ds, timed: Timed) -> Dict[str, float]:
    """The same weights on another runtime: how close is its fp32 artifact to the PyTorch model?"""
    if cfg.backend.name == "pytorch" or fp32.module is None:  # model=onnx has no PyTorch model
        return {}
    torch_logits = pytorch_test_logits(fp32, ds, cfg.benchmark.eval_batch_size, cfg.paths.cache_dir)
    return {"fp32_vs_pytorch_agreement": float(np.mean(timed.ref.logits.argmax(1) == torch_logits.argmax(1))),
            "fp32_vs_pytorch_max_abs_logit_diff": float(np.max(np.abs(timed.ref.logits - torch_logits)))}


def latency_metrics(cfg, art, timed: Timed) -> Dict[str, float]:
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


def log_outputs(cfg, ds, art, engine: str, timed: Timed, slot: JobSlot, workdir: Path, log) -> None:
    """Per-class accuracy, raw latency samples, the artifact, per-sample predictions and the tags of
    the measurement."""
    res, ref = timed.res, timed.ref
    if ds.labelled:
        acc = stats.accuracy_metrics(res.logits, ds.y_test, ds.num_classes)
        ref_acc = stats.accuracy_metrics(ref.logits, ds.y_test, ds.num_classes)
        log.json({"per_class_accuracy": {ds.class_names[c] if c < len(ds.class_names) else str(c): v
                                         for c, v in acc["per_class"].items()},
                  "fp32_per_class_accuracy": {str(c): v for c, v in ref_acc["per_class"].items()}},
                 "per_class_accuracy.json")
    log.json({"per_process": True, "samples_ms": timed.lat_cell, "fp32_reference_samples_ms": timed.lat_ref or None},
             "latency_samples.json")
    log.artifact(art.path, "model")
    pred_path = workdir / "predictions.npy"  # top-1 class per test sample: cross-backend agreement
    np.save(pred_path, res.logits.argmax(axis=1).astype(np.int16))
    log.artifact(pred_path, "")
    if ds.labelled:
        correct_path = workdir / "correct.npy"  # right or wrong per test sample: paired tests between cells
        np.save(correct_path, res.logits.argmax(axis=1) == ds.y_test)
        log.artifact(correct_path, "")
    log.tags({"test_set_digest": test_set_digest(ds)})
    if timed.profile is not None:
        from bsb_hydra.bench.profile import why_slow

        log.json(timed.profile, "profile.json")
        cell, ref = timed.profile["cell"], timed.profile["ref"]
        text = cell["error"] if "error" in cell else why_slow(cell, ref if ref and "error" not in ref else None)
        short = timed.profile.get("short_of_peak")
        name = "why_slow" if timed.profile["slower"] else "why_short_of_peak" if short is not None else "profile_summary"
        log.tags({name: text[:5000]})
    log.tags({"concurrent_jobs": slot.peak, "size_kind": "theoretical" if art.simulated else "artifact",
              "simulated": str(art.simulated).lower()})
    log.tags({"worker_imports": ",".join(res.data["heavy_modules"]), "input_dtype": art.input_dtype,
              # the affinity the worker itself reported, when pinning was asked for
              "cpus_pinned": ",".join(map(str, res.data.get("cpus", []))) if cfg.device.core_pinning else "",
              "torch_engine": engine if cfg.backend.name == "pytorch" else ""})


def test_set_digest(ds) -> str:
    """Which test samples a cell was scored on (inputs and labels): two cells' per-sample results
    pair up only when this matches. Read in chunks (a fitted 224-px split is not one array)."""
    from bsb_hydra.data.transforms import chunks

    h = hashlib.sha256()
    for a in (ds.x_test, ds.y_test) if ds.labelled else (ds.x_test,):
        h.update(f"{np.dtype(a.dtype)}{tuple(a.shape)}".encode())
        for part in chunks(a):
            h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


def pytorch_test_logits(fp32, ds, batch: int, cache_dir: str) -> np.ndarray:
    """The PyTorch fp32 model's logits on the test split, computed once per (weights, test set,
    eval batch, torch version, thread count) and cached under CACHE/logits: every ORT and TFLite cell
    of a model compares its fp32 reference with them (a 2000-image 224-px split took 48 s per cell)."""
    import torch

    key = hashlib.sha256(f"{fp32.weights_sha256}|{test_set_digest(ds)}|{batch}|{torch.__version__}|"
                         f"{torch.get_num_threads()}".encode()).hexdigest()[:20]
    path = Path(cache_dir) / "logits" / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):  # a torn file: computed again below
            pass
    logits = _torch_logits(fp32.module, ds.x_test, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, logits)
    os.replace(tmp, path)
    return logits


def _torch_logits(module, x, batch: int) -> np.ndarray:
    import torch

    from bsb_hydra.data.transforms import chunks

    with torch.inference_mode():
        return np.concatenate([module(torch.from_numpy(np.ascontiguousarray(part))).numpy()
                               for part in chunks(x, batch)])


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
    """One cell, start to end: its MLflow run (or the earlier ok run it skips for), its status and
    reason, result.json in the job's folder and the printed summary line. Never raises for the cell."""
    import mlflow

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
    if prior is None:
        with mlflow.start_run(experiment_id=experiment_id, run_name=cid) as run:
            result["run_id"] = run.info.run_id
            log = RunLog(mlflow)
            log.tags({"status": "running", "cell": cid, "config_hash": chash, "git_sha": git_sha(),
                      "sweep_dir": job["sweep_dir"], "job_num": job["job_num"], **me, **info})
            _run_logged(dict_cfg, info, out_dir, log, result)
            result["seconds"] = time.perf_counter() - t_start
            log.tags({"status": result["status"], "reason": result["reason"][:5000]})
            log.metrics({"cell_seconds": result["seconds"]})
            if result["status"] == "failed":
                mlflow.end_run(status="FAILED")
    else:
        result.update(status="skipped", run_id=prior.info.run_id, seconds=time.perf_counter() - t_start,
                      reason=f"run {prior.info.run_id} already measured config_hash {chash} on this machine "
                             f"(status ok); force=true measures it again")
        result["metrics"] = dict(prior.data.metrics)
    print(summary_line(result), flush=True)
    _write_result(out_dir, result)
    return result


def _run_logged(dict_cfg: DictConfig, info: Dict[str, str], out_dir: Path, log, result: Dict[str, Any]) -> None:
    """Inside the cell's open run: what it is (tags, params, config), the checks before any work
    (config, device, support), then the measurement; sets result's status, reason and metrics."""
    import mlflow

    from bsb_hydra.backends import get_backend

    try:
        log.tags({"model": model_label(dict_cfg.model), "data": dict_cfg.data.name, "quant": _name(dict_cfg.quant.scheme),
                  "backend": dict_cfg.backend.name, "device": dict_cfg.device.name,
                  "threads": dict_cfg.device.threads, "seq_len": dict_cfg.data.get("seq_len") or ""})
        mlflow.log_params(tracking.resolved_params(dict_cfg))
        log.json(tracking.resolved_config(dict_cfg), "config.json")
        cfg = validate(dict_cfg)
        log.tags({"model_source": type(cfg.model).source_kind, "model_ref": cfg.model.source_ref()})
        device_mismatch(cfg.device, info)
        reason = get_backend(cfg.backend.name).unsupported_reason(cfg)
        if reason:
            raise Unsupported(reason)
        with JobSlot() as slot:
            result["metrics"] = measure(cfg, dict_cfg, out_dir / "artifacts", log, slot)
        result["metrics"].update(best_fp32_metrics(cfg, result["metrics"], log))
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


SAME_INPUT_TAGS = ("model_ref", "input_shape", "data", "arch", "cpu", "emulated", "threads")


def best_fp32_metrics(cfg, m: Dict[str, float], log) -> Dict[str, float]:
    """speedup_vs_best_fp32_b{N}: the fastest fp32 p50 at batch N of the same model, input and data on
    this machine (arch, cpu, emulation, threads), across every backend's ok fp32 cell in the
    experiment and this cell's own paired fp32 reference, over this cell's p50. The question it
    answers: how much faster than the best fp32 I could ship here. Tagged best_fp32_b{N} (backend
    and ms). The report recomputes it over all its runs (fp32 cells measured later count there)."""
    import mlflow

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
    for key in [k for k in m if k.startswith("latency_p50_ms_b")]:
        bs = key[len("latency_p50_ms_b"):]
        candidates = [(r.data.metrics[key], r.data.tags.get("backend", "?")) for r in others if key in r.data.metrics]
        ref = m[key] if cfg.quant.scheme.value == "fp32" else m.get(f"fp32_latency_p50_ms_b{bs}")
        if ref is not None:
            candidates.append((ref, own))
        if candidates:
            best_ms, backend = min(candidates)
            out[f"speedup_vs_best_fp32_b{bs}"] = best_ms / m[key]
            out[f"best_fp32_latency_p50_ms_b{bs}"] = best_ms
            log.tags({f"best_fp32_b{bs}": f"{backend} {best_ms:.4g} ms"})
    return out


def summary_line(r: Dict[str, Any]) -> str:
    m = r.get("metrics") or {}
    if r["status"] == "skipped":
        return f"[skipped] {r['cell']}: {r['reason']}"
    if r["status"] != "ok":
        return f"[{r['status']}] {r['cell']}: {r['reason'].splitlines()[0] if r['reason'] else ''}"
    simulated = bool(m.get("simulated"))
    theoretical = " theoretical" if simulated else ""
    parts = [f"size {m['size_bytes'] / 1024:.0f} KiB{theoretical} ({m['size_ratio']:.2f}x fp32)",
             f"acc {100 * m['accuracy']:.2f}% ({m['accuracy_delta_pp']:+.2f} pp)" if "accuracy" in m else "no labels",
             f"agree {100 * m['top1_agreement']:.2f}%"]
    if "latency_p50_ms_b1" in m:
        best = f", {m['speedup_vs_best_fp32_b1']:.2f}x vs best fp32" if "speedup_vs_best_fp32_b1" in m else ""
        parts.append(f"p50@b1 {m['latency_p50_ms_b1']:.3f} ms (speedup {m.get('speedup_b1', float('nan')):.2f}x{best})")
    parts.append("SIMULATED: not deployable, not timed" if simulated else f"peak {m['peak_rss_mb']:.0f} MB")
    return f"[ok] {r['cell']}: " + ", ".join(parts)


def _write_result(out_dir: Path, result: Dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
