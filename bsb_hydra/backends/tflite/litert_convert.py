"""TFLite for models without a Keras twin, in its own process: ``python -m bsb_hydra.backends.tflite.litert_convert
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
file is calibrated on the same training samples (its tensor names differ, so ranges are not shared).

``given`` instead of ``exported``: a user's float .tflite (model=tflite), quantized as it is, one file
(the runner resizes its batch)."""
from __future__ import annotations

import json
import os
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


# quant.convolutions on the dynamic scheme -> the ops whose weights stay float. null (the default):
# depthwise convolutions only. Their hybrid kernel is not XNNPACK's, and with per-tensor weights (the
# dynamic default) it wrecks mobilenet_v2: 10.8% accuracy (-58.6 pp) at 0.12x fp32's speed on an AMX
# Xeon at 2 threads; with them float, the 8 probe images agree as the per-channel build does and
# the b8 call takes 27 ms, not 178 (fp32: 23). true: every conv int8 (the measurement of that loss).
DYNAMIC_FLOAT_OPS = {None: ("DEPTHWISE_CONV_2D",), True: (), False: ("DEPTHWISE_CONV_2D", "CONV_2D")}


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
        for op in DYNAMIC_FLOAT_OPS[req["quant"].get("convolutions")]:
            q.update_quantization_recipe(regex=".*", operation_name=getattr(TFLOperationName, op),
                                         algorithm_key=AlgorithmName.NO_QUANTIZE)
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


def _batch_files_agreement(out: Path, manifest: dict, req):
    """Top-1 agreement of the largest batch's file with the batch-1 file on the same inputs (the
    calibration samples, else seeded normal inputs): the cell is timed at b1 on one file and scored on
    another, so they must compute the same model. None with one file."""
    from ai_edge_litert.interpreter import Interpreter

    if len(manifest) < 2 or req.get("input_dtype", "float32") != "float32":  # token ids: no random stand-in
        return None
    big = max(int(b) for b in manifest)
    shape = tuple(req["input_shape"])
    if req.get("calibration") and Path(req["calibration"]).is_file():
        x = np.resize(np.load(req["calibration"]), (big, *shape)).astype(np.float32)
    else:
        x = np.random.default_rng(0).standard_normal((big, *shape)).astype(np.float32)

    def logits(path, xs):
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        if np.dtype(i["dtype"]) != np.float32:  # int8 model input: quantized with the model's own scale
            scale, zero = i["quantization"]
            xs = np.clip(np.round(xs / scale + zero), -128, 127).astype(i["dtype"])
        it.set_tensor(i["index"], xs)
        it.invoke()
        return it.get_tensor(o["index"]).astype(np.float32)

    one = np.concatenate([logits(batch_path(out, 1), x[k:k + 1]) for k in range(big)])
    return float(np.mean(one.argmax(1) == logits(batch_path(out, big), x).argmax(1)))


def build(req, scheme: str, out: Path, floats: dict, log) -> dict:
    from bsb_hydra.backends.tflite.tflite_convert import op_summary

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
    given = bool(req.get("given"))  # a user's float .tflite (model=tflite): one file, its own batch handling
    if not given:
        Path(str(out) + ".batches.json").write_text(json.dumps(manifest))
    agreement = None if given else _batch_files_agreement(out, manifest, req)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(out))
    io = np.dtype(it.get_input_details()[0]["dtype"]).name
    source = "the float .tflite" if given else "litert-torch"
    info = {**op_summary(out.read_bytes()), "converter": f"{source} -> ai-edge-quantizer" if scheme != "fp32"
            else source, "io_dtype": io, "convert_seconds": f"{time.perf_counter() - t0:.1f}"}
    if not given:
        info["batch_files"] = ",".join(sorted(manifest, key=int))
    if agreement is not None:
        info["batch_files_top1_agreement"] = f"{agreement:.3f}"
        if agreement < 0.9:  # timed at b1 on one file, scored (in chunks of the largest batch) on another
            log(f"  litert: WARNING {scheme}: the b{max(map(int, manifest))} file agrees with the b1 file on "
                f"{agreement:.0%} of top-1s (same inputs): its latency and its accuracy come from different models")
    if scheme == "dynamic":
        conv = req["quant"].get("convolutions")
        info["convolutions"] = {None: "null (depthwise float)", True: "true", False: "false"}[conv]
        kept = [f"{op}:{n}" for op, n in (kv.split(":") for kv in info["ops"].split(",") if kv)
                if op in DYNAMIC_FLOAT_OPS[conv]]
        info["float_weight_ops"] = ",".join(kept) or "none"
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
    if req.get("given"):  # model=tflite: the user's float file
        floats = {1: Path(req["given"])}
    elif req.get("floats"):  # the cell's fp32 files, from the artifact cache: nothing to convert
        floats = {int(b): Path(p) for b, p in req["floats"].items()}
        log(f"  litert: float files for batch sizes {sorted(floats)} from the fp32 artifact cache")
    else:
        floats = convert_float(req)
        log(f"  litert-torch converted batch sizes {sorted(floats)} in {time.perf_counter() - t0:.1f} s")
    for job in req["outputs"]:
        result = build(req, job["scheme"], Path(job["out"]), floats, log)
        Path(job["info_out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    from bsb_hydra.local_state import die_with_parent, exit_now

    die_with_parent(int(os.environ["BSB_PARENT_PID"]) if os.environ.get("BSB_PARENT_PID") else None)
    if sys.argv[1] == "--serve":  # bsb_hydra/backends/tflite/convert_server.py
        from bsb_hydra.backends.tflite.convert_server import serve

        serve(main)
    else:
        main(sys.argv[1])
    exit_now(0)  # the parent waits for this exit: TensorFlow's teardown skipped (local_state.exit_now)
