"""What the numbers were measured on: stamped on every run."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

X86_FEATURES = {"avx2": "avx2", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
                "amx_tile": "amx", "amx_int8": "amx_int8", "avx512_bf16": "avx512_bf16", "avx512_fp16": "avx512_fp16"}
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2",
                "bf16": "bf16", "fphp": "fp16"}
LIBRARIES = ["torch", "torchao", "onnx", "onnxruntime", "tensorflow", "tf-keras", "tensorflow-model-optimization",
             "ai-edge-litert", "mlflow", "hydra-core", "numpy"]


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
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags |= set(value.split())
    isa = sorted({v for k, v in {**X86_FEATURES, **ARM_FEATURES}.items() if k in flags})
    return model, isa


def detect_emulated(arch: str, cpuinfo: str) -> bool:
    """QEMU user mode: the process claims one arch while /proc/cpuinfo describes another,
    or qemu's own environment variables are set."""
    if any(k.startswith("QEMU_") for k in os.environ):
        return True
    x86_text = "vendor_id" in cpuinfo or "GenuineIntel" in cpuinfo or "AuthenticAMD" in cpuinfo
    return arch == "aarch64" and x86_text


@lru_cache(maxsize=1)
def system_info() -> dict:
    arch = normalize_arch(platform.machine())
    text = _cpuinfo()
    cpu, isa = parse_cpuinfo(text)
    info = {
        "arch": arch,
        "cpu": cpu or platform.processor() or "unknown",
        "isa": ",".join(isa) or "none",
        "emulated": str(detect_emulated(arch, text)).lower(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu_count": str(os.cpu_count()),
    }
    for lib in LIBRARIES:
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
