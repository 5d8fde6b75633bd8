"""backend=openvino's peak kernels (bsb_hydra/bench/peak.py): one MatMul as OpenVINO IR, fp32 and
quantized by NNCF (the static cell's path: nncf.quantize, int8 weights and activations), which the
CPU plugin runs as an int8 FullyConnected."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

KERNELS = "fp32 FullyConnected | int8 FullyConnected (nncf.quantize, u8/i8), CPU plugin"
ARTIFACT_KERNELS = {"int8": "FullyConnected int8 (NNCF static)"}


def peak_artifacts(out: Path, size: int, features: int) -> Dict[str, Path]:
    import nncf
    import openvino as ov

    from bsb_hydra.backends.onnxruntime.peak import onnx_matmul
    from bsb_hydra.backends.openvino.build import _quiet_nncf

    _quiet_nncf()
    paths = {}
    for name, k in (("fp32", size), ("floor", features)):
        onnx_matmul(out / f"{name}.onnx", k, k)
        paths[name] = out / f"{name}.xml"
        ov.save_model(ov.convert_model(str(out / f"{name}.onnx")), str(paths[name]), compress_to_fp16=False)
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((8, size)).astype(np.float32) for _ in range(4)]
    int8 = nncf.quantize(ov.Core().read_model(str(paths["fp32"])), nncf.Dataset(samples), subset_size=len(samples))
    paths["int8"] = out / "int8.xml"
    ov.save_model(int8, str(paths["int8"]))
    return paths
