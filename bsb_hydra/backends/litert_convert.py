"""TFLite for models without a Keras twin, in its own process: ``python -m bsb_hydra.backends.litert_convert
REQUEST.json``. The torch model arrives as ExportedPrograms (``torch.export``, one per batch size);
litert-torch converts each to a float .tflite, and ai-edge-quantizer (Google's post-conversion
quantizer for LiteRT) makes the scheme from that file:

fp16     float16 weights (FLOAT_CASTING weight-only), float compute
dynamic  int8 weights, activations quantized per call (dynamic config, ALL_SUPPORTED ops)
static   int8 weights and activations (static config, min/max ranges calibrated on the request's real
         training samples); float model input and output (QUANTIZE/DEQUANTIZE at the edges) unless int8_io

litert-torch converts at a fixed batch (its dynamic-batch export fails on common graphs such as
torchvision's flatten), so each batch size gets its own file: ``out`` for batch 1 and ``out`` with
``.b{N}.tflite`` for N, listed in ``out + ".batches.json"``, which the runner reads. Each batch size's
file is calibrated on the same training samples (its tensor names differ, so ranges are not shared)."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def batch_path(out: Path, b: int) -> Path:
    return out if b == 1 else out.with_name(f"{out.stem}.b{b}{out.suffix}")


def convert_float(req) -> dict:
    """{batch: float .tflite path}, converted by litert-torch from the request's exported programs."""
    import litert_torch
    import torch

    work = Path(req["workdir"])
    shape = tuple(req["input_shape"])
    dtype = getattr(torch, req["input_dtype"])
    out = {}
    for b, ep_path in sorted(((int(k), v) for k, v in req["exported"].items())):
        path = work / f"litert_float_b{b}.tflite"
        module = torch.export.load(ep_path).module()
        litert_torch.convert(module, (torch.zeros((b, *shape), dtype=dtype),)).export(str(path))
        out[b] = path
    return out


def _quantizer(path: Path, scheme: str, req):
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import QuantGranularity, TFLOperationName

    q = quantizer.Quantizer(str(path))
    per_tensor = req["quant"].get("granularity") == "per_tensor"
    granularity = QuantGranularity.TENSORWISE if per_tensor else QuantGranularity.CHANNELWISE
    ops = TFLOperationName.ALL_SUPPORTED
    if scheme == "fp16":
        q.add_weight_only_config(regex=".*", operation_name=ops, num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif scheme == "dynamic":
        q.add_dynamic_config(regex=".*", operation_name=ops, num_bits=8, granularity=granularity)
    elif scheme == "static":
        q.add_static_config(regex=".*", operation_name=ops, activation_num_bits=8, weight_num_bits=8,
                            weight_granularity=granularity)
        if not req["int8_io"]:  # float input and output, quantized inside the model (what the twins do)
            for edge in (TFLOperationName.INPUT, TFLOperationName.OUTPUT):
                q.update_quantization_recipe(regex=".*", operation_name=edge, algorithm_key=AlgorithmName.NO_QUANTIZE)
    else:
        raise ValueError(f"no litert-torch path for quant={scheme}")
    return q


def _calibration(path: Path, q, req, batch: int):
    """min/max ranges from the request's training samples, fed ``batch`` at a time (the model's fixed batch;
    tensor names differ between the batch sizes' graphs, so each is calibrated on its own)."""
    from ai_edge_litert.interpreter import Interpreter

    name = list(Interpreter(model_path=str(path)).get_signature_runner().get_input_details())[0]
    x = np.load(req["calibration"])
    n = max(batch, len(x) // batch * batch)  # whole batches (a set smaller than one batch is repeated)
    x = np.resize(x, (n, *x.shape[1:]))
    return q.calibrate({"serving_default": [{name: x[i:i + batch]} for i in range(0, n, batch)]},
                       num_threads=req.get("threads", 1))


def build(req, scheme: str, out: Path, floats: dict, log) -> dict:
    from bsb_hydra.backends.tflite_convert import op_summary

    t0 = time.perf_counter()
    manifest = {}
    for b, src in sorted(floats.items()):
        target = batch_path(out, b)
        if scheme == "fp32":
            shutil.copyfile(src, target)
        else:
            q = _quantizer(src, scheme, req)
            q.quantize(_calibration(src, q, req, b) if scheme == "static" else None).export_model(
                str(target), overwrite=True)
        manifest[str(b)] = target.name
    Path(str(out) + ".batches.json").write_text(json.dumps(manifest))
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(out))
    io = np.dtype(it.get_input_details()[0]["dtype"]).name
    info = {**op_summary(out.read_bytes()), "converter": "litert-torch -> ai-edge-quantizer" if scheme != "fp32"
            else "litert-torch", "io_dtype": io, "batch_files": ",".join(sorted(manifest, key=int)),
            "convert_seconds": f"{time.perf_counter() - t0:.1f}"}
    if scheme == "static":
        x = np.load(req["calibration"])
        info["calibration_samples"] = str(len(x))
        info["granularity"] = req["quant"].get("granularity", "per_channel")
    log(f"  litert: {scheme} -> {out.name} ({', '.join('b' + k for k in sorted(manifest, key=int))})")
    return {"input_dtype": io, "info": info}


def main(request_path: str) -> None:
    req = json.loads(Path(request_path).read_text())
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    floats = convert_float(req)
    log(f"  litert-torch converted batch sizes {sorted(floats)} in {time.perf_counter() - t0:.1f} s")
    for job in req["outputs"]:
        result = build(req, job["scheme"], Path(job["out"]), floats, log)
        Path(job["info_out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
