"""backend=executorch's why-slow profile: ExecuTorch's ETDump, read with executorch.devtools.Inspector.
Per call it holds the time of every instruction the method ran (``DELEGATE_CALL`` for an XNNPACK
partition, ``OPERATOR_CALL`` for an op on ExecuTorch's portable kernels) and, inside the XNNPACK
delegate, of every XNNPACK operator, named by XNNPACK with its layout and precision
(``Convolution (NHWC, QC8) IGEMM``, ``Fully Connected (NC, QDU8, F32, QC8W) GEMM``, ``Convert (NC)``).
Summarized in the shape of bsb_hydra/bench/profile.py's summaries, which ``why_slow`` reads."""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

# XNNPACK operators that do a model's arithmetic (the part of the name before its parentheses).
COMPUTE = {"Convolution", "Deconvolution", "Fully Connected", "Dynamic Fully Connected", "Batch Matrix Multiply"}
FLOAT_PRECISIONS = {"F32", "F16", "BF16"}
# XNNPACK's quantize / dequantize (Convert), and the portable kernels' ones
CONVERTS = ("Convert", "quantized_decomposed::quantize", "quantized_decomposed::dequantize")
DELEGATE_OVERHEAD = "XNNPACK delegate call (outside its operators)"


def instruction_names(pte: bytes) -> Dict[int, str]:
    """{instruction index of the forward's chain: what it runs}: an operator's name
    (``aten::view_copy``) for a kernel call, the backend's id for a delegate call."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.schema import DelegateCall, KernelCall

    plan = deserialize_pte_binary(pte).program.execution_plan[0]
    names = {}
    for i, ins in enumerate(plan.chains[0].instructions):
        args = ins.instr_args
        if isinstance(args, KernelCall):
            op = plan.operators[args.op_index]
            names[i] = op.name
        elif isinstance(args, DelegateCall):
            names[i] = plan.delegates[args.delegate_index].id
    return names


def xnnpack_op(name: str) -> Tuple[str, List[str]]:
    """``Convolution (NHWC, QC8) IGEMM #3`` -> (``Convolution (NHWC, QC8) IGEMM``, [``QC8``]): the
    operator without its index, and the precisions in its parentheses (after the layout)."""
    op = re.sub(r"\s+#\d+$", "", name)
    inside = re.search(r"\(([^)]*)\)", op)
    parts = [p.strip() for p in inside.group(1).split(",")] if inside else []
    return op, parts[1:]


def executorch_summary(events: Iterable[Tuple[str, Optional[int], bool, Sequence[float]]], names: Dict[int, str],
                       runs: int, n_inputs: int = 1, n_outputs: int = 1) -> Dict[str, Any]:
    """``events``: (name, instruction id, delegated, ms of each profiled call) of the ETDump's Execute
    block, one entry per op occurrence in the program. Each occurrence counts with its median over the
    calls (the machine's noise stays out of the shares). Ops are XNNPACK operators by name, portable ops
    as ``portable:<op>``, and the time the delegate calls spent outside their operators (copying inputs
    in and outputs out, a reshape when the batch changes). A compute operator whose precisions are all
    float is arithmetic quantization did not reach; Convert operators (and portable quantize /
    dequantize) beyond one per model input and output are ``unfused_qdq``; the portable ops are
    ``not_delegated``. ETDump and XNNPACK's per-operator timers cost time per operator: the totals run
    above the timed latency, the shares are what the profile is for."""
    totals: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    dtypes: Dict[str, str] = {}
    delegate_ms = inner_ms = 0.0
    delegate_calls = 0
    method_ms = None
    portable = set()
    seen = 0
    for name, instruction, delegated, ms in events:
        if not ms:
            continue
        seen = max(seen, len(ms))
        median = float(np.median(ms))
        if delegated:  # an XNNPACK operator inside a delegate call
            op, precisions = xnnpack_op(name)
            key, dtype = op, (precisions[0].lower() if precisions else "")
            inner_ms += median
        elif name == "DELEGATE_CALL":
            delegate_ms += median
            delegate_calls += 1
            continue
        elif name == "OPERATOR_CALL":
            op_name = names.get(instruction, f"instruction {instruction}")
            key, dtype = f"portable:{op_name}", ""
            portable.add(op_name)
        else:  # Method::execute (the whole call), and the portable kernels' own events inside OPERATOR_CALL
            if name == "Method::execute":
                method_ms = median
            continue
        totals[key] += median
        calls[key] += 1
        dtypes[key] = dtype
    if delegate_ms > inner_ms:
        totals[DELEGATE_OVERHEAD] = delegate_ms - inner_ms
        calls[DELEGATE_OVERHEAD] = delegate_calls
        dtypes[DELEGATE_OVERHEAD] = ""
    whole = sum(totals.values()) or 1.0
    ops = sorted(({"op": k, "ms_per_run": v, "share": v / whole, "calls_per_run": calls[k], "input_dtype": dtypes[k]}
                  for k, v in totals.items()), key=lambda r: -r["ms_per_run"])

    def precisions(op: str) -> List[str]:
        return xnnpack_op(op)[1]

    floaty = [r["op"] for r in ops if r["op"].split(" (")[0] in COMPUTE and precisions(r["op"])
              and all(p in FLOAT_PRECISIONS for p in precisions(r["op"]))]
    converts = sum(r["calls_per_run"] for r in ops if r["op"].removeprefix("portable:").startswith(CONVERTS))
    return {"runtime": "executorch", "runs": seen or runs, "ops": ops, "float_compute_ops": floaty,
            "convert_nodes": converts, "unfused_qdq": max(0.0, converts - n_inputs - n_outputs),
            "not_delegated": sorted(portable), "method_ms_under_etdump": method_ms}
