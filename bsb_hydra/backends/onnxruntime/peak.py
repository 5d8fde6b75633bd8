"""backend=onnxruntime's peak kernels (bsb_hydra/bench/peak.py): one MatMul, fp32 and through ORT's
own quantizers."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

KERNELS = "fp32 MatMul | int8 QLinearMatMul (quantize_static QDQ, U8S8) and MatMulInteger (quantize_dynamic)"
ARTIFACT_KERNELS = {"int8": "QLinearMatMul (QDQ static)", "int8_dynamic": "MatMulInteger (dynamic)"}


def onnx_matmul(path: Path, k: int, n: int) -> None:
    """An ONNX graph of one MatMul [batch, k] x [k, n] (random normal weights, no bias)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
                              [numpy_helper.from_array(w, "w")])
    # IR version 8 (opset 17's): the onnx package writes a newer one than ONNX Runtime may read
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def peak_artifacts(out: Path, size: int, features: int) -> Dict[str, Path]:
    """fp32 MatMul; int8 through ORT's own tools: quantize_static (QDQ, u8 activations, s8 weights;
    ORT fuses it into QLinearMatMul) and quantize_dynamic (MatMulInteger)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": np.random.default_rng(i).standard_normal((8, size)).astype(np.float32)}
                                 for i in range(4)])

        def get_next(self):
            return next(self.batches, None)

    paths = {"fp32": out / "fp32.onnx", "int8": out / "int8_static.onnx", "int8_dynamic": out / "int8_dynamic.onnx",
             "floor": out / "floor.onnx"}
    onnx_matmul(paths["fp32"], size, size)
    onnx_matmul(paths["floor"], features, features)
    quantize_static(str(paths["fp32"]), str(paths["int8"]), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    quantize_dynamic(str(paths["fp32"]), str(paths["int8_dynamic"]), weight_type=QuantType.QInt8)
    return paths
