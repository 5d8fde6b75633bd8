"""One cell's lifecycle: its identity (cell_id, config_hash), the skip of an earlier ok run (resume),
its MLflow run, the checks before any work (config, device, support), the measurement
(bsb_hydra/steps.py), its status and reason, result.json and the printed summary line. A cell
never raises out of a sweep: it ends ok, unsupported (with the reason) or failed (with the
traceback logged)."""
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

from omegaconf import DictConfig, OmegaConf

from bsb_hydra import tracking
from bsb_hydra.backends.base import Unsupported
from bsb_hydra.concurrency import JobSlot
from bsb_hydra.config import validate
from bsb_hydra.metric_names import mlflow_key, run_metrics, stored
from bsb_hydra.models import model_label
from bsb_hydra.sysinfo import git_sha, system_info


class InjectedFault(RuntimeError):
    pass


class ArtifactStoreError(OSError):
    pass


def _name(v) -> str:
    return v.value if hasattr(v, "value") else str(v)


def cell_id(cfg) -> str:
    q = cfg.quant
    scheme = _name(q.scheme)
    if scheme == "fake_quant":  # a sweep over bits: tell its cells apart (fake_quant_w4a4_qat)
        scheme += f"_w{q.bits}" + (f"a{q.bits}" if q.activations else "") + ("_qat" if q.qat else "")
    return f"{model_label(cfg.model)}-{cfg.data.name}-{scheme}-{cfg.backend.name}"


# Config keys that name a user's file: what the file holds is part of what a cell measures.
CONTENT_KEYS = ("model.path", "model.checkpoint", "data.path", "data.annotations")


def config_hash(dict_cfg: DictConfig) -> str:
    """What a cell measures, as a hash: its resolved config (less where and how it is logged), plus the
    SHA-256 of every file it names (CONTENT_KEYS): a checkpoint or an npz rewritten at the same path is
    another measurement, never one resume skips. Configs that name no file keep their earlier hash."""
    c = OmegaConf.to_container(dict_cfg, resolve=True, enum_to_str=True)
    for k in ("hydra", "mlflow", "paths", "debug", "force", "peak"):  # where and how, not what
        c.pop(k, None)
    tracking.drop_inert(c)  # keys added later, inert here: earlier runs keep their hash
    files = content_hashes(c)
    if files:
        c["files_sha256"] = files
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]


def content_hashes(c: Dict[str, Any]) -> Dict[str, str]:
    from bsb_hydra.train import sha256_file

    out = {}
    for dotted in CONTENT_KEYS:
        section, key = dotted.split(".")
        value = (c.get(section) or {}).get(key)
        if isinstance(value, str) and value and os.path.isfile(os.path.expanduser(value)):
            out[dotted] = sha256_file(os.path.expanduser(value))
    return out


def maybe_fault(cfg, stage: str) -> None:
    d = cfg.debug
    if d.fail_stage.value == stage and d.fail_cell in cell_id(cfg):
        raise InjectedFault(f"debug.fail_stage={stage}: injected failure in cell {cell_id(cfg)}")


def worker_fault(cfg) -> Optional[str]:
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


class RunLog:
    """Thin wrapper over the active MLflow run, so measure() reads as a list of steps. Metrics are
    given by their flat names and stored under their group (metric_names.mlflow_key). Once the
    cell's artifact is a LoggedModel (``model``), every metric carries its model_id; the quality
    metrics also name the test split (``inputs``) as their dataset."""

    def __init__(self, mlflow, client=None, run_id: str = "", experiment_id: str = "") -> None:
        self.mlflow = mlflow
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.logged_tags: Dict[str, str] = {}  # what this cell tagged (the summary line reads its task)
        self.logged_metrics: Dict[str, float] = {}  # flat names; step 0 only (curves are not copied to the model)
        self.model_id: Optional[str] = None
        self.test_dataset = None  # (name, digest) once logged

    def _batch(self, d: Dict[str, float], step: int = 0, on_test: bool = False) -> None:
        import time as _time

        from mlflow.entities import Metric

        ts = int(_time.time() * 1000)
        name, digest = self.test_dataset if on_test and self.test_dataset else (None, None)
        metrics = [Metric(mlflow_key(k), v, ts, step, model_id=self.model_id, dataset_name=name,
                          dataset_digest=digest, run_id=self.run_id) for k, v in d.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def inputs(self, datasets) -> None:
        """MLflow datasets ((dataset, context) pairs) as the run's inputs; the first, the test split,
        becomes the dataset of the quality metrics."""
        self.mlflow.log_inputs(datasets=[d for d, _ in datasets], contexts=[c for _, c in datasets],
                               tags_list=[None] * len(datasets))
        self.test_dataset = (datasets[0][0].name, datasets[0][0].digest)

    def model(self, cell: str, cfg, art) -> None:
        """The cell's artifact as a LoggedModel from now on (logged_models.start): the metrics logged
        so far are linked to it as well (MLflow's own log_model does the same)."""
        from bsb_hydra import logged_models

        self.model_id = logged_models.start(self.client, self.run_id, self.experiment_id, cell, cfg, art)
        if self.logged_metrics:
            self._batch(dict(self.logged_metrics))

    def model_files(self, art, runtime: str) -> None:
        """The measured files into the LoggedModel (logged_models.store_files)."""
        from bsb_hydra import logged_models

        try:
            logged_models.store_files(self.client, self.model_id, self.run_id, art, runtime)
        except OSError as e:
            try:
                where = f"{self.client.get_logged_model(self.model_id).artifact_location}/{Path(art.path).name}"
            except Exception:
                where = f"models:/{self.model_id}"
            raise self._store_error(Path(art.path).name, "", e, where) from None

    def finish_model(self, ok: bool) -> None:
        """READY for an ok cell, FAILED otherwise; nothing when the cell never had an artifact."""
        from bsb_hydra import logged_models

        if self.model_id is not None:
            logged_models.finish(self.client, self.model_id, ok)

    def tags(self, d: Dict[str, Any]) -> None:
        """A tag that does not apply to this cell (cpus_pinned unpinned, seq_len on images, the
        reason of an ok cell) is left out, not logged as ''."""
        d = {k: str(v) for k, v in d.items() if v is not None and str(v) != ""}
        self.logged_tags.update(d)
        if d:
            self.mlflow.set_tags(d)

    def metrics(self, d: Dict[str, float], on_test: bool = False) -> None:
        """Finite values only: an infinite SQNR (outputs identical to fp32's) or PSNR would be stored
        by MLflow as 1.8e308; left out, the cell's other fidelity figures say it (max_abs_error 0).
        ``on_test``: measured on the test split (the quality and fidelity figures)."""
        d = {k: float(v) for k, v in d.items() if math.isfinite(float(v))}
        if not d:
            return
        self.logged_metrics.update(d)
        if self.client is None:
            self.mlflow.log_metrics(stored(d))
        else:
            self._batch(d, on_test=on_test)

    def metric(self, key: str, value: float, step: int) -> None:
        if self.client is None:
            self.mlflow.log_metric(mlflow_key(key), float(value), step=step)
        else:
            self._batch({key: float(value)}, step=step)

    def json(self, obj: Any, name: str) -> None:
        try:
            self.mlflow.log_dict(obj, name)
        except OSError as e:
            raise self._store_error(name, "", e) from None

    def artifact(self, path: Path, folder: str) -> None:
        try:
            self.mlflow.log_artifact(str(path), folder)
        except OSError as e:
            raise self._store_error(Path(path).name, folder, e) from None

    def _store_error(self, name: str, folder: str, e: OSError, where: str = "") -> "ArtifactStoreError":
        """The artifact store refused a file (a full disk, no permission): the error names where it went
        and the errno. The cell's metrics are already logged (steps.measure logs them first)."""
        import errno as errno_mod

        try:
            where = where or self.mlflow.get_artifact_uri(f"{folder}/{name}" if folder else name)
        except Exception:
            where = name
        code = errno_mod.errorcode.get(e.errno, str(e.errno)) if e.errno else "?"
        return ArtifactStoreError(f"cannot store the artifact {where}: {e.strerror or e} ({code}); the cell's "
                                  "measurements are logged on its run, its files are not")


# The run's description in the MLflow UI (its Overview's "Description"): the cell's summary line, what it
# measured (size, quality, p50 at batch 1, speedups) or why it did not.
NOTE = "mlflow.note.content"


def run_cell(dict_cfg: DictConfig) -> Dict[str, Any]:
    """One cell, start to end: its MLflow run (or the earlier ok run it skips for), its status and
    reason, result.json in the job's folder and the printed summary line. Never raises for the cell:
    a store that fails (unreachable at the start, gone while the run is written) makes it a failed
    cell naming the store, in the sweep's table like any other."""
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
    try:
        _claim_and_measure(dict_cfg, experiment_id, cid, out_dir, job, result, t_start)
    except Exception as e:  # the store went away or refused a write: the cell is failed, and says so
        from mlflow.exceptions import MlflowException

        text = f"{type(e).__name__}: {e}"
        if isinstance(e, (MlflowException, OSError)):
            run = f"while run {result['run_id']} was written" if result.get("run_id") else "before the cell's run existed"
            text = f"MLflow store {dict_cfg.mlflow.tracking_uri} failed {run}: {text}"
        print(traceback.format_exc(), flush=True)
        result.update(status="failed", seconds=time.perf_counter() - t_start, reason=tracking.mask_text(text))
    print(summary_line(result), flush=True)
    _write_result(out_dir, result)
    return result


def _claim_and_measure(dict_cfg: DictConfig, experiment_id: str, cid: str, out_dir: Path, job: Dict[str, str],
                       result: Dict[str, Any], t_start: float) -> None:
    """The store's side of a cell: runs of dead processes closed, the earlier ok run it skips for or
    the run it claims, then the measurement inside it. Sets ``result``; an error of the store
    propagates (run_cell reports it)."""
    import mlflow

    info = system_info()
    chash = config_hash(dict_cfg)
    me = tracking.process_identity()
    client = mlflow.MlflowClient()
    closed = tracking.close_dead_runs(client, experiment_id, me, dict_cfg.mlflow.stale_after_s)
    if closed:
        print(f"[resume] marked {len(closed)} run(s) of dead processes KILLED: {', '.join(closed)}", flush=True)
    force = bool(dict_cfg.get("force", False))
    prior = None if force else tracking.finished_run(client, experiment_id, chash, info)
    if prior is None:
        tags = {"status": "running", "claim": "pending", "heartbeat": f"{time.time():.0f}", "cell": cid,
                "config_hash": chash, "git_sha": git_sha(), "sweep_dir": job["sweep_dir"], "job_num": job["job_num"],
                **me, **info}
        run = client.create_run(experiment_id, run_name=cid, tags={k: str(v) for k, v in tags.items() if str(v) != ""})
        prior = tracking.claim(client, experiment_id, run, chash, info, me, dict_cfg.mlflow.stale_after_s, force)
        if prior is not None:  # another sweep measures (or just measured) this cell: its run is the one
            client.delete_run(run.info.run_id)
        else:
            result["run_id"] = run.info.run_id
            _measure_in_run(dict_cfg, run.info.run_id, client, info, out_dir, result, t_start)
    if prior is not None and prior.info.status == "RUNNING":
        t = prior.data.tags
        result.update(status="skipped", run_id=prior.info.run_id, seconds=time.perf_counter() - t_start,
                      claimed_by=prior.info.run_id,
                      reason=f"being measured by run {prior.info.run_id} of another sweep (process {t.get('pid', '?')} "
                             f"on {t.get('host', '?')}, sweep {t.get('sweep_dir') or '?'}): measured once, not twice; "
                             "its numbers are in the store when it ends")
    elif prior is not None:
        result.update(status="skipped", run_id=prior.info.run_id, seconds=time.perf_counter() - t_start,
                      reason=f"run {prior.info.run_id} already measured config_hash {chash} on this machine "
                             f"(status ok); force=true measures it again")
        result["metrics"] = run_metrics(prior)
        result.update({k: prior.data.tags[k] for k in RESULT_TAGS if k in prior.data.tags})


def _measure_in_run(dict_cfg: DictConfig, run_id: str, client, info, out_dir: Path, result: Dict[str, Any],
                    t_start: float) -> None:
    """The cell's measurement inside its claimed run, the run's heartbeat renewed meanwhile. Ctrl-C or
    SIGTERM close the run KILLED with the reason (status killed), then end the sweep."""
    import mlflow

    from bsb_hydra.local_state import Interrupted

    with mlflow.start_run(run_id=run_id) as active:
        log = RunLog(mlflow, client, run_id, active.info.experiment_id)
        try:
            with tracking.Heartbeat(client, run_id, dict_cfg.mlflow.heartbeat_s):
                _run_logged(dict_cfg, info, out_dir, log, result)
        except (KeyboardInterrupt, Interrupted) as e:
            sig = e.signame if isinstance(e, Interrupted) else "SIGINT (Ctrl-C)"
            result.update(status="killed", seconds=time.perf_counter() - t_start,
                          reason=f"interrupted by {sig} after {time.perf_counter() - t_start:.0f} s, before the cell "
                                 "was measured to the end; the same command measures it again")
            log.tags({"status": "killed", "reason": result["reason"], NOTE: summary_line(result)})
            log.finish_model(ok=False)
            mlflow.end_run(status="KILLED")
            print(summary_line(result), flush=True)
            _write_result(out_dir, result)
            raise
        result["seconds"] = time.perf_counter() - t_start
        log.tags({"status": result["status"], "reason": result["reason"][:5000], NOTE: summary_line(result)})
        if not result["reason"] and "reason" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "reason")  # a wrong "killed" mark while it ran (tracking.Heartbeat)
        log.metrics({"cell_seconds": result["seconds"]})
        log.finish_model(ok=result["status"] == "ok")
        if result["status"] == "failed":
            mlflow.end_run(status="FAILED")


def _run_logged(dict_cfg: DictConfig, info: Dict[str, str], out_dir: Path, log, result: Dict[str, Any]) -> None:
    """Inside the cell's open run: what it is (tags, params, config), the checks before any work
    (config, device, support), then the measurement; sets result's status, reason and metrics."""
    import mlflow

    from bsb_hydra.backends import get_backend
    from bsb_hydra.scoring import best_fp32_metrics
    from bsb_hydra.steps import measure

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
        best = best_fp32_metrics(cfg, result["metrics"], log)  # measure() logged the rest as it measured them
        result["metrics"].update(best)
        result.update({k: log.logged_tags[k] for k in RESULT_TAGS if k in log.logged_tags})
        log.metrics(best)
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


# The run's tags that result.json carries for the sweep's table: the task, its quality metric, and why
# the cell's quality figures say nothing (tasks/classification.py: a constant fp32 reference).
RESULT_TAGS = ("task", "quality_metric", "quality_warning")


def summary_line(r: Dict[str, Any]) -> str:
    m = r.get("metrics") or {}
    if r["status"] == "skipped":
        return f"[skipped] {r['cell']}: {r['reason']}"
    if r["status"] != "ok":
        return f"[{r['status']}] {r['cell']}: {r['reason'].splitlines()[0] if r['reason'] else ''}"
    simulated = bool(m.get("simulated"))
    theoretical = " theoretical" if simulated else ""
    ratio = f" ({m['size_ratio']:.2f}x fp32)" if "size_ratio" in m else " (no fp32 reference)"
    parts = [f"size {m['size_bytes'] / 1024:.0f} KiB{theoretical}{ratio}"]
    if "top1_agreement" in m:  # a classifier
        parts += [f"acc {100 * m['accuracy']:.2f}% ({m['accuracy_delta_pp']:+.2f} pp)" if "accuracy" in m else "no labels",
                  f"agree {100 * m['top1_agreement']:.2f}%"]
    else:
        q, name = m.get("quality"), r.get("quality_metric") or "quality"
        delta = f" ({m['quality_delta']:+.4g} vs fp32)" if "quality_delta" in m else ""
        parts += [f"{r.get('task', 'task')} {name} {q:.4g}{delta}" if q is not None else f"{r.get('task', 'task')}",
                  f"cosine {m['cosine_mean']:.6f}" if "cosine_mean" in m else ""]
        parts = [p for p in parts if p]
    if "latency_p50_ms_b1" in m:
        best = f", {m['speedup_vs_best_fp32_b1']:.2f}x vs best fp32" if "speedup_vs_best_fp32_b1" in m else ""
        parts.append(f"p50@b1 {m['latency_p50_ms_b1']:.3f} ms (speedup {m.get('speedup_b1', float('nan')):.2f}x{best})")
    parts.append("SIMULATED: not deployable, not timed" if simulated else f"peak {m['peak_rss_mb']:.0f} MB")
    line = f"[ok] {r['cell']}: " + ", ".join(parts)
    return line + (f"\n  quality says nothing: {r['quality_warning']}" if r.get("quality_warning") else "")


def _write_result(out_dir: Path, result: Dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
