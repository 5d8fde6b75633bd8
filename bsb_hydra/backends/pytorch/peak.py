"""backend=pytorch's peak kernels (bsb_hydra/bench/peak.py): a Linear without bias, fp32 as a traced
TorchScript file (the fp32 cell's default form) and int8 through the static cell's path: PT2E with the
X86 (ARM on aarch64) Inductor quantizer, compiled into an AOTInductor package with frozen weights
(oneDNN's int8 GEMM). No torch.ao."""
from __future__ import annotations

import platform
import warnings
from pathlib import Path
from typing import Dict

KERNELS = "fp32 aten::linear (traced) | int8 PT2E qlinear (Inductor quantizer, AOTInductor, oneDNN)"
ARTIFACT_KERNELS = {"int8": "PT2E qlinear (AOTInductor)"}


def peak_artifacts(out: Path, size: int, features: int, threads: int = 1) -> Dict[str, Path]:
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from bsb_hydra.backends.pytorch.build import _save_aoti
    from bsb_hydra.backends.pytorch.pt2e import export_for_quantization, make_quantizer

    arch = "aarch64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    if arch == "aarch64":
        from torchao.quantization.pt2e.quantizer.arm_inductor_quantizer import \
            get_default_arm_inductor_quantization_config as default_config
        config = default_config()
    else:
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import \
            get_default_x86_inductor_quantization_config
        config = get_default_x86_inductor_quantization_config()
    torch.manual_seed(0)
    gemm = torch.nn.Sequential(torch.nn.Linear(size, size, bias=False)).eval()
    floor = torch.nn.Sequential(torch.nn.Linear(features, features)).eval()
    x = torch.randn(size, size)
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(export_for_quantization(gemm, x[:1], "static", "peak GEMM"),
                                make_quantizer(arch, config))
        with torch.no_grad():
            prepared(x)
        int8 = convert_pt2e(prepared)
        paths["int8"] = _save_aoti(int8, x[:1], out / "int8", threads)
        with torch.inference_mode():
            for name, module, example in (("fp32", gemm, x), ("floor", floor, torch.randn(1, features))):
                paths[name] = out / f"{name}.pt"
                torch.jit.save(torch.jit.trace(module, example), str(paths[name]))
    return paths
