"""backend=pytorch's why-slow profile: torch.profiler's per-op self CPU times, in the shape every summary
has (bsb_hydra/bench/profile.py)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable

from bsb_hydra.bench.profile import op_table

COMPUTE_WORDS = ("conv", "linear", "addmm", "matmul", "mm", "bmm", "lstm", "gru", "attention")


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
    ops = op_table(totals, calls, {}, max(runs, 1))
    floaty = [r["op"] for r in ops if r["op"].startswith("aten::")
              and any(w in r["op"].split("::")[1] for w in COMPUTE_WORDS)] if quantized else []
    return {"runtime": "pytorch", "runs": runs, "ops": ops, "float_compute_ops": floaty,
            "unfused_qdq": sum(r["calls_per_run"] for r in ops if r["op"] in ("aten::quantize_per_tensor",
                                                                              "aten::dequantize")),
            "not_delegated": []}
