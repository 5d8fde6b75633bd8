"""This user's own folder for the state of running jobs, and the life of the processes a sweep starts.

Everything a running sweep keeps on the local disk outside its sweep folder and its caches (the job
registry of bsb_hydra/concurrency.py, the snapshot of conf/, converter logs, the temporary files of
every library it calls: ONNX Runtime's shape inference, TensorFlow's converter) lives in one folder
the user owns, created 0700: ``$BSB_RUNTIME_DIR``, else ``$TMPDIR/bsb_hydra-<uid>``. Another user
cannot plant files or symlinks there, and a folder of that name that is not the user's own (a
symlink, another owner) is refused with its name instead of being written through.

Each sweep process gets its own temporary folder inside it (``tmp/<pid>``), set as TMPDIR
for itself and every process it starts, and removed when it exits: normally, by an exception, by
SIGINT (Ctrl-C) or by SIGTERM. SIGKILL cannot be caught: the next sweep on the machine removes the
folders of processes that are gone. Worker processes die with the process that started them
(``die_with_parent``: Linux's parent-death signal), so a killed sweep leaves no worker timing beside
the one that resumes it. Inductor's compile cache (``inductor/``: TORCHINDUCTOR_CACHE_DIR unless the
user set it) is kept there across sweeps."""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from typing import Optional


class PrivateDirError(RuntimeError):
    pass


class Interrupted(BaseException):
    """A sweep ended by a signal (SIGTERM; SIGINT arrives as KeyboardInterrupt): a BaseException, so
    that no ``except Exception`` of a cell swallows it, while every ``finally`` still runs."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def _pid_start(pid: int) -> str:
    try:  # field 22 of /proc/PID/stat, after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def pid_namespace() -> str:
    """Which PID space a pid belongs to: this boot and this PID namespace (a container sharing the host
    name has its own). A pid says whether its process lives only when read in the same one."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.readlink("/proc/self/ns/pid").split("[")[-1].rstrip("]")
    except OSError:
        return ""
    return f"{boot}:{ns}"


def alive(pid: str, start: str) -> bool:
    """Is process ``pid`` (started at ``start``, /proc's clock ticks) running in this PID namespace?"""
    try:
        now = _pid_start(int(pid))
    except ValueError:
        return False
    return bool(now) and (not start or now == start)


def _owned_private(path: Path, fix_mode: bool = True) -> Path:
    """``path`` as a folder of this user's, mode 0700: created so, or checked without following a
    symlink. Raises PrivateDirError naming what is wrong."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise PrivateDirError(f"cannot create the private folder {path}: {e.strerror} (errno {e.errno}); set "
                              "BSB_RUNTIME_DIR to a folder of your own") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PrivateDirError(f"{path} is not a folder but a {'symlink' if stat.S_ISLNK(st.st_mode) else 'file'}: "
                              "refusing to write through it; remove it, or set BSB_RUNTIME_DIR to a folder of your own")
    if st.st_uid != os.getuid():
        raise PrivateDirError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): refusing to use it; "
                              "set BSB_RUNTIME_DIR to a folder of your own")
    if st.st_mode & 0o077:
        if not fix_mode:
            if st.st_mode & 0o022:
                raise PrivateDirError(f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): "
                                      "refusing to keep job state there; chmod go-w it, or choose another folder")
            return path
        os.chmod(path, 0o700)
    return path


def runtime_dir() -> Path:
    """This user's folder for the state of running jobs (see the module's docstring)."""
    given = os.environ.get("BSB_RUNTIME_DIR")
    if given:
        base = Path(given)
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _owned_private(base, fix_mode=False)  # the user's own choice: checked, never chmod-ed
    return _owned_private(Path(tempfile.gettempdir()) / f"bsb_hydra-{os.getuid()}")


def private_subdir(name: str) -> Path:
    return _owned_private(runtime_dir() / name)


_MINE: Optional[Path] = None


def process_tmp() -> Path:
    """This process's temporary folder (``<runtime>/tmp/<pid>``), made TMPDIR for it and every process
    it starts; removed at exit, on SIGTERM and SIGINT, and by the next sweep after a SIGKILL. The name
    is short on purpose: Ray puts AF_UNIX sockets under TMPDIR, and their paths may not pass 107 bytes.
    Whose it is (PID namespace and start time) is in the folder's ``.owner`` file."""
    global _MINE
    if _MINE is not None and _MINE.is_dir():
        return _MINE
    pid = os.getpid()
    root = private_subdir("tmp")
    remove_stale(root)
    mine = root / str(pid)
    if mine.exists():  # a folder left by an earlier process with this pid (remove_stale spares a young one)
        shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(mode=0o700)
    write_private(mine / ".owner", f"{_ns_tag()} {_pid_start(pid) or 0}")
    # children (Hydra's joblib workers, benchmark workers) share this runtime dir and write into this tmp
    os.environ.setdefault("BSB_RUNTIME_DIR", str(root.parent))
    os.environ["TMPDIR"] = str(mine)
    tempfile.tempdir = str(mine)
    # Inductor's compile cache (its default is under TMPDIR, which is now this process's and removed at
    # exit) goes beside it, kept: without it every sweep process re-ran Inductor's vector-ISA probes and
    # rebuilt its precompiled header before its first AOTInductor package (~20 s on 2 cores). Private
    # like the rest: Inductor loads the shared objects it finds there. TORCHINDUCTOR_CACHE_DIR wins.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(private_subdir("inductor")))
    atexit.register(shutil.rmtree, mine, ignore_errors=True)
    _MINE = mine
    return mine


def _ns_tag() -> str:
    return pid_namespace().rsplit(":", 1)[-1] or "0"


def remove_stale(root: Path, young_s: float = 600.0) -> list:
    """The temporary folders of processes that are gone (a sweep SIGKILLed), removed. Only folders of
    this PID namespace: a pid of another (a container sharing /tmp) cannot be checked from here. A
    folder without its ``.owner`` (being created, or of an older version) is left alone while young."""
    import time

    gone = []
    for p in root.iterdir() if root.is_dir() else []:
        if not p.name.isdigit():
            continue
        try:
            ns, start = read_private(p / ".owner").split()
        except (OSError, ValueError):
            try:
                old = time.time() - p.stat().st_mtime > young_s
            except OSError:
                continue
            ns, start = (_ns_tag(), "") if old else ("", "")
        if ns == _ns_tag() and not alive(p.name, "" if start == "0" else start):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (created 0600), never through a symlink planted at that name."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_private(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        return f.read()


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def handle_termination() -> None:
    """SIGTERM (a scheduler's cancel, ``kill``) and SIGHUP unwind the sweep like Ctrl-C: the cell's run
    is closed with a reason, workers are killed and temporary files removed (``finally`` and atexit
    run). Only from the main thread (signal handlers live there)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)


def exit_code_of(exc: BaseException) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number."""
    name = exc.signame if isinstance(exc, Interrupted) else "SIGINT"
    return 128 + int(signal.Signals[name])


def exit_now(code: int) -> None:
    """End the process with ``code`` once its work is done and written: other threads joined, the exit
    handlers run (logging's flush, the private TMPDIR's removal, ...), the standard streams flushed; then
    os._exit, which skips the interpreter's teardown of every imported module. That teardown took 1-2 s
    per process here once torch, its compiler, MLflow and scikit-learn were loaded (measured: a one-cell
    sweep's last line at 8.8 s, its exit at 11.0 s), paid by every sweep and by every benchmark worker,
    which the sweep waits for."""
    import atexit
    import sys
    import threading

    # what the interpreter does at exit, in its order: threading's exit hooks (executors told to stop)
    # and the join of non-daemon threads, then the atexit handlers
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def die_with_parent(parent_pid: Optional[int] = None) -> None:
    """In a worker: SIGKILL as soon as the process that started it ends (Linux's PR_SET_PDEATHSIG), so
    a sweep killed by any signal, SIGKILL included, leaves no worker running. If the parent is already
    gone when this runs, exit at once. Elsewhere than Linux, nothing."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
