from bsb_hydra.sysinfo import detect_emulated, normalize_arch, parse_cpuinfo, torch_engine

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
