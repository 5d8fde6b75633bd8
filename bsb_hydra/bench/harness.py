"""Parent side of a measurement: writes the request, runs the worker in a fresh process with the
thread count pinned, enforces the stall timeout (no progress for benchmark.timeout_s), and turns a
crash or a hang into a clear error."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from bsb_hydra.bench.outputs import OutputReader


class WorkerError(RuntimeError):
    pass


@dataclass
class Item:
    """One artifact for a worker: what to load, whether to time it and whether to evaluate it."""
    tag: str
    artifact: Path
    input_dtype: str
    latency: bool = True
    evaluate: bool = False
    profile: bool = False  # after timing: ``profile_runs`` calls at batch 1 under the runtime's profiler


@dataclass
class WorkerResult:
    data: dict  # the item's measurements; plus the process's rss_after_import_mb, cpus, heavy_modules
    outputs: Optional[OutputReader]  # every output over the evaluation inputs (evaluated items only)


def _wait_while_moving(proc: subprocess.Popen, heartbeat: Path, timeout_s: float, poll_s: float = 1.0) -> None:
    """Wait for the worker while it makes progress: TimeoutExpired once its heartbeat file has not
    moved for timeout_s. A slow model that keeps scoring batches is never killed; a stuck one is."""
    while True:
        try:
            proc.wait(timeout=poll_s)
            return
        except subprocess.TimeoutExpired:
            if time.time() - heartbeat.stat().st_mtime > timeout_s:
                raise


def _spec(x):
    """An input spec (bsb_hydra.feeds.save_inputs), or a path of one .npy array."""
    if x is None or isinstance(x, dict):
        return x
    return {"kind": "array", "file": str(x)}


def run_worker(*, backend: str, items: List[Item], threads: int, settings: Dict, latency_input: Dict,
               latency: Optional[dict], eval_input: Optional[Dict], eval_batch_size: int, workdir: Path, tag: str,
               timeout_s: float, inject_fault: Optional[str] = None,
               cpus: Optional[List[int]] = None, profile_runs: int = 20) -> Dict[str, WorkerResult]:
    """Measures `items` in ONE fresh process, in order; returns each item's result by its tag.
    ``latency_input`` and ``eval_input`` are input specs (bsb_hydra.feeds.save_inputs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    req = {
        "backend": backend, "threads": threads, "settings": settings, "latency_input": _spec(latency_input),
        "latency": latency, "eval_input": _spec(eval_input), "eval_batch_size": eval_batch_size,
        "items": [{"tag": it.tag, "artifact": str(it.artifact), "input_dtype": it.input_dtype, "latency": it.latency,
                   "evaluate": it.evaluate, "profile": it.profile, "outputs_dir": str(workdir / f"{tag}_{it.tag}_outputs")}
                  for it in items],
        "result": str(workdir / f"{tag}_result.json"), "inject_fault": inject_fault, "cpus": cpus,
        "heartbeat": str(workdir / f"{tag}_heartbeat"), "profile_runs": profile_runs,
    }
    req_path = workdir / f"{tag}_request.json"
    req_path.write_text(json.dumps(req, indent=1))
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2])] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["BSB_PARENT_PID"] = str(os.getpid())  # the worker dies with this process (local_state.die_with_parent)
    log_path = workdir / f"{tag}_worker.log"
    heartbeat = Path(req["heartbeat"])
    heartbeat.touch()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bsb_hydra.bench.worker", str(req_path)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_while_moving(proc, heartbeat, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise WorkerError(f"benchmark worker ({tag}) hung: no progress for benchmark.timeout_s={timeout_s}s "
                              f"(it reports progress after loading, each batch size timed and each evaluation "
                              f"batch); log: {log_path}") from None
        except BaseException:  # Ctrl-C, SIGTERM: the worker goes with the sweep
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            raise WorkerError(f"benchmark worker ({tag}) was killed by {sig}; log tail:\n{tail}")
        last = next((line for line in reversed(tail.strip().splitlines()) if line.strip()), "")
        raise WorkerError(f"benchmark worker ({tag}) exited with code {proc.returncode}: {last[:300]}\n"
                          f"log tail:\n{tail}")
    data = json.loads(Path(req["result"]).read_text())
    shared = {k: data[k] for k in ("rss_after_import_mb", "cpus", "heavy_modules")}
    return {d["tag"]: WorkerResult({**shared, **d}, OutputReader(it["outputs_dir"]) if it["evaluate"] else None)
            for d, it in zip(data["items"], req["items"])}
