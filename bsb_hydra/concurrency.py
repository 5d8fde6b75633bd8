"""How many bsb_hydra jobs run on this machine at once. Jobs that run side by side (the joblib
launcher, two sweeps, a cluster scheduler packing a node) share cores, caches and memory bandwidth,
and distort each other's latency. Each job registers itself in a machine-wide folder while it runs;
the most registered jobs seen during its measurements is stamped on its run (`concurrent_jobs`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bsb_hydra.tracking import _alive, _pid_start

REGISTRY = Path(os.environ.get("BSB_JOBS_DIR", Path(tempfile.gettempdir()) / "bsb_hydra_jobs"))


class JobSlot:
    """``with JobSlot() as slot: ... slot.sample() ...; slot.peak``"""

    def __init__(self, registry: Path = REGISTRY) -> None:
        self.registry = Path(registry)
        self.pid = os.getpid()
        self.path = self.registry / str(self.pid)
        self.peak = 1

    def __enter__(self) -> "JobSlot":
        try:
            if not self.registry.is_dir():
                self.registry.mkdir(parents=True, exist_ok=True)
                self.registry.chmod(0o1777)  # like /tmp: every user's jobs register (they all share the cores)
            self.path.write_text(_pid_start(self.pid))
        except OSError as e:  # never fail a cell over the count
            print(f"  note: cannot register in {self.registry} ({e}); concurrent_jobs counts only what it can read",
                  flush=True)
        self.sample()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def sample(self) -> int:
        """Jobs registered now (this one included, dead ones pruned); updates the peak."""
        n = 1 if not self.path.exists() else 0
        try:
            entries = list(self.registry.iterdir())
        except OSError:
            entries = []
        for p in entries:
            try:
                pid, start = p.name, p.read_text()
            except OSError:
                continue
            if pid == str(self.pid) or _alive(pid, start):
                n += 1
            else:
                try:
                    p.unlink(missing_ok=True)  # a job that died without unregistering
                except OSError:  # another user's stale entry
                    pass
        self.peak = max(self.peak, n)
        return n
