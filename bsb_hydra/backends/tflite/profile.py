"""backend=tflite's why-slow profile: which nodes LiteRT's XNNPACK delegate took (the Python API has no
per-op timer), in the shape every summary has (bsb_hydra/bench/profile.py)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List


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
