import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PYTHON = sys.executable

# Small, fast settings for every real sweep in the tests: smoke training, 1000 test samples,
# short timing loops, batch 1 only (a second batch size is a second compiled package for a PT2E cell and
# a second file for a LiteRT one: the shared sweep and the tests of batch files add TWO_BATCHES).
# Never figures; only structure and correctness.
SMOKE = [
    "train=smoke", "data.limit_test=1000", "benchmark.batch_sizes=[1]", "benchmark.warmup_runs=2",
    "benchmark.min_runs=10", "benchmark.min_duration_s=0.05", "benchmark.bootstrap_resamples=200",
    "benchmark.repeats=1", "peak.size=64", "peak.min_duration_s=0.02",
    # no profiling process after a cell slower than its fp32 (most toy cells are: call overhead): one
    # fresh process less per such cell; tests/test_profile.py turns it back on where it is the subject
    "benchmark.profile=never",
]
# The machine's limit (bsb_hydra/bench/peak.py) is cached per host: measured once per test session at
# SMOKE's tiny GEMM, into PEAK_DIR, which every sweep of the tests reads (BSB_PEAK_DIR). The top pytest
# process names the folder, so both xdist workers (which inherit its environment) share it, and under
# `make test` starts that one measurement in the background before the workers start (session_peak): a
# sweep that reaches its peak stage while it runs waits on the cache's lock, then reads it. Before, each
# worker measured for itself and the remote sweep a third time (about 70 s each under load).
if "BSB_TEST_PEAK_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["BSB_TEST_PEAK_DIR"] = f"/tmp/bsb_hydra_test_peak_{os.getpid()}"
PEAK_DIR = Path(os.environ.get("BSB_TEST_PEAK_DIR", f"/tmp/bsb_hydra_test_peak_{os.getpid()}"))
PEAK_SIZE = next(int(o.split("=")[1]) for o in SMOKE if o.startswith("peak.size="))
PEAK_CLI = [PYTHON, "-m", "bsb_hydra.bench.peak", "--size", str(PEAK_SIZE), "--min-duration", "0.02",
            "--cache-dir", str(PEAK_DIR)]
PEAK_CLI_ENV = {"MLFLOW_TRACKING_URI": f"sqlite:///{PEAK_DIR}/peak_cli.db", "BSB_PEAK_EXPERIMENT": "peak"}


def _start_session_peak() -> subprocess.Popen:
    """The session's measurement: the CLI into PEAK_DIR, its output and exit status kept beside it
    (cli.out, cli.err, cli.rc) for tests/test_peak.py."""
    PEAK_DIR.mkdir(parents=True, exist_ok=True)
    d = str(PEAK_DIR)
    script = f'"$@" > "{d}/cli.out" 2> "{d}/cli.err"; echo $? > "{d}/cli.rc.tmp"; mv "{d}/cli.rc.tmp" "{d}/cli.rc"'
    (PEAK_DIR / "cli.started").touch()
    return subprocess.Popen(["sh", "-c", script, "sh", *PEAK_CLI], cwd=ROOT, env=dict(os.environ, **PEAK_CLI_ENV),
                            stdin=subprocess.DEVNULL, start_new_session=True)


def session_peak():
    """The session's peak measurement through the CLI: (its environment, a result with returncode,
    stdout and stderr). Waits for the one the top process started; started here when none was (a run
    without xdist)."""
    from types import SimpleNamespace
    import time

    if not (PEAK_DIR / "cli.started").exists():
        _start_session_peak().wait(timeout=900)
    deadline = time.time() + 900
    while not (PEAK_DIR / "cli.rc").exists():
        assert time.time() < deadline, "the session's peak measurement did not finish in 900 s"
        time.sleep(1)
    proc = SimpleNamespace(returncode=int((PEAK_DIR / "cli.rc").read_text()),
                           stdout=(PEAK_DIR / "cli.out").read_text(), stderr=(PEAK_DIR / "cli.err").read_text())
    return dict(os.environ, **PEAK_CLI_ENV), proc


def pytest_configure(config):
    """Under xdist (make test), the top process starts the session's peak measurement at once: it then
    runs while the workers start and their first cells train, instead of inside a cell."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    if not (PEAK_DIR / "cli.started").exists():
        config._bsb_session_peak = _start_session_peak()


def pytest_unconfigure(config):
    proc = getattr(config, "_bsb_session_peak", None)
    if proc is not None and proc.poll() is None:  # the tests ended first (a short selection)
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def bsb_command(args, tmp: Path, sweep: str = "sweep", env_extra=None):
    """The command line and environment of python -m bsb_hydra ARGS writing into a private MLflow
    store, model cache and sweep dir under tmp."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    env["BSB_CACHE_DIR"] = str(tmp / "cache")
    env["BSB_PEAK_DIR"] = str(PEAK_DIR)
    env["BSB_JOBS_DIR"] = str(tmp / "jobs")  # count only this test's jobs (the tests run 2 at a time)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(env_extra or {})
    defaults = [f"mlflow.artifact_root={tmp}/artifacts", f"hydra.sweep.dir={tmp}/{sweep}", f"hydra.run.dir={tmp}/run"]
    given = {a.split("=", 1)[0] for a in args}
    cmd = [PYTHON, "-m", "bsb_hydra", *args, *(d for d in defaults if d.split("=", 1)[0] not in given)]
    return cmd, env


def fill_disk(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem is full (a small tmpfs in the tests)."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def empty_store(path: Path) -> None:
    """``path``, when it does not exist yet, as a copy of an empty MLflow sqlite store that this
    session's MLflow created once (PEAK_DIR/empty_mlflow.db): a new store runs MLflow's schema
    migrations, about 2 s a sweep. Only for sweeps meant to run (run_bsb's check): the tests of bad
    input check that no store was created at all."""
    import fcntl
    import shutil

    if path.exists():
        return
    template = PEAK_DIR / "empty_mlflow.db"
    PEAK_DIR.mkdir(parents=True, exist_ok=True)
    with open(PEAK_DIR / "empty_mlflow.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            from mlflow import MlflowClient

            building = PEAK_DIR / "empty_mlflow.building.db"
            building.unlink(missing_ok=True)
            MlflowClient(f"sqlite:///{building}").search_experiments()  # creates and migrates the tables
            building.rename(template)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)


def run_bsb(args, tmp: Path, timeout=900, check=True, sweep: str = "sweep", env_extra=None, cwd=None,
            failed: bool = False):
    """python -m bsb_hydra ARGS into a private MLflow store, model cache and sweep dir (started from
    ``cwd``, the repository by default). ``check``: it must exit 0, or with ``failed`` (a cell is
    meant to fail) 1, the exit status of a sweep with a failed cell."""
    cmd, env = bsb_command(args, tmp, sweep, env_extra)
    if check and env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp}/mlflow.db":
        empty_store(tmp / "mlflow.db")
    if cwd is not None:  # bsb_hydra imported from the repository, wherever the sweep starts
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != (1 if failed else 0):
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}, not {1 if failed else 0}\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


# The shared real sweep (tests/test_sweep.py checks it, tests/test_report.py reports on a copy of it).
GRID = ["-m", "model=mlp,cnn", "quant=fp32,dynamic,static", "backend=pytorch,onnxruntime"]
TWO_BATCHES = "benchmark.batch_sizes=[1,8]"  # after SMOKE: the later value of a key wins


# Records every torch.ao deprecation notice raised in any process of a sweep (the sweep, its benchmark
# workers, the machine-peak measurement), even one a catch_warnings block would hide: warnings.warn is
# what typing_extensions.deprecated calls when a deprecated torch.ao function is called. The shared
# sweep runs under it (tests/test_pt2e.py reads TORCH_AO_SPY_LOG).
TORCH_AO_SPY = """
import os, traceback, warnings
_warn = warnings.warn
def _spy(message, *args, **kwargs):
    if "torch.ao.quantization is deprecated" in str(message):
        with open(os.environ["BSB_TORCH_AO_SPY"], "a") as f:
            f.write("".join(traceback.format_stack(limit=6)) + "\\n----\\n")
    return _warn(message, *args, **kwargs)
warnings.warn = _spy
"""
TORCH_AO_SPY_LOG = "torch_ao_calls.txt"


def torch_ao_spy(tmp: Path) -> dict:
    """The environment that puts the spy into every Python process a sweep starts."""
    spy_dir = tmp / "spy"
    spy_dir.mkdir(exist_ok=True)
    (spy_dir / "sitecustomize.py").write_text(TORCH_AO_SPY)
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(spy_dir)] + ([path] if path else [])),
            "BSB_TORCH_AO_SPY": str(tmp / TORCH_AO_SPY_LOG)}


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """12 cells: mlp,cnn x fp32,dynamic,static x pytorch,onnxruntime, smoke-trained, on fashion_mnist,
    at batch 1 and 8, under the torch.ao spy."""
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_bsb([*GRID, *SMOKE, TWO_BATCHES], tmp, env_extra=torch_ao_spy(tmp))
    client, runs = runs_of(tmp)
    return tmp, proc, client, runs


def with_and_without(compose_cfg, overrides, backend_key: str):
    """The composed config, and a copy without backend.<backend_key>: what a run stored before that
    key existed composed to (for the config_hash tests of keys added later)."""
    from omegaconf import open_dict

    cfg = compose_cfg(list(overrides))
    cfg.paths.root = "/tmp/project"
    before = cfg.copy()
    with open_dict(before):
        delattr(before.backend, backend_key)
    return cfg, before


def model_of(client, run):
    """The cell's LoggedModel (bsb_hydra/logged_models.py): its run's one output."""
    outs = client.get_run(run.info.run_id).outputs.model_outputs
    assert len(outs) == 1, outs
    return client.get_logged_model(outs[0].model_id)


def model_folder(client, run, dst: Path) -> Path:
    """The measured files of the cell, downloaded from its LoggedModel: files/ of a plain one, the
    folder itself (model.onnx) of an onnx-flavored one."""
    from mlflow.artifacts import download_artifacts

    folder = Path(download_artifacts(artifact_uri=model_of(client, run).artifact_location, dst_path=str(dst),
                                     tracking_uri=client.tracking_uri))
    return folder / "files" if (folder / "files").is_dir() else folder


def model_files(client, run) -> dict:
    """{name: bytes} of the measured files in the cell's LoggedModel (files/ of a plain one)."""
    model = model_of(client, run)
    arts = {a.path: a for a in client.list_logged_model_artifacts(model.model_id)}
    if "files" in arts:
        return {Path(a.path).name: a.file_size for a in client.list_logged_model_artifacts(model.model_id, "files")}
    return {p: a.file_size for p, a in arts.items() if not a.is_dir}


def runs_of(tmp: Path, experiment="bsb-hydra", stored: bool = False):
    """The store's client and its runs, their metrics by flat name (bsb_hydra/metric_names.py: as the
    code names them, whatever group they are stored under); ``stored``: with the keys as stored."""
    from mlflow import MlflowClient

    from bsb_hydra.metric_names import flat_runs

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "no experiment was created"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, runs if stored else flat_runs(runs)


def metrics_of(run):
    """A run's metrics by flat name, for a run read otherwise than through runs_of (client.get_run)."""
    from bsb_hydra.metric_names import run_metrics

    return run_metrics(run)


@pytest.fixture
def compose_cfg():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bsb_hydra.config import register_configs

    register_configs()

    def _compose(overrides=()):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


# The modules whose tests (or shared sweeps) take longest, longest first: `make test` starts them first, so
# that the short tests fill the two workers at the end instead of one long sweep running alone (xdist's
# loadgroup hands the groups out in collection order). Measured with --durations on 2026-12-06 (the sum of
# each module's setup and call times); an ordering only. Two long modules whose sweeps skip the machine's
# limit (peak.enabled=false) go first: they keep both workers busy while the session's peak measurement
# (session_peak), which every other sweep's first cell waits for, runs.
LONG_FIRST = ("test_keras.py", "test_tflite_file.py",
              "test_task_sweeps.py", "test_reliability.py", "test_byo.py", "test_sweep.py", "test_mixed.py",
              "test_tflite.py", "test_keras_tasks.py", "test_openvino.py", "test_launchers.py", "test_text.py",
              "test_profile.py", "test_pt2e.py", "test_report.py", "test_remote.py", "test_executorch.py",
              "test_demo.py")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    """`make test` runs the tests on 2 workers (pytest-xdist, --dist loadgroup). Tests that share a
    module- or session-scoped fixture of ours (a real sweep) are put in one xdist group, named after
    that fixture, so each sweep runs once, on one worker; the other tests are spread freely."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        # (where it is defined, name): test_tflite.py has a module fixture named `sweep` of its own
        shared = sorted((defs[-1].baseid, name) for name, defs in info.name2fixturedefs.items()
                        if defs and defs[-1].scope in ("module", "session") and defs[-1].baseid)
        if shared:  # the widest one: conftest's sweep before test_report.py's real_report built on it
            baseid, name = min(shared, key=lambda s: (len(s[0]), s[1]))
            item.add_marker(pytest.mark.xdist_group(f"{baseid}::{name}"))

    def rank(item) -> int:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        return LONG_FIRST.index(module) if module in LONG_FIRST else len(LONG_FIRST)

    items[:] = sorted(items, key=rank)  # stable: the order within a module is kept


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 over a given backend store, started and stopped by the test
    that needs it (``with MlflowServer(uri, log) as base: ...``; ``stop()`` ends it early)."""

    def __init__(self, backend_uri: str, log_path: Path, port: int = 0, artifacts: Path = None, command: str = "server"):
        self.backend_uri, self.log_path, self.port = backend_uri, log_path, port or free_port()
        self.artifacts, self.command = artifacts, command  # command: "server", or "ui" (what users start)
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> str:
        import time
        import urllib.request

        exe = str(Path(PYTHON).parent / "mlflow")
        cmd = [exe, self.command, "--backend-store-uri", self.backend_uri, "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        if self.artifacts is not None:
            cmd += ["--artifacts-destination", str(self.artifacts)]
        # no job execution (MLflow 3's Huey consumer for GenAI scoring jobs, on by default): nothing here
        # submits jobs, and without it the server starts in 6.1 s instead of 8.5 and stops in 1.1 s
        # instead of 3.7 (a quiet machine)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "a"),
                                     start_new_session=True, env=env)
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return self.base
            except OSError:
                pass
            assert self.proc.poll() is None and time.time() < deadline, self.log_path.read_text()[-3000:]
            time.sleep(0.5)

    def stop(self) -> None:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        try:  # its worker processes linger a few seconds after the parent
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
