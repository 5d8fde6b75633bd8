"""backend=pytorch's why-slow profile: torch.profiler's per-op self CPU times, in the shape every summary
has (bsb_hydra/bench/profile.py)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List

from bsb_hydra.bench.profile import op_table

COMPUTE_WORDS = ("conv", "linear", "addmm", "matmul", "mm", "bmm", "lstm", "gru", "attention")
ONEDNN_COMPUTE = ("convolution", "inner_product", "matmul", "rnn")


def onednn_rows(log: str) -> List[Dict[str, Any]]:
    """oneDNN's verbose lines (``onednn_verbose,v1,primitive,exec,cpu,KIND,IMPL,PROP,MEMORY,...,MS``) as
    profile rows: one per kind, implementation and source/weight data type, e.g.
    ``onednn:convolution brg_conv_fwd:avx512_core_vnni u8/s8`` (self time in us, call count)."""
    totals: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    for line in log.splitlines():
        f = line.split(",")
        if len(f) < 10 or not line.startswith("onednn_verbose") or f[2:4] != ["primitive", "exec"]:
            continue
        try:
            ms = float(f[-1])
        except ValueError:
            continue
        kind, impl, memory = f[5], f[6], f[8]
        types = {d.split(":")[0]: d.split(":")[1] for d in memory.split() if d.count(":") >= 2}
        dtype = "/".join(t for t in (types.get("src"), types.get("wei")) if t)
        name = f"onednn:{kind} {impl}" + (f" {dtype}" if dtype else "")
        totals[name] += ms * 1000.0
        calls[name] += 1
    return [{"name": k, "self_cpu_us": v, "count": calls[k]} for k, v in totals.items()]


def torch_summary(rows: Iterable[Dict[str, Any]], runs: int, quantized: bool) -> Dict[str, Any]:
    """torch.profiler's key_averages (name, self CPU time in us, count), and for an AOTInductor package
    oneDNN's primitives (onednn_rows): ops by self time. In an int8 model, aten:: compute ops (conv,
    linear, mm) and oneDNN compute primitives on f32/bf16/f16 sources ran in float; quantized:: ones
    and oneDNN's u8/s8 ones in int8."""
    totals: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    for r in rows:
        if r["self_cpu_us"] <= 0:
            continue
        totals[r["name"]] += r["self_cpu_us"] / 1000.0
        calls[r["name"]] += int(r["count"])
    ops = op_table(totals, calls, {}, max(runs, 1))
    floaty = [r["op"] for r in ops if (r["op"].startswith("aten::")
                                       and any(w in r["op"].split("::")[1] for w in COMPUTE_WORDS))
              or (r["op"].startswith("onednn:") and r["op"].split()[0][7:] in ONEDNN_COMPUTE
                  and r["op"].split()[-1].startswith(("f32", "bf16", "f16")))] if quantized else []
    return {"runtime": "pytorch", "runs": runs, "ops": ops, "float_compute_ops": floaty,
            "unfused_qdq": sum(r["calls_per_run"] for r in ops if r["op"] in ("aten::quantize_per_tensor",
                                                                              "aten::dequantize")),
            "not_delegated": []}
