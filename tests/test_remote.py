"""scripts/remote_sweep.sh against a real sshd started here on 127.0.0.1 (a high port, throwaway
keys), and bsb_hydra.merge: the remote store's runs arrive in the local store once, with artifacts."""
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, SMOKE, free_port, run_bsb, runs_of

# `make setup` unpacks Debian's openssh-server into .cache/sshd (no system service is installed).
LOCAL_SSHD = ROOT / ".cache" / "sshd"
SSHD = os.environ.get("BSB_SSHD") or (str(LOCAL_SSHD / "usr/sbin/sshd") if (LOCAL_SSHD / "usr/sbin/sshd").exists()
                                      else shutil.which("sshd") or "/usr/sbin/sshd")


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1 accepting one throwaway key for the current user; stopped afterwards."""
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} is missing: `make setup` unpacks Debian's openssh-server into .cache/sshd")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    port = free_port()
    (d / "sshd_config").write_text(f"""
ListenAddress 127.0.0.1
Port {port}
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {d}/sshd.pid
""")
    env = dict(os.environ)
    if SSHD.startswith(str(LOCAL_SSHD)):  # its libwrap comes with it
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(LOCAL_SSHD / "usr/lib/x86_64-linux-gnu"),
                                                  str(LOCAL_SSHD / "usr/lib/aarch64-linux-gnu"),
                                                  env.get("LD_LIBRARY_PATH", "")])
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "w"), env=env)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, (d / "sshd.log").read_text()
            time.sleep(0.2)
    opts = (f"-p {port} -i {d}/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            f"-o LogLevel=ERROR")
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    yield f"{user}@127.0.0.1", opts
    proc.terminate()
    proc.wait(timeout=30)


def test_remote_sweep_over_ssh_merges_into_the_local_store_once(tmp_path, sshd):
    host, opts = sshd
    remote_dir = tmp_path / "remote_home" / "bsb-hydra"
    env = dict(os.environ, SSH_OPTS=opts, REMOTE_DIR=str(remote_dir), REMOTE_SETUP="skip", REMOTE_PYTHON=PYTHON,
               REMOTE_ENV=f"BSB_JOBS_DIR={tmp_path}/jobs", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/local.db",
               LOCAL_PY=PYTHON, BACK_DIR=str(tmp_path / "back"))
    args = ["-m", "model=mlp", "data=digits", "quant=fp32,dynamic", "backend=onnxruntime", *SMOKE]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "remote_sweep.sh"), host, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (remote_dir / "bsb_hydra" / "cell.py").is_file() and not (remote_dir / ".venv").exists()
    assert "merged 2 run(s)" in proc.stdout
    from mlflow import MlflowClient

    local = MlflowClient(f"sqlite:///{tmp_path}/local.db")
    remote = MlflowClient(f"sqlite:///{remote_dir}/mlflow.db")
    exp = local.get_experiment_by_name("bsb-hydra")
    runs = local.search_runs([exp.experiment_id])
    src = {r.info.run_id: r for r in remote.search_runs([remote.get_experiment_by_name("bsb-hydra").experiment_id])}
    assert len(runs) == 2 and {r.data.tags["merged_from_run_id"] for r in runs} == set(src)
    for r in runs:
        s = src[r.data.tags["merged_from_run_id"]]
        assert r.data.metrics == s.data.metrics and r.data.params == s.data.params
        assert r.data.tags["status"] == "ok" and r.info.status == "FINISHED"
        assert r.info.start_time == s.info.start_time
        names = {a.path for a in local.list_artifacts(r.info.run_id)}
        assert {"model", "config.json", "latency_samples.json"} <= names
    # once more: nothing is duplicated
    (back,) = (tmp_path / "back").glob("127.0.0.1-*")
    again = subprocess.run([PYTHON, "-m", "bsb_hydra.merge", str(back / "mlflow.db"), "--artifacts",
                            str(back / "mlartifacts"), "--into", f"sqlite:///{tmp_path}/local.db"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "merged 0 run(s)" in again.stdout and "2 already there" in again.stdout
    assert len(local.search_runs([exp.experiment_id])) == 2


def test_merge_refuses_missing_inputs(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "bsb_hydra.merge", str(tmp_path / "nope.db")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "nope.db: no such store file" in proc.stderr


def test_merge_metric_history_and_failed_runs(tmp_path):
    """A store from a sweep with a failed cell: histories (train_loss per epoch) and statuses survive."""
    run_bsb(["-m", "model=mlp", "data=digits", "quant=fp32,static", "backend=pytorch", "debug.fail_stage=quantize",
             "debug.fail_cell=static", *SMOKE], tmp_path)
    from bsb_hydra.merge import merge

    counts = merge(str(tmp_path / "mlflow.db"), f"sqlite:///{tmp_path}/copy.db", tmp_path / "artifacts",
                   artifact_root=tmp_path / "copy_artifacts")
    assert counts == {"merged": 2, "skipped": 0, "artifacts_missing": 0}
    client, runs = runs_of(tmp_path)
    from mlflow import MlflowClient

    copy = MlflowClient(f"sqlite:///{tmp_path}/copy.db")
    merged = copy.search_runs([copy.get_experiment_by_name("bsb-hydra").experiment_id])
    by_src = {r.data.tags["merged_from_run_id"]: r for r in merged}
    for r in runs:
        m = by_src[r.info.run_id]
        assert m.info.status == r.info.status and m.data.tags["status"] == r.data.tags["status"]
        h1 = [(x.step, x.value) for x in client.get_metric_history(r.info.run_id, "train_loss")]
        h2 = [(x.step, x.value) for x in copy.get_metric_history(m.info.run_id, "train_loss")]
        assert h1 == h2 and h1
    assert Path(str(copy.get_experiment_by_name("bsb-hydra").artifact_location).replace("file://", "")).parent \
        == (tmp_path / "copy_artifacts").resolve()
