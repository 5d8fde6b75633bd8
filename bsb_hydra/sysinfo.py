"""What the numbers were measured on: stamped on every run."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Callable, List, Mapping, Optional

X86_FEATURES = {"avx2": "avx2", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
                "amx_tile": "amx", "amx_int8": "amx_int8", "avx512_bf16": "avx512_bf16", "avx512_fp16": "avx512_fp16"}
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2",
                "bf16": "bf16", "fphp": "fp16"}
# Arm Ltd (implementer 0x41) cores by "CPU part": ARM's /proc/cpuinfo has no "model name".
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1",
             "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2", "0xd8e": "Neoverse-N3"}
# ELF e_machine of each normalized arch (EM_X86_64, EM_AARCH64).
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}
# What every cell stands on (training, export, tracking); each backend's own distributions come from its
# Runner (``libraries``).
LIBRARIES = ["torch", "torchao", "onnx", "mlflow", "hydra-core", "numpy"]


def libraries() -> list:
    """Every distribution a run is stamped with the version of: the common ones and every backend's."""
    from bsb_hydra.backends import BACKENDS

    names = list(LIBRARIES)
    for runner in BACKENDS.runners().values():
        names += [lib for lib in runner.libraries if lib not in names]
    return names


def normalize_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8", "armv8l"):
        return "aarch64"
    return m


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def parse_cpuinfo(text: str):
    """(cpu model, sorted normalized ISA features) from /proc/cpuinfo text, x86 or ARM."""
    model, flags, implementer, part = "", set(), "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags |= set(value.split())
        elif key == "cpu implementer" and not implementer:
            implementer = value.strip().lower()
        elif key == "cpu part" and not part:
            part = value.strip().lower()
    if not model and implementer == "0x41" and part in ARM_PARTS:
        model = ARM_PARTS[part]
    isa = sorted({v for k, v in {**X86_FEATURES, **ARM_FEATURES}.items() if k in flags})
    return model, isa


def elf_machine(path: str) -> Optional[int]:
    """e_machine of the ELF file at ``path`` (62 = x86-64, 183 = AArch64), or None when it cannot be
    read or is not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    return elf_header_machine(head)


def elf_header_machine(head: bytes) -> Optional[int]:
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def parse_stat_ppid(stat_text: str) -> Optional[int]:
    """The parent PID from /proc/PID/stat text (the command name in parentheses may hold spaces)."""
    fields = stat_text.rpartition(")")[2].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def ancestor_pids(max_depth: int = 64) -> List[int]:
    """This process's ancestors, parent first, up to PID 1 (as far as /proc lets us read)."""
    pids, pid = [], os.getppid()
    while pid and pid > 0 and len(pids) < max_depth:
        pids.append(pid)
        try:
            pid = parse_stat_ppid(Path(f"/proc/{pid}/stat").read_text())
        except OSError:
            break
    return pids


def host_elf_machine(pids: Optional[List[int]] = None,
                     reader: Callable[[str], Optional[int]] = elf_machine) -> Optional[int]:
    """e_machine of the executable of the topmost ancestor process that can be read (PID 1 when it
    can; on some machines it cannot, then the shell that started us). QEMU user mode intercepts only
    /proc/self/exe (and /proc/<own pid>/exe); another process's exe is the host's binary, or, for an
    emulated process started through binfmt_misc, the x86-64 qemu interpreter itself."""
    pids = ancestor_pids() if pids is None else pids
    for pid in reversed(pids):
        m = reader(f"/proc/{pid}/exe")
        if m is not None:
            return m
    return None


def detect_emulated(arch: str, cpuinfo: str, env: Optional[Mapping[str, str]] = None,
                    host_machine: Optional[int] = None) -> bool:
    """QEMU user mode: qemu's own environment variables are set, or the process claims one arch while
    /proc/cpuinfo describes another, or while the ELF e_machine of an ancestor process's executable
    (``host_machine``, from ``host_elf_machine()``) is another arch's. The last holds when the guest is
    given a fake ARM /proc/cpuinfo (ONNX Runtime's cpuinfo needs one) and no QEMU_* variable."""
    env = os.environ if env is None else env
    if any(k.startswith("QEMU_") for k in env):
        return True
    x86_text = "vendor_id" in cpuinfo or "GenuineIntel" in cpuinfo or "AuthenticAMD" in cpuinfo
    if arch == "aarch64" and x86_text:
        return True
    own = ELF_MACHINES.get(arch)
    return own is not None and host_machine in ELF_MACHINES.values() and host_machine != own


@lru_cache(maxsize=1)
def system_info() -> dict:
    arch = normalize_arch(platform.machine())
    text = _cpuinfo()
    cpu, isa = parse_cpuinfo(text)
    info = {
        "arch": arch,
        "cpu": cpu or platform.processor() or "unknown",
        "isa": ",".join(isa) or "none",
        "emulated": str(detect_emulated(arch, text, host_machine=host_elf_machine())).lower(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu_count": str(os.cpu_count()),
    }
    for lib in libraries():
        try:
            info[f"version_{lib.replace('-', '_')}"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return info


@lru_cache(maxsize=1)
def git_sha(root: str = ".") -> str:
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def torch_engine(requested: str, arch: str) -> str:
    if requested != "auto":
        return requested
    return "qnnpack" if arch == "aarch64" else "x86"
