"""How many bsb_hydra jobs run on this machine at once. Jobs that run side by side (the joblib
launcher, two sweeps, a cluster scheduler packing a node) share cores, caches and memory bandwidth,
and distort each other's latency. Each job registers itself in a folder while it runs; the most
registered jobs seen during its measurements is stamped on its run (`concurrent_jobs`).

The folder is the user's own (bsb_hydra/local_state.py: ``<runtime dir>/jobs``, 0700; or
``$BSB_JOBS_DIR``), written without following symlinks. Until 2026-12-06 it was one machine-wide
folder of mode 1777, where another local user could plant symlinks (a sweep run as root then
overwrote the files they pointed to) or entries that inflated the count. The count is now of this
user's jobs: another user's jobs on the machine are not seen."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from bsb_hydra.local_state import _owned_private, _pid_start, alive, private_subdir, read_private, write_private


def registry_dir() -> Path:
    given = os.environ.get("BSB_JOBS_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True, mode=0o700)
        return _owned_private(Path(given), fix_mode=False)
    return private_subdir("jobs")


class JobSlot:
    """``with JobSlot() as slot: ... slot.sample() ...; slot.peak``"""

    def __init__(self, registry: Optional[Path] = None) -> None:
        self.registry = Path(registry) if registry is not None else None
        self.pid = os.getpid()
        self.path = None
        self.registered = False
        self.peak = 1

    def __enter__(self) -> "JobSlot":
        try:
            if self.registry is None:
                self.registry = registry_dir()
            else:
                self.registry.mkdir(parents=True, exist_ok=True, mode=0o700)
                _owned_private(self.registry, fix_mode=False)
            self.path = self.registry / str(self.pid)
            if self.path.is_symlink():  # planted at this job's name: removed, never written through
                self.path.unlink()
            write_private(self.path, _pid_start(self.pid))
            self.registered = True
        except (OSError, RuntimeError) as e:  # never fail a cell over the count
            print(f"  note: cannot register in {self.registry} ({e}); concurrent_jobs counts only what it can read",
                  flush=True)
        self.sample()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.path is not None:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def sample(self) -> int:
        """Jobs registered now (this one included, dead ones pruned); updates the peak."""
        n = 0 if self.registered else 1  # this job, counted once
        try:
            entries = list(self.registry.iterdir()) if self.registry is not None else []
        except OSError:
            entries = []
        for p in entries:
            try:
                pid, start = p.name, read_private(p)
            except OSError:  # a symlink (O_NOFOLLOW) or unreadable: not a job
                continue
            if pid == str(self.pid):
                n += 1 if self.registered else 0
            elif alive(pid, start):
                n += 1
            else:
                try:
                    p.unlink(missing_ok=True)  # a job that died without unregistering
                except OSError:  # another user's stale entry
                    pass
        self.peak = max(self.peak, n)
        return n
