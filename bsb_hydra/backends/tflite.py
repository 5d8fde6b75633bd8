"""TFLite (LiteRT) backend. The trained PyTorch weights are copied into a Keras twin of the model
(``keras_twins``), so every backend measures the same weights; TensorFlow's own converter makes
the ``.tflite`` artifact, and the worker runs it with ``ai_edge_litert`` only (XNNPACK, the
device's thread count).

fp32    TFLiteConverter, no optimisation;
fp16    float16 weights (Optimize.DEFAULT + supported_types float16), dequantized at load;
dynamic dynamic-range: int8 weights, activations quantized at run time by the hybrid kernels;
static  full-integer int8 with a representative dataset of real training samples, per-channel
        weights (per_tensor through the converter's per-channel switch); float or int8 model I/O;
qat     tensorflow-model-optimization QAT of the twin, fine-tuned on the training split, converted
        to full-integer int8.

TensorFlow is imported only in the converter's own process (``tflite_convert``), started with
TF_USE_LEGACY_KERAS=1 because tfmot needs tf_keras; this module imports numpy only."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from bsb_hydra.backends import BACKENDS
from bsb_hydra.backends.base import Artifact, Backend, BuildContext, Runner

REQUIRED = {"tensorflow": "tensorflow", "tf_keras": "tf-keras", "tensorflow_model_optimization":
            "tensorflow-model-optimization", "ai_edge_litert": "ai-edge-litert"}
CONVERT_TIMEOUT_S = 3600


@BACKENDS.register("tflite")
class TfliteBackend(Backend):
    name = "tflite"
    suffix = ".tflite"
    no_auto_reason = ("not yet: keeping chosen layers float needs the converter's QuantizationDebugger deny lists "
                      "(denylisted_nodes), which this backend does not drive yet; quant=auto runs on onnxruntime "
                      "and pytorch")
    _NO_BERT_TWIN = ("the TFLite path carries the trained weights through a Keras twin, and there is no Keras "
                     "twin of transformers' BertModel yet (an honest full-integer BERT also needs int8-safe "
                     "attention masking); run the transformer on pytorch or onnxruntime")
    no_scheme_reasons = {"int4_weight_only": (
        "the TFLite converter's options used here (tensorflow 2.21) write int8, fp16 or float weights; LiteRT's "
        "block-wise int4 weights come from the separate AI Edge Quantizer (now litert-quantizer), which is not "
        "in the lock; run int4 on onnxruntime or pytorch")}
    family_unsupported = {"transformer": dict.fromkeys(("fp32", "fp16", "dynamic", "static", "qat"), _NO_BERT_TWIN)}

    def unsupported_reason(self, cfg) -> Optional[str]:
        reason = super().unsupported_reason(cfg)
        if reason:
            return reason
        missing = [pip for mod, pip in REQUIRED.items() if importlib.util.find_spec(mod) is None]
        if missing:
            return (f"backend=tflite needs {', '.join(missing)}: install the extra with "
                    "`pip install -c requirements/lock.txt -e '.[tflite]'` (make setup does)")
        from bsb_hydra.backends.keras_twins import TWINS

        if cfg.model.name not in TWINS:
            return (f"model={cfg.model.name} has no Keras twin for the TFLite converter "
                    f"(twins exist for {', '.join(sorted(TWINS))})")
        q = cfg.quant
        if q.scheme.value == "static" and q.method.value != "minmax":
            return (f"quant.method={q.method.value}: the TFLite converter calibrates with min/max over the "
                    "representative dataset only; use quant.method=minmax on tflite")
        if cfg.model.family == "recurrent" and q.scheme.value == "qat":
            return ("model=lstm, quant=qat on tflite: tensorflow-model-optimization's QAT has no LSTM "
                    "support (quantize_model rejects the layer)")
        if cfg.backend.int8_io and q.scheme.value not in ("static", "qat"):
            return (f"backend.int8_io=true needs a full-integer scheme (static or qat), not "
                    f"quant={q.scheme.value}")
        return None

    def runner_settings(self, cfg, engine: str) -> Dict[str, Any]:
        return {"xnnpack": cfg.backend.xnnpack}

    def __init__(self) -> None:
        self._built: Dict[str, Artifact] = {}

    def _convert(self, ctx: BuildContext, schemes: List[str], outs: List[Path]) -> None:
        """Run ``tflite_convert`` in its own process (TensorFlow and tf_keras never enter this one)
        for one or more schemes of the same twin; the artifacts wait in ``self._built``."""
        import torch

        from bsb_hydra.train import plain_dict

        cfg = ctx.cfg
        work = ctx.workdir / "tflite_convert"
        work.mkdir(parents=True, exist_ok=True)
        weights = work / "torch_weights.npz"
        np.savez(weights, **{k: v.detach().cpu().numpy() for k, v in ctx.model.state_dict().items()})
        req: Dict[str, Any] = {
            "model": cfg.model.name, "model_cfg": plain_dict(cfg.model), "input_shape": list(ctx.example.shape[1:]),
            "num_classes": int(ctx.data.num_classes), "weights": str(weights), "quant": plain_dict(cfg.quant),
            "int8_io": bool(cfg.backend.int8_io), "seed": cfg.seed, "threads": torch.get_num_threads(),
            "outputs": [{"scheme": s, "out": str(o), "info_out": str(work / f"{s}_info.json")}
                        for s, o in zip(schemes, outs)],
        }
        if ctx.calibration is not None:
            np.save(work / "calibration.npy", ctx.calibration)
            req["calibration"] = str(work / "calibration.npy")
        if "qat" in schemes:
            from bsb_hydra.train import training_subset

            x, y = training_subset(ctx.data, cfg.quant.limit_samples, cfg.seed)
            np.save(work / "train_x.npy", x)
            np.save(work / "train_y.npy", y)
            req.update({"train_x": str(work / "train_x.npy"), "train_y": str(work / "train_y.npy")})
        req_path = work / "request.json"
        req_path.write_text(json.dumps(req))
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="-1",  # CPU only, no CUDA probing
                   TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        proc = subprocess.run([sys.executable, "-m", "bsb_hydra.backends.tflite_convert", str(req_path)],
                              env=env, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
        (work / "convert.log").write_text(proc.stdout + proc.stderr)
        if proc.stdout.strip():
            print(proc.stdout.rstrip(), flush=True)
        if proc.returncode != 0 or not all(o.is_file() for o in outs):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            last = next((line for line in reversed(tail) if line.strip()), "")
            raise RuntimeError(f"TFLite conversion ({', '.join(schemes)}) exited {proc.returncode}: {last[:300]}\n"
                               + "\n".join(tail))
        for s, o in zip(schemes, outs):
            result = json.loads((work / f"{s}_info.json").read_text())
            # int8 model I/O, else what the data is: float32 images or int64 token ids (fed as int32)
            self._built[s] = Artifact(o, "int8" if result["input_dtype"] == "int8" else ctx.input_dtype,
                                      result.get("info", {}), curves=result.get("curves", {}))

    def _artifact(self, ctx: BuildContext, scheme: str, out: Path) -> Artifact:
        if scheme not in self._built:
            wanted = ctx.cfg.quant.scheme.value
            if scheme == "fp32" and wanted != "fp32":  # the pipeline asks for its scheme next
                self._convert(ctx, ["fp32", wanted], [out, out.with_name(f"{wanted}{self.suffix}")])
            else:
                self._convert(ctx, [scheme], [out])
        art = self._built[scheme]
        if art.path != out:
            raise RuntimeError(f"tflite: {scheme} was converted to {art.path}, asked for {out}")
        return art

    def build_fp32(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "fp32", out)

    def build_fp16(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "fp16", out)

    def build_dynamic(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "dynamic", out)

    def build_static(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "static", out)

    def build_qat(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "qat", out)


class TfliteRunner(Runner):
    """Inputs arrive NCHW like every backend's; the twin takes NHWC, so prepare() transposes (and,
    for int8 model I/O, quantizes with the model's input scale) before the clock starts. run()
    is set_tensor + invoke + get_tensor: feeding, the call and reading the output, as ORT's run."""

    def __init__(self, path, threads, input_dtype, settings) -> None:
        super().__init__(path, threads, input_dtype, settings)
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.AUTO if settings.get("xnnpack", True) else \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.interpreter = Interpreter(model_path=path, num_threads=threads, experimental_op_resolver_type=resolver)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.outp = self.interpreter.get_output_details()[0]
        self.batch = int(self.inp["shape"][0])

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            shape = [batch] + [int(d) for d in self.inp["shape"][1:]]
            self.interpreter.resize_tensor_input(self.inp["index"], shape)
            self.interpreter.allocate_tensors()
            self.inp = self.interpreter.get_input_details()[0]
            self.outp = self.interpreter.get_output_details()[0]
            self.batch = batch

    def prepare(self, x: np.ndarray) -> Any:
        self._resize(x.shape[0])
        if np.issubdtype(x.dtype, np.integer):  # token ids: the model's own index dtype (int32)
            return np.ascontiguousarray(x, dtype=self.inp["dtype"])
        if x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if np.dtype(self.inp["dtype"]) != np.float32:
            scale, zero = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self.inp["dtype"])
        return x

    def run(self, prepared: Any) -> Any:
        self.interpreter.set_tensor(self.inp["index"], prepared)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.outp["index"])

    def to_numpy(self, out: Any) -> np.ndarray:
        if np.dtype(self.outp["dtype"]) != np.float32:
            scale, zero = self.outp["quantization"]
            return (out.astype(np.float32) - zero) * scale
        return np.asarray(out, dtype=np.float32)


RUNTIME_MODULE = "ai_edge_litert.interpreter"  # what the benchmark worker imports before its baseline
RUNNER = TfliteRunner
