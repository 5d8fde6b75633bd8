"""Schemas of the backend and device groups (conf/backend, conf/device)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, positive as _positive


@dataclass
class BackendConfig:
    # The backend's name (fixed by the option); the backend tag of each run.
    name: str = MISSING


# --------------------------------------------------------------------------------------- device
# The normalized ISA feature names of bsb_hydra.sysinfo (the `isa` tag).
ISA_FEATURES = frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx", "amx_int8", "avx512_bf16",
                          "avx512_fp16", "neon", "dotprod", "i8mm", "sve", "sve2", "bf16", "fp16"})


@dataclass
class DeviceConfig:
    # The device profile's name (the device tag): local, or a named machine whose arch and ISA a run
    # checks against the one it runs on.
    name: str = "local"
    # The architecture this device expects (x86_64 | aarch64); null = whatever this machine is.
    expected_arch: Optional[str] = None
    # Threads for every runtime (torch intra-op, ORT intra-op): recorded on every run.
    threads: int = 1
    # PyTorch quantized engine: auto = x86 on x86_64, qnnpack on aarch64.
    torch_engine: str = "auto"
    # ISA features the named device has (names as in the `isa` tag: neon, dotprod, i8mm, sve, bf16,
    # avx2, avx512_vnni, amx ...). A machine lacking one is not that device: the job ends unsupported.
    expected_isa: List[str] = field(default_factory=list)
    # CPUs the benchmark worker is pinned to (os.sched_setaffinity), e.g. [2] to keep it off the core
    # that serves interrupts; null = not pinned. Stamped as the tag `cpus_pinned`.
    core_pinning: Optional[List[int]] = None

    def __post_init__(self) -> None:
        _positive("device.threads", self.threads)
        if self.expected_arch not in (None, "x86_64", "aarch64"):
            raise ConfigError(f"device.expected_arch={self.expected_arch!r} is not allowed: use x86_64, aarch64 or null")
        allowed = ("auto", "x86", "fbgemm", "qnnpack", "onednn")
        if self.torch_engine not in allowed:
            raise ConfigError(f"device.torch_engine={self.torch_engine!r} is not allowed: use one of {allowed}")
        known = ISA_FEATURES
        for f in self.expected_isa:
            if f not in known:
                raise ConfigError(f"device.expected_isa contains {f!r}: use feature names from {sorted(known)}")
        if self.core_pinning is not None:
            if not self.core_pinning:
                raise ConfigError("device.core_pinning=[] is not allowed: give CPU numbers or null")
            for i, c in enumerate(self.core_pinning):
                if c < 0:
                    raise ConfigError(f"device.core_pinning[{i}]={c} is not allowed: CPU numbers are >= 0")
            if len(self.core_pinning) < self.threads:
                raise ConfigError(f"device.core_pinning={list(self.core_pinning)} has fewer CPUs than "
                                  f"device.threads={self.threads}")

