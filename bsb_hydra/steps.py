"""The steps of one cell, in order: data -> fp32 model (trained once, cached, or a file) -> the task,
from a probe of the fp32 model's outputs -> the backend's fp32 artifact and the cell's own -> the
measurement in fresh processes (bsb_hydra/workers.py) -> the score (bsb_hydra/scoring.py) -> logged.
``measure`` runs them; each step is a function of its own, timed as a stage."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from bsb_hydra.backends.base import BuildContext, Unsupported
from bsb_hydra.concurrency import JobSlot
from bsb_hydra.config import InputError
from bsb_hydra.models import model_label
from bsb_hydra.sysinfo import system_info, torch_engine


class Stages:
    """Wall-clock seconds of each stage of a cell: data, fp32 (train or load, and the probe of its
    outputs), peak (the machine's limit; measured by a host's first cell, read from the cache
    after), convert (the backend's fp32 artifact), quantize (the cell's own artifact), measure (the
    timing and evaluation processes), profile (benchmark.profile's extra process), score (the
    task's reduction of the outputs, and for onnxruntime and tflite the PyTorch fp32 model over the
    test split), log (the artifacts and tags to MLflow). Logged as stage_<name>_seconds, also for a
    cell that fails (the stages it got through); make bench prints them per cell. The sweep
    process's peak RSS within each stage is logged as stage_<name>_peak_rss_mb (Linux: the
    high-water mark is reset as a stage starts)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self.peak_mb: Dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        from bsb_hydra.scoring import peak_rss_mb, reset_peak_rss

        t0 = time.perf_counter()
        reset = reset_peak_rss()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if reset:
                self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), peak_rss_mb())

    def metrics(self) -> Dict[str, float]:
        return {**{f"stage_{k}_seconds": v for k, v in self.seconds.items()},
                **{f"stage_{k}_peak_rss_mb": v for k, v in self.peak_mb.items()}}


def measure(cfg, dict_cfg, workdir: Path, log, slot: Optional[JobSlot] = None) -> Dict[str, Any]:
    """Everything after the support check, step by step. Returns the metrics; logs tags, curves and
    artifacts through ``log``. ``slot`` counts the bsb_hydra jobs on this machine while the workers time."""
    from bsb_hydra.cell import cell_id, worker_fault
    from bsb_hydra.scoring import log_score, score_cell, timing_metrics
    from bsb_hydra.workers import run_workers

    stage = Stages()
    try:
        cell = prepare(cfg, workdir, log, stage)
        ds, fp32, task, ctx, backend, engine = cell.ds, cell.fp32, cell.task, cell.ctx, cell.backend, cell.engine
        with stage("data"):
            digest = log_datasets(ds, cell.calibration_indices, log)
        with stage("peak"):
            peak = machine_limit(cfg, log)
        facts = cell.facts
        fp32_art, art = build_artifacts(cfg, backend, ctx, workdir, log, stage)
        log.model(cell_id(dict_cfg), cfg, art)  # the measured artifact, a LoggedModel: what follows links to it
        slot = slot or JobSlot()
        timed = run_workers(cfg, backend, engine, ds, fp32_art, art, workdir, slot, stage, peak, worker_fault(cfg))
        timing = timing_metrics(cfg, art, fp32_art, timed)
        m: Dict[str, float] = {"concurrent_jobs": slot.peak, **timing}
        log.metrics(m)  # as soon as measured: a scoring or storage failure after this never loses them
        if slot.peak > 1:
            print(f"  WARNING: {slot.peak} bsb_hydra jobs ran on this machine while this cell was timed: they share "
                  f"cores and caches, so its latencies are distorted (tag concurrent_jobs={slot.peak})", flush=True)
        with stage("score"):
            score = score_cell(cfg, task, ds, fp32, art, fp32_art, timed, facts, peak, timing)
        log.metrics({k: v for k, v in score.metrics.items() if k not in m}, on_test=True)  # before any file is stored
        m.update(score.metrics)
        with stage("log"):
            log_score(score, workdir, log)
            log_measurement(cfg, digest, art, engine, timed, slot, log)
    finally:
        log.metrics(stage.metrics())
    return m


@dataclass
class Prepared:
    """A cell up to its builds (``prepare``): the fitted data, the calibration indices, the fp32
    model and its cost, the task that reads its outputs, and what every build reads."""
    ds: Any
    calibration_indices: Optional[np.ndarray]
    fp32: Any
    facts: Dict[str, float]
    task: Any
    ctx: BuildContext
    backend: Any
    engine: str


class NoLog:
    """A log that keeps nothing: for what prepares a cell outside an MLflow run (the demo)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def prepare(cfg, workdir: Path, log=None, stage: Optional[Stages] = None) -> Prepared:
    """The first half of every cell, shared by the grid (``measure``) and the demo: data (fitted to
    the model) -> calibration indices -> fp32 model (trained once and cached, a checkpoint, a file)
    -> its cost -> the task, from a probe of its outputs -> the build context in ``workdir``. A
    scheme or backend that cannot take the task raises Unsupported before anything is built."""
    from bsb_hydra.backends import get_backend

    log = log or NoLog()
    stage = stage or Stages()
    info = system_info()
    backend = get_backend(cfg.backend.name)
    engine = torch_engine(cfg.device.torch_engine, info["arch"])
    with stage("data"):
        ds = load_data(cfg, log)
        calib_idx = calibration_for(cfg, ds, log)  # before training: no samples at all is the data's error
    with stage("fp32"):
        fp32 = load_fp32(cfg, ds, log)
        facts = model_cost(fp32, ds, log)
        task = probe_task(cfg, fp32, ds, log)  # before anything is quantized
    reason = cfg.quant.task_reason(task.name) or backend.task_reason(cfg, task)
    if reason:
        raise Unsupported(reason)
    ctx = build_context(cfg, ds, fp32, calib_idx, engine, info, workdir)
    return Prepared(ds, calib_idx, fp32, facts, task, ctx, backend, engine)


# ------------------------------------------------------------------------------------- data
def load_data(cfg, log):
    """The data set, its images fitted to the model's input (resize, channels, normalisation)."""
    from bsb_hydra.data import load_dataset
    from bsb_hydra.data.transforms import fit_to_model
    from bsb_hydra.feeds import Feeds, describe

    want = cfg.model.fixed_input_shape()
    specs = cfg.model.input_specs()
    ds = load_dataset(cfg.data, cfg.seed, want, specs=specs)
    if specs and len(specs) > 1 and not isinstance(ds.x_train, Feeds):
        if ds.vocab is None or not np.issubdtype(ds.x_train.dtype, np.integer):
            raise InputError(f"model={model_label(cfg.model)} takes {len(specs)} inputs "
                             f"({', '.join(s.describe() for s in specs)}); data={ds.name} gives one: feed it text "
                             "(its tokenizer gives every input) or data=random (each input by its dtype)")
        from bsb_hydra.data.text import as_model_inputs

        ds = as_model_inputs(ds, specs)
    ds = fit_to_model(ds, want, cfg.data, model_label(cfg.model))
    log.tags({"data_source": ds.source, "test_split": ds.test_split, "data_transform": ds.transform,
              "input_shape": describe(ds.x_train), "labelled": str(ds.labelled).lower()})
    if not ds.labelled:
        needs = cfg.quant.label_reason()
        if needs:
            raise InputError(f"data={ds.name} has no labels, and {needs}: give labelled data, or measure "
                             "quant=fp32,fp16,dynamic,static on unlabelled inputs")
    return ds


def log_datasets(ds, calib_idx, log) -> str:
    """The test split (and the calibration samples, for a scheme that calibrates) as the run's MLflow
    datasets (bsb_hydra/logged_models.py). Returns the test split's digest (tag test_set_digest)."""
    from bsb_hydra.logged_models import calibration_dataset, test_dataset
    from bsb_hydra.scoring import test_set_digest

    digest = test_set_digest(ds)
    sets = [(test_dataset(ds, digest), "testing")]
    if calib_idx is not None:
        sets.append((calibration_dataset(ds, calib_idx), "calibration"))
    log.inputs(sets)
    return digest


def calibration_for(cfg, ds, log) -> Optional[np.ndarray]:
    """The training-split indices of the calibration samples (seeded; which ones is logged), for the
    schemes that calibrate; None for the others. A quant.samples larger than the training split
    uses every sample, and says so (calibration_samples_used)."""
    from bsb_hydra.data import calibration_indices

    if not cfg.quant.calibrates():
        return None
    idx = calibration_indices(ds, cfg.quant.samples, cfg.seed)
    log.json({"split": "train", "indices": idx.tolist()}, "calibration_indices.json")
    log.metrics({"calibration_samples_used": float(len(idx))})
    if len(idx) < cfg.quant.samples:
        note = (f"quant.samples={cfg.quant.samples} is more than the {len(idx)} training samples of data={ds.name}: "
                f"calibrating on all {len(idx)}")
        print(f"  NOTE: {note}", flush=True)
        log.tags({"calibration_note": note})
    return idx


# ------------------------------------------------------------------------------- fp32 model
def load_fp32(cfg, ds, log):
    """The fp32 model (trained once and cached, or a checkpoint), with its training curve. What the
    model cache said (an entry rebuilt, weights kept in memory only) is tagged fp32_cache_note."""
    from bsb_hydra.cache_files import Notes
    from bsb_hydra.cell import maybe_fault
    from bsb_hydra.train import get_fp32_model

    maybe_fault(cfg, "train")
    task = cfg.task.name
    if task not in ("auto", "classification") and cfg.model.needs_training(ds.labelled):
        raise InputError(f"task={task}: model={model_label(cfg.model)} has no trained weights, and training here is "
                         "for classifiers (cross-entropy on class labels): give its weights (model.checkpoint=..., "
                         "or a model file: model=onnx, model=torch with a whole-model checkpoint)")
    notes = Notes()
    fp32 = get_fp32_model(cfg, ds, cfg.paths.cache_dir, notes)
    log.tags({"fp32_source": fp32.source, "fp32_key": fp32.key, "fp32_weights_sha256": fp32.weights_sha256,
              "fp32_cache_note": notes.text()})
    for step, loss in enumerate(fp32.loss_curve):
        log.metric("train_loss", loss, step)
    if fp32.train_seconds:
        log.metrics({"train_seconds": fp32.train_seconds})
    return fp32


def model_cost(fp32, ds, log) -> Dict[str, float]:
    """model_params and model_macs (per sample, at the model's input size), logged before any build."""
    from bsb_hydra.feeds import specs_of
    from bsb_hydra.model_facts import model_facts, onnx_facts

    facts = (model_facts(fp32.module, ds.x_train[:1]) if fp32.module is not None
             else onnx_facts(fp32.onnx_path, specs_of(ds.x_train)))
    log.metrics(facts)
    return facts


PROBE_SAMPLES = 2


def probe_task(cfg, fp32, ds, log):
    """The fp32 model once on a few test samples, before any quantization: its outputs (names,
    shapes, dtypes) and the task that reads them (task=auto infers it and says why). A model that
    cannot run the data's inputs, or whose outputs the task cannot read, fails here in one line."""
    from bsb_hydra.feeds import Feeds, describe, materialize, torch_outputs
    from bsb_hydra.tasks import resolve
    from bsb_hydra.tasks.base import OutputInfo, Probe

    x = materialize(ds.x_test[:PROBE_SAMPLES])
    label = model_label(cfg.model)
    try:
        if fp32.module is not None:
            values = torch_outputs(fp32.module, x)
            names = [f"output_{i}" for i in range(len(values))] if len(values) > 1 else ["logits"]
        else:
            from bsb_hydra.models.onnx import run_file

            names, values = run_file(fp32.onnx_path, x)
    except InputError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise InputError(f"model={label} does not run on data={ds.name}'s inputs ({describe(x)} per sample): "
                         f"{type(e).__name__}: {first}") from None
    first = next(iter(x.values())) if isinstance(x, Feeds) else x
    probe = Probe([OutputInfo(n, tuple(int(d) for d in v.shape[1:]), str(v.dtype)) for n, v in zip(names, values)],
                  values, tuple(ds.input_shape), list(x.names) if isinstance(x, Feeds) else [], np.asarray(first))
    task, why = resolve(cfg.task, cfg.model, probe, ds)
    log.tags({"task": task.name, "task_inferred": why, "task_reads": task.describe()[:5000],
              "outputs": probe.describe()[:5000], "quality_metric": task.quality_metric(),
              "quality_higher_is_better": str(task.higher_is_better).lower()})
    print(f"  task {task.name}: {task.describe()}" + (f" (task=auto: {why})" if why else ""), flush=True)
    return task


def machine_limit(cfg, log) -> Optional[Dict[str, Any]]:
    """This host's measured limit at the cell's thread count (bsb_hydra/bench/peak.py; measured by
    the first cell of a host, cached for the others), logged as metrics; None when peak.enabled=false.
    A measurement that fails is tagged peak_error and the cell goes on without the ratios; what the
    peak cache said (a corrupt entry measured again) is tagged peak_cache_note."""
    from bsb_hydra.bench import peak as peak_mod
    from bsb_hydra.cache_files import Notes

    p = cfg.peak
    if not p.enabled:
        return None
    if system_info()["emulated"] == "true":  # timings under QEMU say nothing about a CPU's limit
        log.tags({"peak_error": "not measured under emulation: its timings mean nothing"})
        return None
    notes = Notes()
    try:
        cache = p.cache_dir or os.environ.get("BSB_PEAK_DIR") or str(Path(cfg.paths.cache_dir) / "peak")
        peak = peak_mod.machine_peak(Path(cache), cfg.device.threads, p.size, p.min_duration_s, note=notes)
    except Exception as e:
        log.tags({"peak_error": f"{type(e).__name__}: {e}"[:500], "peak_cache_note": notes.text()})
        return None
    log.tags({"peak_cache_note": notes.text()})
    errors = {rt: r["error"] for rt, r in peak["runtimes"].items() if "error" in r}
    log.tags({"peak_measured_at": peak["measured_at"], "peak_gemm_size": peak["size"],
              "peak_errors": "; ".join(f"{k}: {v}" for k, v in errors.items())[:500],
              "int8_peak_runtime": peak.get("gops_int8_runtime"), "fp32_peak_runtime": peak.get("gflops_fp32_runtime")})
    log.metrics(peak_mod.run_metrics(peak, cfg.backend.name))
    return peak


# ------------------------------------------------------------------------------------ build
def build_context(cfg, ds, fp32, calib_idx, engine: str, info: Dict[str, str], workdir: Path) -> BuildContext:
    """What every backend's build reads: the fp32 model, an example input and the calibration samples
    (real training samples). The work folder starts empty: single runs started within the same second
    share Hydra's run dir, and a backend reuses what it finds there within a cell (an ONNX export)."""
    import shutil

    from bsb_hydra.feeds import materialize

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return BuildContext(fp32.module, materialize(ds.x_train[:1]),
                        materialize(ds.x_train[calib_idx]) if calib_idx is not None else None, cfg,
                        engine, info["arch"], info["isa"], workdir, data=ds, calibration_indices=calib_idx,
                        source_onnx=Path(fp32.onnx_path) if fp32.onnx_path else None,
                        weights_sha256=fp32.weights_sha256)


def build_artifact(backend, scheme: str, ctx: BuildContext, out: Path):
    """The deployable artifact of ``scheme``: the backend's own build, or for quant=auto its
    build_auto (mixed.py's search over the backend's hooks unless the backend has its own)."""
    if scheme == "auto":
        return backend.build_auto(ctx, out)
    return backend.build(scheme, ctx, out)


def build_artifacts(cfg, backend, ctx: BuildContext, workdir: Path, log, stage: Optional[Stages] = None):
    """The backend's fp32 artifact and the cell's own (the same file for quant=fp32), with the facts
    of the conversion logged as build.* tags. quantize_seconds covers both builds; the stages
    convert (fp32) and quantize (the cell's own) split it."""
    from bsb_hydra.cell import maybe_fault

    scheme = cfg.quant.scheme.value
    stage = stage or Stages()
    maybe_fault(cfg, "quantize")
    t0 = time.perf_counter()
    fp32_art = None  # a quantized file given alone (model=tflite without model.reference) has none
    if cfg.model.has_fp32_reference():
        with stage("convert"):
            fp32_art = fp32_artifact(cfg, backend, ctx, workdir / f"fp32{backend.suffix}", log)
    else:
        log.tags({"fp32_reference": "none"})
        print("  NOTE: no fp32 reference (a quantized file given without model.reference): size, latency, memory and "
              "the quality against the labels only; no ratio, speedup or fidelity", flush=True)
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
    fp32_artifact_cache = hit | stored | not_stored (a full disk, a read-only cache) | off, and what
    the cache said in fp32_artifact_cache_note."""
    build = lambda: build_artifact(backend, "fp32", ctx, out)  # noqa: E731
    if not (cfg.paths.reuse_fp32_artifacts and ctx.weights_sha256):
        log.tags({"fp32_artifact_cache": "off"})
        return build()
    from bsb_hydra import artifact_cache
    from bsb_hydra.cache_files import Notes

    notes = Notes()
    art, how, key = artifact_cache.fp32_artifact(backend, ctx, build, cfg.paths.cache_dir, log=notes)
    log.tags({"fp32_artifact_cache": how, "fp32_artifact_key": key, "fp32_artifact_cache_note": notes.text()})
    return art


# -------------------------------------------------------------------------------------- log
def log_measurement(cfg, digest: str, art, engine: str, timed, slot: JobSlot, log) -> None:
    """Raw latency samples, the artifact (into the cell's LoggedModel), the profile and the tags of the
    measurement."""
    res = timed.res
    log.json({"per_process": True, "samples_ms": timed.lat_cell, "fp32_reference_samples_ms": timed.lat_ref or None},
             "latency_samples.json")
    log.model_files(art, cfg.backend.name)  # with OpenVINO IR's .bin beside its .xml
    log.tags({"test_set_digest": digest, "output_names": ",".join(res.outputs.names)[:5000]})
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
    for name in ("cell", "fp32_reference"):  # every output of the test split was on disk for scoring only
        r = timed.res if name == "cell" else timed.ref
        if r is not None and r.outputs is not None:
            r.outputs.remove()
