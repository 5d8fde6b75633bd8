"""Which ONNX Runtime int8 layout is fastest on this CPU (issue 23, item 4): one torchvision model at
224 px quantized by ORT's own tools in each candidate layout, every artifact timed by the benchmark
worker (bsb_hydra/bench/worker.py, the path of every cell) in the same fresh processes, rounds in
alternating order, against the fp32 graph.

    .venv/bin/python scripts/ort_int8_formats.py [--arch resnet18] [--threads 1] [--batch 1] [--rounds 2]

Layouts: static QDQ U8S8 (uint8 activations, int8 weights: the default of quant=static on x86),
the same with reduce_range (7-bit weights: the default without VNNI), QDQ S8S8 (int8 both; the ARM
default), QOperator U8S8 (QLinearConv written by the quantizer instead of fused by the session),
and dynamic int8 with and without ConvInteger (quant.convolutions). All per-channel, calibrated
with minmax on random inputs: the weights are torchvision's random initialisation (seeded), which is
right for speed and says nothing about accuracy. For each artifact: p50 ms, speedup over fp32, and
the ops of the graph ORT runs after its optimisations (did the QDQ pairs fuse into QLinearConv?).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsb_hydra.backends.onnxruntime.build import TrainingSamplesReader, export_onnx, input_name  # noqa: E402
from bsb_hydra.bench.harness import Item, run_worker  # noqa: E402
from bsb_hydra.sysinfo import system_info  # noqa: E402


def build(arch: str, out: Path) -> dict:
    import torch
    import torchvision
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.registry import IntegerOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    export_onnx(model, x, out / "export.onnx", 18)
    quant_pre_process(str(out / "export.onnx"), str(out / "fp32.onnx"), skip_symbolic_shape=False)
    calib = np.random.default_rng(1).standard_normal((16, 3, 224, 224)).astype(np.float32)
    paths = {"fp32": out / "fp32.onnx"}
    static = {"qdq_u8s8": (QuantFormat.QDQ, QuantType.QUInt8, False),
              "qdq_u8s8_reduce_range": (QuantFormat.QDQ, QuantType.QUInt8, True),
              "qdq_s8s8": (QuantFormat.QDQ, QuantType.QInt8, False),
              "qoperator_u8s8": (QuantFormat.QOperator, QuantType.QUInt8, False)}
    for name, (fmt, act, rr) in static.items():
        paths[name] = out / f"{name}.onnx"
        reader = TrainingSamplesReader(calib, input_name(paths["fp32"]))
        quantize_static(str(paths["fp32"]), str(paths[name]), reader, quant_format=fmt, activation_type=act,
                        weight_type=QuantType.QInt8, per_channel=True, reduce_range=rr)
    for name, ops in (("dynamic_convs_fp32", sorted(set(IntegerOpsRegistry) - {"Conv"})),
                      ("dynamic_convs_int8", sorted(IntegerOpsRegistry))):
        paths[name] = out / f"{name}.onnx"
        quantize_dynamic(str(paths["fp32"]), str(paths[name]), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=ops)
    return paths


def optimized_ops(path: Path, threads: int) -> str:
    """The compute ops of the graph ORT actually runs (ORT_ENABLE_ALL, saved by the session)."""
    import onnx
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # not the warning that a saved NCHWc graph is CPU-specific: it is
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    keep = ("Conv", "QLinearConv", "ConvInteger", "FusedConv", "NchwcConv", "MatMulInteger", "QLinearMatMul",
            "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Gemm", "FusedGemm", "MatMul",
            "QGemm", "QLinearAdd", "Add", "DynamicQuantizeMatMul")
    return ", ".join(f"{k} {v}" for k, v in sorted(ops.items()) if k in keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="timing per artifact per round")
    a = ap.parse_args()
    info = system_info()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        paths = build(a.arch, out)
        x = out / "x.npy"
        np.save(x, np.random.default_rng(2).standard_normal((a.batch, 3, 224, 224)).astype(np.float32))
        names = list(paths)
        samples = {n: [] for n in names}
        for i in range(a.rounds):
            order = names if i % 2 == 0 else names[::-1]
            res = run_worker(items=[Item(n, paths[n], "float32") for n in order], latency_input=x, tag=f"r{i}",
                             latency={"batch_sizes": [a.batch], "warmup_runs": 5, "min_runs": 10,
                                      "min_duration_s": a.seconds, "max_duration_s": 10 * a.seconds},
                             backend="onnxruntime", threads=a.threads, settings={"graph_optimization": "all"},
                             eval_input=None, eval_batch_size=1, workdir=out / "bench", timeout_s=1800.0)
            for n in names:
                samples[n] += res[n].data["samples_ms"][str(a.batch)]
        p50 = {n: float(np.median(v)) for n, v in samples.items()}
        print(f"\n{a.arch} at 224 px, batch {a.batch}, {a.threads} thread(s), {a.rounds} processes; {info['cpu']} "
              f"(isa {info['isa']})\n")
        print("| layout | p50 ms | speedup vs fp32 | ops ORT runs (after its optimisations) |\n|---|---:|---:|---|")
        for n in names:
            print(f"| {n} | {p50[n]:.2f} | {p50['fp32'] / p50[n]:.2f}x | {optimized_ops(paths[n], a.threads)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
