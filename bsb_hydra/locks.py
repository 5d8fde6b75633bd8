"""An exclusive lock on a file, for the few things concurrent jobs on one machine must do one at a
time: creating a fresh sqlite MLflow store. (The caches lock their entries through
bsb_hydra/cache_files.py, which also copes with a cache it may only read.)"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
