"""backend=openvino's why-slow profile: the CPU plugin's performance counters (PERF_COUNT), one row
per executed node of the compiled graph per call: its type after the plugin's fusions
(Convolution, FullyConnected, FakeQuantize, Reorder, Subgraph, ...), the kernel it ran
(``exec_type``, e.g. ``brgconv_avx512_I8``, ``jit_avx512_FP32``: the ISA and the precision) and its
time. Summarized in the shape of bsb_hydra/bench/profile.py's summaries, which ``why_slow`` reads."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Dict, Iterable, Tuple

# Node types of the CPU plugin's compiled graph that do a model's arithmetic.
COMPUTE = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "FullyConnectedCompressed", "MatMul", "RNNSeq", "RNNCell",
           "ScaledDotProductAttention", "MHA", "Gemm"}
FLOAT_PRECISIONS = {"FP32", "BF16", "FP16", "F32", "F16"}
PRECISIONS = FLOAT_PRECISIONS | {"I8", "U8", "I32", "I64", "U4", "I4"}


def precision_of(exec_type: str) -> str:
    """The precision a kernel ran in, from its name's last part (``brgconv_avx512_I8`` -> I8)."""
    last = exec_type.rsplit("_", 1)[-1].upper()
    return last if last in PRECISIONS else ""


def openvino_summary(rows: Iterable[Tuple[str, str, float]], runs: int, n_inputs: int = 1) -> Dict[str, Any]:
    """``rows``: (node_type, exec_type, ms) of every executed node of every call. Ops are node types
    by precision (``Convolution[I8]``); a compute node that ran in a float precision in a quantized
    model is arithmetic quantization did not reach. FakeQuantize nodes the plugin ran on their own
    (not fused into the next kernel) are ``unfused_qdq``, less the one per float model input that
    every int8 model needs; ``reference_kernels`` names the node types that ran the plugin's slow
    reference (``ref_``) implementations."""
    runs = max(runs, 1)
    totals: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    dtypes: Dict[str, str] = {}
    kernels: Dict[str, Counter] = defaultdict(Counter)
    reference = set()
    for node_type, exec_type, ms in rows:
        prec = precision_of(exec_type)
        key = f"{node_type}[{prec}]" if prec else node_type
        totals[key] += ms
        calls[key] += 1
        dtypes[key] = prec.lower()
        kernels[key][exec_type] += 1
        if exec_type.startswith("ref"):
            reference.add(node_type)
    whole = sum(totals.values()) or 1.0
    ops = sorted(({"op": k, "ms_per_run": v / runs, "share": v / whole, "calls_per_run": calls[k] / runs,
                   "input_dtype": dtypes[k], "kernel": kernels[k].most_common(1)[0][0]} for k, v in totals.items()),
                 key=lambda r: -r["ms_per_run"])
    fq = sum(r["calls_per_run"] for r in ops if r["op"].split("[")[0] == "FakeQuantize")
    return {"runtime": "openvino", "runs": runs, "ops": ops,
            "float_compute_ops": [r["op"] for r in ops if r["op"].split("[")[0] in COMPUTE
                                  and r["input_dtype"].upper() in FLOAT_PRECISIONS],
            "fake_quantize_nodes": fq, "unfused_qdq": max(0.0, fq - n_inputs),
            "reference_kernels": sorted(reference), "not_delegated": []}
