"""Why a cell is slow, from the runtime's own profiler: what every backend's summary shares (each
backend's package parses its own profiler: bsb_hydra/backends/<name>/profile.py; each Runner's
``profile()`` returns the summary), and the one line a run is tagged with.

Every summary is {"runtime", "runs", "ops": [{"op", "ms_per_run", "share", "calls_per_run",
"input_dtype"}...] (slowest first; TFLite: no timings, see tflite_summary), "float_compute_ops",
"unfused_qdq", "not_delegated"}."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

FLOAT_DTYPES = {"float", "float16", "double", "bfloat16"}


def op_table(totals: Dict[str, float], calls: Dict[str, int], dtypes: Dict[str, str], runs: int) -> List[Dict[str, Any]]:
    whole = sum(totals.values()) or 1.0
    rows = [{"op": op, "ms_per_run": ms / runs, "share": ms / whole, "calls_per_run": calls[op] / runs,
             "input_dtype": dtypes.get(op, "")} for op, ms in totals.items()]
    return sorted(rows, key=lambda r: -r["ms_per_run"])


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
