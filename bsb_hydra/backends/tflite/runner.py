"""backend=tflite's Runner: what the benchmark worker runs (LiteRT's interpreter, ai_edge_litert
only, XNNPACK with the device's thread count). Imports numpy only at its top level."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from bsb_hydra.backends.base import Runner


class _Chunks(list):
    """Prepared inputs of a fixed-batch model for a batch it has no file for (evaluation): run() feeds
    them one by one and trims the last one's padding."""
    keep = 0


class TfliteRunner(Runner):
    """Inputs arrive NCHW like every backend's; a twin takes NHWC, so prepare() transposes (and,
    for int8 model I/O, quantizes with the model's input scale) before the clock starts. run()
    is set_tensor + invoke + get_tensor: feeding, the call and reading the output, as ORT's run.

    A litert-torch model has a fixed batch and one file per batch size (``PATH.batches.json``, from
    litert_convert): prepare() switches to the file of the input's batch; a batch with no file (the
    evaluation's) is fed in chunks of the largest one, the last chunk zero-padded."""

    runtime_module = "ai_edge_litert.interpreter"
    libraries = ("ai-edge-litert", "tensorflow", "tf-keras", "tensorflow-model-optimization", "litert-torch",
                 "ai-edge-quantizer", "tf2onnx")

    def __init__(self, path, threads, input_dtype, settings) -> None:
        super().__init__(path, threads, input_dtype, settings)
        manifest = Path(str(path) + ".batches.json")
        self.files = ({int(b): str(Path(path).parent / name) for b, name in json.loads(manifest.read_text()).items()}
                      if manifest.is_file() else None)
        self._interpreters: Dict[int, Any] = {}
        self._use(self._open(path, 1 if self.files else None))

    def _open(self, path, batch):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.AUTO if self.settings.get("xnnpack", True) else \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        it = Interpreter(model_path=str(path), num_threads=self.threads, experimental_op_resolver_type=resolver,
                         experimental_default_delegate_latest_features=bool(self.settings.get("xnnpack_latest_features")))
        it.allocate_tensors()
        if batch is not None:
            self._interpreters[batch] = it
        return it

    def _use(self, interpreter) -> None:
        self.interpreter = interpreter
        self.inps, self.outps, self.out_names = _ordered_io(interpreter)
        self.inp, self.outp = self.inps[0], self.outps[0]
        self.batch = int(self.inp["shape"][0])
        # NCHW inputs reach a model that takes NHWC (a twin) transposed; a litert-torch model takes NCHW
        self.channels_last = len(self.inp["shape"]) == 4 and int(self.inp["shape"][-1]) in (1, 3) \
            and int(self.inp["shape"][1]) not in (1, 3)

    def _resize(self, batch: int) -> None:
        if self.files is not None:
            if batch in self.files:
                self._use(self._interpreters.get(batch) or self._open(self.files[batch], batch))
            return
        if batch != self.batch:
            for d in self.inps:
                self.interpreter.resize_tensor_input(d["index"], [batch] + [int(v) for v in d["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._use(self.interpreter)

    def prepare(self, x) -> Any:
        from bsb_hydra.feeds import Feeds

        parts = list(x.values()) if isinstance(x, Feeds) else [x]
        if len(parts) != len(self.inps):
            raise ValueError(f"the .tflite model takes {len(self.inps)} inputs, {len(parts)} were given")
        n = len(parts[0])
        if self.files is not None and n not in self.files:  # evaluation: chunks of the largest batch
            b = max(self.files)
            self._resize(b)
            chunks = _Chunks()
            for i in range(0, n, b):
                pad = b - min(b, n - i)
                chunks.append([self._prepare(d, np.concatenate([p[i:i + b], np.zeros((pad, *p.shape[1:]), p.dtype)])
                                             if pad else p[i:i + b]) for d, p in zip(self.inps, parts)])
            chunks.keep = n
            return chunks
        self._resize(n)
        return [self._prepare(d, p) for d, p in zip(self.inps, parts)]

    def _prepare(self, detail, x: np.ndarray) -> Any:
        if np.issubdtype(x.dtype, np.integer):  # token ids: the model's own index dtype (int32)
            return np.ascontiguousarray(x, dtype=detail["dtype"])
        if x.ndim == 4 and self.channels_last:
            x = x.transpose(0, 2, 3, 1)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if np.dtype(detail["dtype"]) != np.float32:
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])
        return x

    def run(self, prepared: Any) -> Any:
        if type(prepared) is _Chunks:
            runs = [self.run(part) for part in prepared]
            return [np.concatenate([r[k] for r in runs])[:prepared.keep] for k in range(len(runs[0]))]
        for d, a in zip(self.inps, prepared):
            self.interpreter.set_tensor(d["index"], a)
        try:
            self.interpreter.invoke()
        except RuntimeError as e:
            if "xnnpack" not in str(e).lower():
                raise
            # e.g. the unrolled full-integer LSTM at seq_len 64: the delegate refuses to prepare it
            raise RuntimeError(f"{str(e).strip().rstrip('.')}. XNNPACK could not run this model; backend.xnnpack=false "
                               "measures it, and its fp32 reference, with TFLite's builtin kernels") from e
        return [self.interpreter.get_tensor(d["index"]) for d in self.outps]

    def profile(self, prepared: Any, runs: int) -> Dict[str, Any]:
        """Which nodes XNNPACK took (no per-op timer in TFLite's Python API: counts, not times)."""
        from bsb_hydra.backends.tflite.profile import tflite_summary

        return tflite_summary(self.interpreter._get_ops_details())

    def outputs(self, out: Any) -> List[np.ndarray]:
        """Each output, int8 ones dequantized with their scale; a twin's NHWC image output as NCHW."""
        arrays = []
        for d, a in zip(self.outps, out):
            if np.dtype(d["dtype"]) in (np.int8, np.uint8, np.int16) and d["quantization"][0]:
                scale, zero = d["quantization"]
                a = (a.astype(np.float32) - zero) * scale
            if a.ndim == 4 and self.channels_last:
                a = a.transpose(0, 3, 1, 2)
            arrays.append(np.asarray(a))
        return arrays

    def output_names(self) -> List[str]:
        return list(self.out_names)


def _ordered_io(interpreter):
    """Input and output details in the model's own order: a signature's argument and output names
    (args_0, args_1 / output_0, output_1, numbered in the order of the source's forward), else the
    interpreter's order. Returns (inputs, outputs, output names)."""
    import re

    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    try:
        sigs = interpreter._get_full_signature_list() or {}
    except Exception:
        sigs = {}
    sig = next(iter(sigs.values()), None) if len(sigs) == 1 else None
    names = {d["index"]: d["name"] for d in outs}

    def natural(name: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    if sig:
        by_index_in = {d["index"]: d for d in ins}
        by_index_out = {d["index"]: d for d in outs}
        sig_in = sorted(sig.get("inputs", {}).items(), key=lambda kv: natural(kv[0]))
        sig_out = sorted(sig.get("outputs", {}).items(), key=lambda kv: natural(kv[0]))
        if len(sig_in) == len(ins) and all(i in by_index_in for _, i in sig_in):
            ins = [by_index_in[i] for _, i in sig_in]
        if len(sig_out) == len(outs) and all(i in by_index_out for _, i in sig_out):
            outs = [by_index_out[i] for _, i in sig_out]
            names = {i: n for n, i in sig_out}
    return ins, outs, [names[d["index"]] for d in outs]
