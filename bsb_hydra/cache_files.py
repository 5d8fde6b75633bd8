"""What every cache of the project does the same way: the fp32 models (bsb_hydra/train.py), the
converted fp32 artifacts (bsb_hydra/artifact_cache.py), the PyTorch test logits (bsb_hydra/scoring.py)
and the machine's peak (bsb_hydra/bench/peak.py).

- An entry's SHA-256 is recorded when it is written and checked on every read. An entry that does
  not match, or cannot be read, is never used: the cell names the file and what was wrong, and
  builds it again. (The logits once had no checksum: altered contents were read as they were and
  logged fp32_vs_pytorch_agreement=0.0 in a cell with status ok. A corrupt peak file disabled the
  peak metrics of every cell until someone deleted it.)
- A file is written under a temporary name beside its place and renamed into it, so a reader never
  sees half a file. A write that fails (a full disk) removes the temporary file and raises
  CacheWriteError, naming the path and the errno; the caller goes on with what it holds in memory
  and says so, since a cache only saves time. Every file goes through a Python file object:
  ``torch.save`` to a path writes through its own C++ writer, whose full disk read
  "[enforce fail at inline_container.cc:672] . unexpected pos 1344 vs 1238" and left the
  temporary file behind.
- A cache whose lock file cannot be created (a read-only mount, another user's folder) is used as
  it is: its entries are read without the lock and nothing is written to it. Its entries are
  complete files (renamed into place), so reading them without the lock is safe.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterator, Optional, Tuple

# What creating a file in a cache we may only read raises (EPERM: some network filesystems).
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)

Note = Callable[[str], None]


def printed(msg: str) -> None:
    """The default of every ``note``: one indented line in the cell's output."""
    print(f"  {msg}", flush=True)


class Notes(list):
    """A ``note`` that prints each message and keeps it, for the cell to tag what its caches said."""

    def __call__(self, msg: str) -> None:
        printed(msg)
        self.append(msg)

    def text(self) -> str:
        return " | ".join(self)[:5000]


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno, f"errno {e.errno}") if e.errno else type(e).__name__


class CacheWriteError(OSError):
    """A cache file that could not be written: ``str()`` names the path, the errno and its meaning."""

    def __init__(self, path: Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror, str(path))
        self.message = f"cannot write the cache file {path}: {errno_name(cause)} ({cause.strerror or cause})"

    def __str__(self) -> str:
        return self.message


@contextmanager
def cache_lock(path: Path, note: Note = printed) -> Iterator[bool]:
    """The exclusive lock of one cache entry (concurrent jobs build it once: the others wait, then
    read it). Yields True holding the lock; False, holding nothing, when the lock file cannot be
    created because the cache is read-only to this process: the caller then only reads."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if e.errno not in READ_ONLY_ERRNOS:
            raise
        fd, why = None, f"{errno_name(e)}: {e.strerror}"
    if fd is None:
        note(f"NOTE: the cache {path.parent} is read-only here (creating its lock {path.name}: {why}): "
             f"its entries are used as they are, read without the lock, and nothing is written to it")
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def remove_quietly(path: Path) -> None:
    """A temporary file or folder left by a failed write. Failing to remove it is not the error
    to report: the write's own is."""
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def write_file(path: Path, write: Callable[[BinaryIO], Any]) -> str:
    """``write(f)`` into a temporary file beside ``path``, then renamed to it. Returns the SHA-256
    of the file as written. Any OSError (a full disk, a folder that cannot be written) removes the
    temporary file and raises CacheWriteError."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise CacheWriteError(path, e) from e
    except BaseException:
        remove_quietly(tmp)
        raise
    return digest


def write_entry(path: Path, meta_path: Path, write: Callable[[BinaryIO], Any], meta: Dict[str, Any]) -> str:
    """The file ``write`` makes, then ``meta`` with the file's SHA-256 in ``meta_path``. Returns the
    SHA-256. The file is renamed into place first: a reader that finds a new file beside an old
    meta sees a mismatch and builds it again, never a wrong entry."""
    digest = write_file(path, write)
    text = json.dumps({**meta, "sha256": digest}, indent=1, default=str)
    write_file(meta_path, lambda f: f.write(text.encode()))
    return digest


def check_entry(path: Path, meta_path: Path) -> Tuple[Optional[Dict[str, Any]], str]:
    """The meta recorded for the cache file ``path`` in ``meta_path``, when the file's SHA-256 is the
    one recorded there. Otherwise None and what is wrong ("" when there is no entry at all)."""
    if not path.exists() and not meta_path.exists():
        return None, ""
    try:
        meta = json.loads(meta_path.read_text())
        recorded = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(recorded, str):
            return None, f"{meta_path.name} records no sha256"
        got = sha256_file(path)
    except FileNotFoundError as e:
        return None, f"{Path(e.filename or '?').name} is missing"
    except (OSError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"
    if got != recorded:
        return None, f"sha256 {got[:16]}... is not the {recorded[:16]}... recorded in {meta_path.name}"
    return meta, ""
