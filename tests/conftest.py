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
    "benchmark.repeats=1",
]


def run_bsb(args, tmp: Path, timeout=900, check=True):
    """python -m bsb_hydra ARGS into a private MLflow store, model cache and sweep dir."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    env["BSB_CACHE_DIR"] = str(tmp / "cache")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cmd = [PYTHON, "-m", "bsb_hydra", *args, f"mlflow.artifact_root={tmp}/artifacts",
           f"hydra.sweep.dir={tmp}/sweep", f"hydra.run.dir={tmp}/run"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


# The shared real sweep (tests/test_sweep.py checks it, tests/test_report.py reports on a copy of it).
GRID = ["-m", "model=mlp,cnn", "quant=fp32,dynamic,static", "backend=pytorch,onnxruntime"]


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """12 cells: mlp,cnn x fp32,dynamic,static x pytorch,onnxruntime, smoke-trained, on fashion_mnist."""
    tmp = tmp_path_factory.mktemp("sweep")
    proc = run_bsb([*GRID, *SMOKE], tmp)
    client, runs = runs_of(tmp)
    return tmp, proc, client, runs


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
