"""scripts/remote_sweep.sh against a real sshd started here on 127.0.0.1 (a high port, throwaway
keys), and bsb_hydra.merge: the remote store's runs arrive in the local store once, with artifacts.
The host, the overrides, REMOTE_ENV and the credentials are checked with a fake remote Python that
records what it received, so no sweep runs for them."""
import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bsb_hydra.metric_names import mlflow_key
from tests.conftest import PEAK_DIR, PYTHON, ROOT, SMOKE, free_port, model_files, model_of, run_bsb, runs_of

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
               REMOTE_ENV=f"BSB_JOBS_DIR={tmp_path}/jobs BSB_PEAK_DIR={PEAK_DIR}", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/local.db",
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
        assert {"config.json", "latency_samples.json"} <= names
        # its LoggedModel, with the measured file and the metrics linked to it, and its datasets
        lm, src_lm = model_of(local, r), model_of(remote, s)
        assert lm.name == src_lm.name and lm.status == src_lm.status and lm.source_run_id == r.info.run_id
        assert lm.tags["artifact_sha256"] == src_lm.tags["artifact_sha256"]
        assert {x.key: x.value for x in lm.metrics} == {x.key: x.value for x in src_lm.metrics}
        assert model_files(local, r) == model_files(remote, s)
        got = {(d.dataset.name, d.dataset.digest) for d in local.get_run(r.info.run_id).inputs.dataset_inputs}
        assert got == {(d.dataset.name, d.dataset.digest) for d in remote.get_run(s.info.run_id).inputs.dataset_inputs}
        assert got
    # once more: nothing is duplicated
    (back,) = (tmp_path / "back").glob("127.0.0.1-*")
    again = subprocess.run([PYTHON, "-m", "bsb_hydra.merge", str(back / "mlflow.db"), "--artifacts",
                            str(back / "mlartifacts"), "--into", f"sqlite:///{tmp_path}/local.db"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "merged 0 run(s)" in again.stdout and "2 already there" in again.stdout
    assert len(local.search_runs([exp.experiment_id])) == 2


SCRIPT = ROOT / "scripts" / "remote_sweep.sh"
# Overrides the remote shell must not interpret: blanks, both quotes, a glob, a tilde, an empty word, a
# newline, and three ways to run a command ({marker} is a file that must never appear).
ODD_ARGS = ["-m", "a b", "it's", 'say "hi"', "*", "~", "", "line1\nline2", "$(touch {marker})", "`touch {marker}`",
            "x; touch {marker}"]
ODD_ENV = {"BSB_SPACES": "a  b", "BSB_QUOTES": """it's "q" """, "BSB_SUBST": "$(touch {marker})",
           "BSB_BACKQUOTE": "`touch {marker}`", "BSB_NEWLINE": "l1\nl2"}


def fake_remote_python(tmp_path: Path) -> tuple[Path, Path]:
    """An executable standing in for REMOTE_PYTHON: it writes its arguments, working directory,
    environment and every process's command line on this machine (the remote side is this machine)
    to a JSON file, while the ssh session that started it is still open."""
    fake, record = tmp_path / "fake_python", tmp_path / "received.json"
    fake.write_text(f"""#!{PYTHON}
import json, os, sys
from pathlib import Path
cmdlines = []
for p in Path("/proc").glob("[0-9]*/cmdline"):
    try:
        cmdlines.append(p.read_bytes().decode(errors="replace"))
    except OSError:  # the process ended meanwhile
        pass
Path({str(record)!r}).write_text(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ),
                                           "cmdlines": cmdlines}}))
""")
    fake.chmod(0o755)
    return fake, record


def run_script(host: str, args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # A shared server URI, so the script ends after the (fake) sweep: nothing to bring back.
    env = {**os.environ, "REMOTE_DIR": str(tmp_path / "remote_home" / "bsb-hydra"), "REMOTE_SETUP": "skip",
           "LOCAL_PY": PYTHON, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "REMOTE_ENV": "",
           "MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": "", "MLFLOW_TRACKING_TOKEN": "", **env}
    return subprocess.run(["bash", str(SCRIPT), host, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_remote_sweep_refuses_a_host_ssh_would_read_as_an_option(tmp_path):
    """Issue 31: the host went to ssh without "--", so `-oProxyCommand=touch MARKER` ran touch here."""
    marker = tmp_path / "MARKER"
    proc = run_script(f"-oProxyCommand=touch {marker}", ["-m"], tmp_path, SSH_OPTS="-o ConnectTimeout=5")
    assert not marker.exists()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "starts with '-' (ssh would read it as an option)" in proc.stderr


def test_remote_env_words_must_be_assignments(tmp_path):
    """A word of REMOTE_ENV that is not VAR=value (here a command) or an unclosed quote is refused
    before anything connects."""
    marker = tmp_path / "MARKER"
    proc = run_script("nohost.invalid", ["-m"], tmp_path, REMOTE_ENV=f"A=1 sh -c 'touch {marker}'")
    assert proc.returncode == 2 and "REMOTE_ENV: 'sh' is not VAR=value" in proc.stderr, proc.stderr
    proc = run_script("nohost.invalid", ["-m"], tmp_path, REMOTE_ENV="A='x")
    assert proc.returncode == 2 and "REMOTE_ENV cannot be split into words" in proc.stderr, proc.stderr
    assert not marker.exists()


def check_received(record: Path, marker: Path, args: list[str], env: dict[str, str], remote_dir: Path):
    assert not marker.exists()
    got = json.loads(record.read_text())
    assert got["argv"][:-1] == ["-m", "bsb_hydra", *args]
    assert got["argv"][-1].startswith("hydra.sweep.dir=multirun_outputs/remote-")
    assert Path(got["cwd"]) == remote_dir
    assert {k: got["env"].get(k) for k in env} == env
    assert got["env"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9" and got["env"]["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_remote_sweep_passes_overrides_and_remote_env_literally_over_ssh(tmp_path, sshd):
    """Issue 31: REMOTE_ENV went unquoted into the remote command, so its $(...) ran on the remote
    host. Every override and REMOTE_ENV value now reaches the remote Python byte for byte."""
    host, opts = sshd
    marker = tmp_path / "MARKER"
    args = [a.format(marker=marker) for a in ODD_ARGS]
    env = {k: v.format(marker=marker) for k, v in ODD_ENV.items()}
    fake, record = fake_remote_python(tmp_path)
    # shlex.quote writes single quotes; the last value is written in double quotes by hand
    remote_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f' BSB_DOUBLE="\\"y\\" $(touch {marker})"'
    proc = run_script(host, args, tmp_path, SSH_OPTS=opts, REMOTE_PYTHON=str(fake), REMOTE_ENV=remote_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_received(record, marker, args, {**env, "BSB_DOUBLE": f'"y" $(touch {marker})'},
                   tmp_path / "remote_home" / "bsb-hydra")


LOGIN_SHELLS = [s for s in ("dash", "bash", "zsh", "ksh") if shutil.which(s)]


@pytest.mark.parametrize("login_shell", LOGIN_SHELLS)
def test_remote_quoting_holds_in_every_login_shell(tmp_path, login_shell):
    """ssh joins the words after the host with blanks and hands them to the remote user's login shell,
    which may be dash or zsh rather than bash (bash's printf %q writes a newline as $'\\n', which dash
    misreads). A fake ssh doing just that, with each shell here, and an ssh argv without "--" before
    the host is refused by it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"""#!/bin/sh
while [ $# -gt 0 ] && [ "$1" != -- ]; do shift; done
[ $# -ge 2 ] || {{ echo "fake ssh: no -- before the host" >&2; exit 255; }}
shift 2
exec {shutil.which(login_shell)} -c "$*"
""")
    (bin_dir / "ssh").chmod(0o755)
    marker = tmp_path / "MARKER"
    args = [a.format(marker=marker) for a in ODD_ARGS]
    env = {k: v.format(marker=marker) for k, v in ODD_ENV.items()}
    fake, record = fake_remote_python(tmp_path)
    proc = run_script("remote.example", args, tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                      REMOTE_PYTHON=str(fake), REMOTE_ENV=" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_received(record, marker, args, env, tmp_path / "remote_home" / "bsb-hydra")


def test_remote_sweep_keeps_credentials_off_command_lines(tmp_path, sshd):
    """Issue 31: a tracking URI's password went on the ssh command line (any user's `ps` on either
    machine shows it), and MLFLOW_TRACKING_USERNAME / _PASSWORD did not reach the remote sweep at
    all. Both now travel over ssh's stdin into the remote environment: no command line on this
    machine, the remote one here, holds a secret while the sweep runs, nor any ssh argv."""
    host, opts = sshd
    fake, record = fake_remote_python(tmp_path)
    uri_secret, password, token = (f"{name}-{os.urandom(6).hex()}" for name in ("urisecret", "password", "token"))
    uri = f"http://alice:{uri_secret}@127.0.0.1:9/mlflow"
    bin_dir = tmp_path / "bin"  # an ssh on PATH that records its argv, then runs the real one
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"""#!/bin/sh
printf '%s\\n' "$*" >> {tmp_path}/ssh_argv
exec {shutil.which("ssh")} "$@"
""")
    (bin_dir / "ssh").chmod(0o755)
    proc = run_script(host, ["-m", "quant=fp32"], tmp_path, SSH_OPTS=opts, REMOTE_PYTHON=str(fake),
                      PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", MLFLOW_TRACKING_URI=uri,
                      MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=password,
                      MLFLOW_TRACKING_TOKEN=token)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(record.read_text())
    ssh_argv = (tmp_path / "ssh_argv").read_text()
    assert any("quant=fp32" in c for c in got["cmdlines"])  # the scan saw the remote sweep's own command line
    for secret in (uri_secret, password, token):
        assert not [c for c in got["cmdlines"] if secret in c]
        assert secret not in ssh_argv and secret not in proc.stdout + proc.stderr
    assert ssh_argv.count(f" -- {host} ") == 4  # true, mkdir, tar and the sweep: "--" before the host
    assert got["env"]["MLFLOW_TRACKING_URI"] == uri and got["env"]["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert got["env"]["MLFLOW_TRACKING_PASSWORD"] == password and got["env"]["MLFLOW_TRACKING_TOKEN"] == token


def test_merge_refuses_missing_inputs(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "bsb_hydra.merge", str(tmp_path / "nope.db")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "nope.db: no such store file" in proc.stderr


def test_merge_metric_history_and_failed_runs(tmp_path):
    """A store from a sweep with a failed cell: histories (train_loss per epoch) and statuses survive."""
    run_bsb(["-m", "model=mlp", "data=digits", "quant=fp32,static", "backend=pytorch", "debug.fail_stage=quantize",
             "debug.fail_cell=static", *SMOKE], tmp_path, failed=True)
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
        h1 = [(x.step, x.value) for x in client.get_metric_history(r.info.run_id, mlflow_key("train_loss"))]
        h2 = [(x.step, x.value) for x in copy.get_metric_history(m.info.run_id, mlflow_key("train_loss"))]
        assert h1 == h2 and h1
        assert m.data.tags["mlflow.note.content"] == r.data.tags["mlflow.note.content"]  # the run's description
    assert copy.get_experiment_by_name("bsb-hydra").tags["mlflow.experimentKind"] == "custom_model_development"
    assert Path(str(copy.get_experiment_by_name("bsb-hydra").artifact_location).replace("file://", "")).parent \
        == (tmp_path / "copy_artifacts").resolve()
