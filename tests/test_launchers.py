"""Scale-out launchers against a real tracking server: a 4-cell smoke sweep through Hydra's joblib
launcher (2 workers) and through the Ray launcher on a local Ray instance, plus the submitit launcher's
local executor (the code path of hydra/launcher=slurm without a SLURM cluster). Every job logs to one
`mlflow server` on 127.0.0.1 started here: every run must arrive, none twice, with its artifacts."""
from pathlib import Path

import pytest

from tests.conftest import SMOKE, MlflowServer, metrics_of, run_bsb

pytestmark = pytest.mark.xdist_group("launchers")  # one server for the module, on one worker

CELLS = ["model=mlp", "quant=fp32,fp16", "backend=pytorch,onnxruntime"]  # no compiled package: the launcher is the subject
SMALL = ["data=digits", *(o if not o.startswith("benchmark.batch_sizes=") else "benchmark.batch_sizes=[1]"
                          for o in SMOKE)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch_server")
    with MlflowServer(f"sqlite:///{tmp}/server.db", tmp / "server.log", artifacts=tmp / "served") as base:
        yield base


def _runs(base: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(base)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} on {base}"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _sweep_through(launcher, cells, server, tmp_path, extra=()):
    experiment = f"launch-{launcher}"
    proc = run_bsb(["-m", f"hydra/launcher={launcher}", *cells, *SMALL, f"mlflow.experiment={experiment}", *extra],
                   tmp_path, env_extra={"MLFLOW_TRACKING_URI": server})
    client, runs = _runs(server, experiment)
    return proc.stdout + proc.stderr, client, runs


def _every_run_arrived_once(client, runs, expected: int):
    cells = [r.data.tags["cell"] for r in runs]
    assert len(runs) == expected and len(set(cells)) == expected, sorted(cells)
    assert all(r.data.tags["status"] == "ok" and r.info.status == "FINISHED" for r in runs), \
        [(r.data.tags["cell"], r.data.tags.get("reason")) for r in runs]
    for r in runs:  # metrics and artifacts went through the server too
        m = metrics_of(r)
        assert m["size_bytes"] > 0 and "accuracy" in m
        assert {a.path for a in client.list_artifacts(r.info.run_id)} >= {"config.json"}
    # one process trained the fp32 model; the others loaded it from the shared cache
    assert sorted(r.data.tags["fp32_source"] for r in runs).count("trained") == 1


def test_joblib_two_workers_into_a_tracking_server(server, tmp_path):
    out, client, runs = _sweep_through("parallel", CELLS, server, tmp_path)
    _every_run_arrived_once(client, runs, 4)
    assert max(int(r.data.tags["concurrent_jobs"]) for r in runs) == 2
    assert "Joblib.Parallel" in out and "n_jobs=2" in out


def test_ray_local_instance_into_a_tracking_server(server, tmp_path):
    out, client, runs = _sweep_through("ray_local", CELLS, server, tmp_path)
    _every_run_arrived_once(client, runs, 4)
    assert "Started a local Ray instance" in out and "Ray Launcher is launching 4 jobs" in out
    # the Ray workers are processes of their own, two at a time (num_cpus 2, one per job)
    assert len({r.data.tags["pid"] for r in runs}) >= 2
    assert max(int(r.data.tags["concurrent_jobs"]) for r in runs) == 2


def test_submitit_local_executor_into_a_tracking_server(server, tmp_path):
    out, client, runs = _sweep_through("submitit_local", ["model=mlp", "quant=fp32,static", "backend=onnxruntime"],
                                        server, tmp_path)
    _every_run_arrived_once(client, runs, 2)
    assert "Submitit 'local' sweep output dir" in out
    assert list(Path(tmp_path, "sweep", ".submitit").glob("*/*_submitted.pkl"))
