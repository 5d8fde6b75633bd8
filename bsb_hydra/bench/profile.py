"""Why a cell is slow, from the runtime's own profiler: the parsers of what each Runner's
``profile()`` collects (bsb_hydra/backends/*: ONNX Runtime's session profiling, torch.profiler, and
TFLite's op list with the nodes XNNPACK took), and the one line a run is tagged with.

Every summary is {"runtime", "runs", "ops": [{"op", "ms_per_run", "share", "calls_per_run",
"input_dtype"}...] (slowest first; TFLite: no timings, see tflite_summary), "float_compute_ops",
"unfused_qdq", "not_delegated"}."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional

# Ops that do a model's arithmetic. One of these running on float inputs in an int8 artifact is
# arithmetic the quantization did not reach.
ORT_COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "LSTM", "GRU",
               "Attention", "MultiHeadAttention", "QAttention", "ConvInteger", "MatMulInteger", "QLinearConv",
               "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "NhwcFusedConv"}
# Integer kernels that take float activations and quantize them inside: float inputs, int8 arithmetic.
ORT_QUANTIZING = {"DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}
TORCH_COMPUTE_WORDS = ("conv", "linear", "addmm", "matmul", "mm", "bmm", "lstm", "gru", "attention")
FLOAT_DTYPES = {"float", "float16", "double", "bfloat16"}


def _table(totals: Dict[str, float], calls: Dict[str, int], dtypes: Dict[str, str], runs: int) -> List[Dict[str, Any]]:
    whole = sum(totals.values()) or 1.0
    rows = [{"op": op, "ms_per_run": ms / runs, "share": ms / whole, "calls_per_run": calls[op] / runs,
             "input_dtype": dtypes.get(op, "")} for op, ms in totals.items()]
    return sorted(rows, key=lambda r: -r["ms_per_run"])


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
    ops = _table(totals, calls, dtypes, max(runs, 1))
    qdq = sum(r["calls_per_run"] for r in ops if r["op"].split("[")[0] in ("QuantizeLinear", "DequantizeLinear"))
    return {"runtime": "onnxruntime", "runs": runs, "ops": ops,
            "float_compute_ops": [r["op"] for r in ops if r["op"].split("[")[0] in ORT_COMPUTE - ORT_QUANTIZING
                                  and r["input_dtype"] in FLOAT_DTYPES],
            # a fully fused graph keeps one pair: its float input quantized, its output dequantized
            "qdq_nodes": qdq, "unfused_qdq": max(0.0, qdq - 2), "not_delegated": []}


def torch_summary(rows: Iterable[Dict[str, Any]], runs: int, quantized: bool) -> Dict[str, Any]:
    """torch.profiler's key_averages (name, self CPU time in us, count): ops by self time. In an
    int8 model, aten:: compute ops (conv, linear, mm) ran in float; quantized:: ones in int8."""
    totals: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    for r in rows:
        if r["self_cpu_us"] <= 0:
            continue
        totals[r["name"]] += r["self_cpu_us"] / 1000.0
        calls[r["name"]] += int(r["count"])
    ops = _table(totals, calls, {}, max(runs, 1))
    floaty = [r["op"] for r in ops if r["op"].startswith("aten::")
              and any(w in r["op"].split("::")[1] for w in TORCH_COMPUTE_WORDS)] if quantized else []
    return {"runtime": "pytorch", "runs": runs, "ops": ops, "float_compute_ops": floaty,
            "unfused_qdq": sum(r["calls_per_run"] for r in ops if r["op"] in ("aten::quantize_per_tensor",
                                                                              "aten::dequantize")),
            "not_delegated": []}


def tflite_summary(ops_details: List[Dict[str, Any]]) -> Dict[str, Any]:
    """TFLite's node list after the delegates were applied (Interpreter._get_ops_details(): the
    model's nodes, then one DELEGATE node per partition XNNPACK took). A node belongs to a partition
    when walking back from the partition's outputs reaches it before the partition's inputs; every
    other node ran on TFLite's builtin kernels. The Python API has no per-op timer, so ``ops`` holds
    node counts (ms_per_run is None), not times."""
    delegates = [o for o in ops_details if o["op_name"] == "DELEGATE"]
    nodes = [o for o in ops_details if o["op_name"] != "DELEGATE"]
    producer = {int(t): o["index"] for o in nodes for t in o["outputs"]}
    taken = set()
    for d in delegates:
        stop = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        while todo:
            t = todo.pop()
            if t in stop or t not in producer or producer[t] in taken:
                continue
            idx = producer[t]
            taken.add(idx)
            todo += [int(x) for x in next(o for o in nodes if o["index"] == idx)["inputs"] if int(x) >= 0]
    counts: Dict[str, int] = defaultdict(int)
    dtypes: Dict[str, str] = {}
    for o in nodes:
        dt = o["operand_types"][0].__name__ if o.get("operand_types") else ""
        counts[o["op_name"]] += 1
        dtypes[o["op_name"]] = dt
    left = [o for o in nodes if o["index"] not in taken]
    return {"runtime": "tflite", "runs": 0,
            "ops": [{"op": k, "ms_per_run": None, "share": None, "calls_per_run": v, "input_dtype": dtypes[k]}
                    for k, v in sorted(counts.items(), key=lambda kv: -kv[1])],
            "float_compute_ops": sorted({o["op_name"] for o in nodes if o["op_name"] in (
                "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")
                and o.get("operand_types") and o["operand_types"][0].__name__ in ("float32", "float16")}),
            "unfused_qdq": 0, "delegated_nodes": len(taken), "nodes": len(nodes),
            "not_delegated": sorted({o["op_name"] for o in left})}


def why_slow(cell: Dict[str, Any], ref: Optional[Dict[str, Any]], top: int = 4) -> str:
    """One line: the cell's top ops by time (against the fp32 reference's total), what ran in float,
    the QDQ nodes left unfused, what XNNPACK did not take."""
    parts = []
    timed = [r for r in cell["ops"] if r.get("ms_per_run") is not None]
    if timed:
        total = sum(r["ms_per_run"] for r in timed)
        ref_total = sum(r["ms_per_run"] for r in ref["ops"] if r.get("ms_per_run") is not None) if ref else None
        parts.append("top ops " + ", ".join(f"{r['op']} {r['ms_per_run']:.3g} ms ({100 * r['share']:.0f}%)"
                                            for r in timed[:top])
                     + f"; ops total {total:.3g} ms/run" + (f" vs fp32 {ref_total:.3g}" if ref_total else ""))
    else:
        parts.append(f"{cell.get('delegated_nodes', 0)} of {cell.get('nodes', 0)} nodes on XNNPACK")
    if cell["float_compute_ops"]:
        parts.append("in float: " + ", ".join(cell["float_compute_ops"][:6]))
    if cell["unfused_qdq"]:
        parts.append(f"{cell['unfused_qdq']:.0f} quantize/dequantize nodes per run not fused (beyond the model's "
                     "float input and output)")
    if cell["not_delegated"]:
        parts.append("not on XNNPACK: " + ", ".join(cell["not_delegated"][:8]))
    return "; ".join(parts)
