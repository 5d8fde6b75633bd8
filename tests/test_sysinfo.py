import struct

from bsb_hydra.sysinfo import (detect_emulated, elf_header_machine, elf_machine, host_elf_machine, normalize_arch,
                               parse_cpuinfo, parse_stat_ppid, torch_engine)

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_tile
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


def test_x86_cpuinfo():
    model, isa = parse_cpuinfo(X86)
    assert model.startswith("AMD EPYC")
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx"} <= set(isa)


def test_arm_cpuinfo():
    _, isa = parse_cpuinfo(ARM)
    assert {"neon", "dotprod", "fp16"} <= set(isa) and "i8mm" not in isa


def test_arch_normalization_and_engine():
    assert normalize_arch("AMD64") == "x86_64" and normalize_arch("arm64") == "aarch64"
    assert torch_engine("auto", "x86_64") == "x86" and torch_engine("auto", "aarch64") == "qnnpack"
    assert torch_engine("fbgemm", "x86_64") == "fbgemm"


def test_emulation_detected_when_arm_process_sees_x86_cpuinfo(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("QEMU_"):
            monkeypatch.delenv(k)
    assert detect_emulated("aarch64", X86)
    assert not detect_emulated("aarch64", ARM)
    assert not detect_emulated("x86_64", X86)
    monkeypatch.setenv("QEMU_CPU", "neoverse-n1")
    assert detect_emulated("aarch64", ARM)


def _elf_header(machine: int, little: bool = True) -> bytes:
    order = "<" if little else ">"
    ident = b"\x7fELF" + bytes([2, 1 if little else 2, 1]) + bytes(9)
    return ident + struct.pack(order + "HH", 2, machine) + bytes(44)


def test_arm_cpu_named_from_its_part_number():
    model, _ = parse_cpuinfo(ARM)  # implementer 0x41, part 0xd0c: no "model name" line on ARM
    assert model == "Neoverse-N1"
    assert parse_cpuinfo(ARM.replace("0xd0c", "0xfff"))[0] == ""


def test_elf_machine_reads_the_header(tmp_path):
    assert elf_header_machine(_elf_header(62)) == 62
    assert elf_header_machine(_elf_header(183)) == 183
    assert elf_header_machine(_elf_header(183, little=False)) == 183
    assert elf_header_machine(b"#!/bin/sh\n" + bytes(20)) is None
    assert elf_header_machine(b"\x7fELF") is None
    exe = tmp_path / "exe"
    exe.write_bytes(_elf_header(62))
    assert elf_machine(str(exe)) == 62
    (tmp_path / "script").write_text("#!/bin/sh\necho hi\n")
    assert elf_machine(str(tmp_path / "script")) is None
    assert elf_machine(str(tmp_path / "missing")) is None


def test_emulation_detected_from_host_elf_when_cpuinfo_is_faked():
    # QEMU user mode with a fake ARM /proc/cpuinfo and no QEMU_* variables (e.g. a binfmt_misc
    # launched subprocess whose environment was cleaned): only PID 1's binary tells.
    assert detect_emulated("aarch64", ARM, env={}, host_machine=62)
    assert not detect_emulated("aarch64", ARM, env={}, host_machine=183)  # a real ARM machine
    assert not detect_emulated("aarch64", ARM, env={}, host_machine=None)  # /proc/1/exe unreadable
    assert not detect_emulated("x86_64", X86, env={}, host_machine=62)
    assert detect_emulated("x86_64", X86, env={}, host_machine=183)  # x86 guest on an ARM host
    assert not detect_emulated("aarch64", ARM, env={}, host_machine=8)  # unknown machine: no claim
    assert detect_emulated("aarch64", ARM, env={"QEMU_LD_PREFIX": "/sysroot"}, host_machine=183)
    assert detect_emulated("aarch64", X86, env={}, host_machine=None)


def test_host_machine_is_the_topmost_readable_ancestor():
    assert parse_stat_ppid("4242 (python3 -m x) S 17 4242 4242 0 -1") == 17
    assert parse_stat_ppid("garbage") is None
    machines = {"/proc/1/exe": None, "/proc/50/exe": 62, "/proc/900/exe": 183}  # PID 1 unreadable
    assert host_elf_machine([900, 50, 1], machines.get) == 62  # parent first, PID 1 last
    assert host_elf_machine([900], machines.get) == 183
    assert host_elf_machine([], machines.get) is None
