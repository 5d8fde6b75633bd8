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
