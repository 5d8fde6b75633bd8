"""backend=pytorch's peak kernels (bsb_hydra/bench/peak.py): a traced Linear, fp32 and int8."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Dict

KERNELS = "fp32 aten::linear (traced) | int8 quantized::linear (FX, x86/qnnpack engine)"
ARTIFACT_KERNELS = {"int8": "quantized::linear"}


def peak_artifacts(out: Path, size: int, features: int) -> Dict[str, Path]:
    """fp32: a traced Linear; int8: the same layer through FX x86 static quantization (the path of a
    PyTorch static cell), calibrated on normal samples."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.manual_seed(0)
    gemm = torch.nn.Sequential(torch.nn.Linear(size, size, bias=False)).eval()
    floor = torch.nn.Sequential(torch.nn.Linear(features, features)).eval()
    x = torch.randn(size, size)
    torch.backends.quantized.engine = "x86" if platform.machine() == "x86_64" else "qnnpack"
    prepared = prepare_fx(gemm, get_default_qconfig_mapping(torch.backends.quantized.engine), (x,))
    with torch.inference_mode():
        prepared(x)
    int8 = convert_fx(prepared)
    paths = {}
    with torch.inference_mode():
        for name, module, example in (("fp32", gemm, x), ("int8", int8, x),
                                      ("floor", floor, torch.randn(1, features))):
            paths[name] = out / f"{name}.pt"
            torch.jit.save(torch.jit.trace(module, example), str(paths[name]))
    return paths
