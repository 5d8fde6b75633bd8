"""What a model is, whatever its runtime: parameters and multiply-accumulates per sample.

MACs are counted by torch's own FLOP counter (``torch.utils.flop_counter.FlopCounterMode``: the
convolutions and matrix products a forward pass dispatches, at batch 1) and halved (one MAC = two
FLOPs). Elementwise work (activations, norms, softmax) is not counted: that is the convention
papers and torchvision's model cards use for "GFLOPs"."""
from __future__ import annotations

from typing import Dict

import numpy as np


def model_facts(module, example) -> Dict[str, float]:
    """``model_params`` (every parameter, trainable or not) and ``model_macs`` at batch 1.
    ``example``: one array or a Feeds (bsb_hydra/feeds.py) of several inputs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bsb_hydra.feeds import materialize, to_torch_args

    params = sum(p.numel() for p in module.parameters())
    args = to_torch_args(materialize(example[:1]))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(*args)
    return {"model_params": float(params), "model_macs": counter.get_total_flops() / 2.0}


def onnx_facts(path: str, specs) -> Dict[str, float]:
    """The same two figures for an ONNX file (model=onnx): parameters are the float initializers'
    elements; MACs are summed over Conv, ConvTranspose, Gemm and MatMul from the shapes ONNX's shape
    inference gives at batch 1. ``specs``: each fed input's per-sample shape (bsb_hydra.feeds.InputSpec)."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    params = sum(int(np.prod(i.dims)) for i in g.initializer if i.data_type in (1, 10, 11, 16))
    inputs = [i for i in g.input if i.name not in inits]
    by_name = {s.name: s for s in specs}
    for k, inp in enumerate(inputs):
        spec = by_name.get(inp.name, specs[k] if k < len(specs) else None)
        if spec is None:
            continue
        for d, v in zip(inp.type.tensor_type.shape.dim, (1, *spec.shape)):
            d.ClearField("dim_param")
            d.dim_value = int(v)
    del g.value_info[:]
    g = shape_inference.infer_shapes(model, data_prop=True).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.input) + list(g.output)}
    for name, t in inits.items():
        shapes[name] = list(t.dims)
    macs = 0
    for n in g.node:
        out = shapes.get(n.output[0]) if n.output else None
        if not out or 0 in out:
            continue
        if n.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(n.input[1])
            if w:  # every output element: (C_in / groups) x kernel MACs
                macs += int(np.prod(out)) * int(np.prod(w[1:])) if n.op_type == "Conv" else \
                    int(np.prod(shapes.get(n.input[0], [0]))) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul"):
            a = shapes.get(n.input[0])
            if a and 0 not in a:
                trans_a = next((x.i for x in n.attribute if x.name == "transA"), 0)
                k = a[-2] if (n.op_type == "Gemm" and trans_a) else a[-1]
                macs += int(np.prod(out)) * int(k)
    return {"model_params": float(params), "model_macs": float(macs)}
