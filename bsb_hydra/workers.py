"""The worker orchestration of a cell: the fresh benchmark processes (bsb_hydra/bench/harness.py and
worker.py) that time the cell's artifact beside its fp32 reference, evaluate both on the test split
and, when asked, profile them. What they return (``Timed``) is scored by bsb_hydra/scoring.py."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from bsb_hydra.bench.harness import Item, run_worker
from bsb_hydra.concurrency import JobSlot


@dataclass
class Timed:
    """What the worker processes returned: the cell's result from process 0 (memory, outputs), its
    fp32 reference's (or the cell's own, for fp32), and the latency samples of every process."""
    res: Any
    ref: Any
    lat_cell: List[dict] = field(default_factory=list)  # per process: {batch size: samples}
    lat_ref: List[dict] = field(default_factory=list)
    profile: Optional[dict] = None  # {"cell", "ref" (summaries of bsb_hydra/bench/profile.py), "slower"}


def run_workers(cfg, backend, engine: str, ds, fp32_art, art, workdir: Path, slot: JobSlot,
                stage=None, peak: Optional[Dict[str, Any]] = None, fault: Optional[str] = None) -> Timed:
    """benchmark.repeats fresh processes. Each times the cell and, with the paired baseline, the fp32
    artifact of the same backend right beside it, in alternating order (cell first in processes 0, 2,
    ...; fp32 first in 1, 3, ...). Process 0 also evaluates both on the test split (every output,
    to disk) and takes the cell's memory, with the cell loaded first so that its peak RSS is its own.
    A simulated cell (quant=fake_quant) is not deployable: one process evaluates it and its fp32
    reference; nothing is timed and no memory is reported. ``fault``: debug's injected worker fault."""
    from bsb_hydra.feeds import input_files, save_inputs
    from bsb_hydra.steps import Stages

    scheme = cfg.quant.scheme.value
    b = cfg.benchmark
    latency_input = save_inputs(workdir / "latency_input", ds.x_test[:max(b.batch_sizes)])
    eval_input = save_inputs(workdir / "eval_input", ds.x_test)
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
    paired = scheme != "fp32" and fp32_art is not None  # None: a quantized file given without a reference
    ref_latency = paired and b.paired_baseline and not simulated
    timed = Timed(None, None)
    stage = stage or Stages()
    try:
        with stage("measure"):
            for i in range(1 if simulated else b.repeats):
                items = [Item(scheme, art.path, art.input_dtype, latency=not simulated, evaluate=i == 0)]
                if paired and (i == 0 or ref_latency):
                    ref_item = Item("fp32_reference", fp32_art.path, fp32_art.input_dtype, latency=ref_latency,
                                    evaluate=i == 0)
                    items = items + [ref_item] if i % 2 == 0 else [ref_item] + items
                out = run_worker(items=items, tag=f"r{i}", inject_fault=fault if i == 0 else None, **common)
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
        for path in input_files(eval_input):
            path.unlink(missing_ok=True)
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
    if speedup is not None and ratio and cfg.quant.int8 and speedup / ratio < cfg.benchmark.peak_target:
        short = speedup / ratio
    if mode == "slow" and not slower:
        return None
    if mode == "below_peak" and not (slower or short is not None):
        return None
    items = [Item(scheme, art.path, art.input_dtype, latency=False, profile=True)]
    if scheme != "fp32" and fp32_art is not None:
        items.append(Item("fp32_reference", fp32_art.path, fp32_art.input_dtype, latency=False, profile=True))
    out = run_worker(items=items, tag="profile", **{**common, "latency": None}, profile_runs=cfg.benchmark.profile_runs)
    return {"cell": out[scheme].data["profile"], "slower": slower, "short_of_peak": short,
            "ref": out["fp32_reference"].data["profile"] if "fp32_reference" in out else None}
