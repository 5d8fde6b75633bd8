import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PYTHON = sys.executable

# Small, fast settings for every real sweep in the tests: smoke training, 1000 test samples,
# short timing loops. Never figures; only structure and correctness.
SMOKE = [
    "train=smoke", "data.limit_test=1000", "benchmark.batch_sizes=[1,8]", "benchmark.warmup_runs=2",
    "benchmark.min_runs=10", "benchmark.min_duration_s=0.05", "benchmark.bootstrap_resamples=200",
    "benchmark.repeats=1", "peak.size=64", "peak.min_duration_s=0.02",
    # no profiling process after a cell slower than its fp32 (most toy cells are: call overhead): one
    # fresh process less per such cell; tests/test_profile.py turns it back on where it is the subject
    "benchmark.profile=never",
]
# The machine's limit (bsb_hydra/bench/peak.py) is cached per host: measured once per test process
# at SMOKE's tiny GEMM, not once per test.
PEAK_DIR = Path(os.environ.get("BSB_TEST_PEAK_DIR", f"/tmp/bsb_hydra_test_peak_{os.getpid()}"))


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


def run_bsb(args, tmp: Path, timeout=900, check=True, sweep: str = "sweep", env_extra=None, cwd=None,
            failed: bool = False):
    """python -m bsb_hydra ARGS into a private MLflow store, model cache and sweep dir (started from
    ``cwd``, the repository by default). ``check``: it must exit 0, or with ``failed`` (a cell is
    meant to fail) 1, the exit status of a sweep with a failed cell."""
    cmd, env = bsb_command(args, tmp, sweep, env_extra)
    if cwd is not None:  # bsb_hydra imported from the repository, wherever the sweep starts
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run(cmd, cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != (1 if failed else 0):
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}, not {1 if failed else 0}\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


# The shared real sweep (tests/test_sweep.py checks it, tests/test_report.py reports on a copy of it).
GRID = ["-m", "model=mlp,cnn", "quant=fp32,dynamic,static", "backend=pytorch,onnxruntime"]


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
    under the torch.ao spy."""
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_bsb([*GRID, *SMOKE], tmp, env_extra=torch_ao_spy(tmp))
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


def runs_of(tmp: Path, experiment="bsb-hydra"):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "no experiment was created"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


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
# loadgroup hands the groups out in collection order; before this the longest, test_text's sweep and
# the TensorFlow tests, came last). Measured with --durations on 2026-12-06; an ordering only.
LONG_FIRST = ("test_keras_tasks.py", "test_text.py", "test_keras.py", "test_tflite_file.py", "test_sweep.py",
              "test_report.py", "test_task_sweeps.py", "test_tflite.py", "test_byo.py", "test_reliability.py",
              "test_openvino.py", "test_executorch.py", "test_pt2e.py")


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

    def __init__(self, backend_uri: str, log_path: Path, port: int = 0, artifacts: Path = None):
        self.backend_uri, self.log_path, self.port = backend_uri, log_path, port or free_port()
        self.artifacts = artifacts
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> str:
        import time
        import urllib.request

        exe = str(Path(PYTHON).parent / "mlflow")
        cmd = [exe, "server", "--backend-store-uri", self.backend_uri, "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        if self.artifacts is not None:
            cmd += ["--artifacts-destination", str(self.artifacts)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "a"),
                                     start_new_session=True)
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
