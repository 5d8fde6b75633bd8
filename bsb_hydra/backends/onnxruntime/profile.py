"""backend=onnxruntime's why-slow profile: ONNX Runtime's session profiler, per-node kernel times
summarized in the shape every summary has (bsb_hydra/bench/profile.py)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable

from bsb_hydra.bench.profile import FLOAT_DTYPES, op_table

# Ops that do a model's arithmetic. One of these running on float inputs in an int8 artifact is
# arithmetic the quantization did not reach.
COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "LSTM", "GRU",
           "Attention", "MultiHeadAttention", "QAttention", "ConvInteger", "MatMulInteger", "QLinearConv",
           "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "NhwcFusedConv"}
# Integer kernels that take float activations and quantize them inside: float inputs, int8 arithmetic.
QUANTIZING = {"DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}


def ort_summary(events: Iterable[Dict[str, Any]], runs: int) -> Dict[str, Any]:
    """ONNX Runtime's profile (SessionOptions.enable_profiling): its per-node kernel times summed by
    op type and first input's dtype. QuantizeLinear / DequantizeLinear nodes left after graph
    optimisation are the QDQ pairs ORT did not fuse into an integer kernel; a compute op on float
    inputs ran in float."""
    totals: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    dtypes: Dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        a = e.get("args", {})
        ins = a.get("input_type_shape") or [{}]
        dtype = next(iter(ins[0]), "") if ins and isinstance(ins[0], dict) else ""
        key = f"{a.get('op_name', '?')}[{dtype}]" if dtype else a.get("op_name", "?")
        totals[key] += float(e.get("dur", 0)) / 1000.0  # microseconds
        calls[key] += 1
        dtypes[key] = dtype
    ops = op_table(totals, calls, dtypes, max(runs, 1))
    qdq = sum(r["calls_per_run"] for r in ops if r["op"].split("[")[0] in ("QuantizeLinear", "DequantizeLinear"))
    return {"runtime": "onnxruntime", "runs": runs, "ops": ops,
            "float_compute_ops": [r["op"] for r in ops if r["op"].split("[")[0] in COMPUTE - QUANTIZING
                                  and r["input_dtype"] in FLOAT_DTYPES],
            # a fully fused graph keeps one pair: its float input quantized, its output dequantized
            "qdq_nodes": qdq, "unfused_qdq": max(0.0, qdq - 2), "not_delegated": []}
