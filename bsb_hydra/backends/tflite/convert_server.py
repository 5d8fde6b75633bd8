"""One converter process per sweep process, not one per cell.

The TFLite converters (``tflite_convert``: TensorFlow + tf_keras; ``litert_convert``: torch +
litert-torch) run in their own process so TensorFlow never enters the sweep's. Starting that
process and importing TensorFlow cost several seconds per TFLite cell; a sweep's cells now send
their requests to one long-lived converter process per (module, thread count) instead:

    python -m bsb_hydra.backends.tflite.tflite_convert --serve

reads one request per line on stdin, a JSON string holding the request's path (JSON escapes a
newline, so any path a sweep folder can have arrives whole), runs the module's ``main(path)`` with its
file descriptors 1 and 2 sent to ``convert.log`` beside the request (TensorFlow's C++ logging
included), and answers ``DONE <exit code>`` on its own stdout. A request that raises answers a
non-zero code with the traceback in that log. The process dies with its parent (stdin closed), and a
server that died or hung is replaced by a fresh one for the next request; one killed by a signal
reports the signal (``exit_description``). ``BSB_CONVERTER_SERVER=0`` runs one process per
conversion, as before.
"""
from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

DONE = "DONE "


def serve(main: Callable[[str], None], before_each: Optional[Callable[[], None]] = None) -> None:
    """The server loop (the converter module's ``--serve``)."""
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    saved = os.dup(1), os.dup(2)
    for line in sys.stdin:
        if not line.strip():
            continue
        path = json.loads(line)
        code = 0
        log = os.open(Path(path).parent / "convert.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log, 1)
        os.dup2(log, 2)
        try:
            if before_each is not None:
                before_each()
            main(path)
        except SystemExit as e:  # SystemExit("message") is a failure with that message, as in a process
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - the request fails, the server goes on
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(log)
        answer.write(f"{DONE}{code}\n")


def exit_description(code: int) -> str:
    """``exited N``, or ``killed by SIGKILL`` for a process a signal ended (a negative code): the
    OOM killer's SIGKILL leaves no line of its own in the log, whose last line is whatever the
    converter printed before."""
    if code >= 0:
        return f"exited {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def enabled() -> bool:
    return os.environ.get("BSB_CONVERTER_SERVER", "1") != "0"


class _Server:
    def __init__(self, module: str, env: Dict[str, str]) -> None:
        self.module = module
        # what the server writes outside a request (an import error at start-up, a crash between
        # requests) goes here; a request it died in gets the tail in its convert.log
        fd, name = tempfile.mkstemp(prefix=f"bsb_convert_server_{module.rsplit('.', 1)[-1]}_", suffix=".log")
        self.log = Path(name)
        with os.fdopen(fd, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", module, "--serve"], env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        self.requests = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, req_path: Path, timeout: float) -> int:
        """The request's exit code; raises TimeoutError (and kills the server) past ``timeout``."""
        self.requests += 1
        self.proc.stdin.write(json.dumps(str(req_path)) + "\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + timeout
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise TimeoutError(f"{self.module} gave no answer in {timeout:.0f} s")
                line = self.proc.stdout.readline()
                if not line:  # the server died (a crash in native code, a signal, or it never started)
                    code = self.proc.wait()
                    tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
                    with open(Path(req_path).parent / "convert.log", "a") as log:
                        log.write("\n".join([f"[{self.module} server {exit_description(code)}]"] + tail) + "\n")
                    return code if code else 1
                if line.startswith(DONE):
                    return int(line[len(DONE):])
        finally:
            sel.close()

    def stop(self) -> None:
        if self.alive():
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


_SERVERS: Dict[Tuple[str, int], _Server] = {}


def run_request(module: str, req_path: Path, env: Dict[str, str], threads: int, timeout: float) -> Tuple[int, bool]:
    """Run one conversion request; (exit code, whether a running server took it). Without the
    server (BSB_CONVERTER_SERVER=0) a fresh ``python -m module REQUEST`` with its output in
    convert.log, as the server writes it."""
    env = {**env, "BSB_PARENT_PID": str(os.getpid())}  # a converter dies with its sweep (local_state.die_with_parent)
    if not enabled():
        with open(Path(req_path).parent / "convert.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", module, str(req_path)], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        return proc.returncode, False
    key = (module, threads)  # TensorFlow's thread pools are fixed at its first use: one server per count
    server = _SERVERS.get(key)
    reused = server is not None and server.alive()
    if not reused:
        server = _SERVERS[key] = _Server(module, env)
    code = server.run(req_path, timeout)
    if code != 0 and server.alive():  # a failed request may leave state behind: the next one starts clean
        server.stop()
    return code, reused


@atexit.register
def stop_all() -> None:
    for server in _SERVERS.values():
        server.stop()
    _SERVERS.clear()
