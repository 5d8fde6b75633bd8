"""A user's .tflite file (``model=tflite model.path=FILE.tflite [model.reference=FLOAT.tflite]``),
measured with the weights it holds (nothing is trained).

What the file is decides the cells (read from its tensors: ``precision_of``):
- a float file is the fp32 model: on tflite the fp32 cell measures it as it is, and fp16, dynamic and
  static come from it through ai-edge-quantizer (bsb_hydra/backends/tflite/litert_convert.py; static
  calibrated on ``data=``'s training samples); on onnxruntime, tf2onnx's conversion of the file is the
  fp32 model, quantized by ONNX Runtime's own schemes, as model=onnx's.
- an already-quantized file (full-integer int8 -> quant=static, dynamic-range -> quant=dynamic,
  float16 weights -> quant=fp16) is measured as it is under that scheme, against
  ``model.reference=FLOAT.tflite`` (its fp32 cell) when given. Without a reference there is nothing
  to compare with: its cell logs size, latency, memory and the task's quality against the labels,
  and no ratio, speedup or fidelity (tag fp32_reference=none); its fp32 cell ends unsupported. The
  other schemes end unsupported (the file is quantized already). On onnxruntime a full-integer file
  runs as tf2onnx's QDQ conversion of it (the same scales and zero points; int8 model I/O wrapped in
  QuantizeLinear / DequantizeLinear so that the data stays float).
- on pytorch: unsupported, there is no torch module.

Inputs, outputs, shapes and dtypes come from the file. An image input the file takes NHWC (TFLite's
layout) is fed NCHW like every other model's: the ONNX conversion has the transpose inside
(``inputs_as_nchw``), the tflite runner transposes before the clock. TensorFlow never enters the sweep
process: the conversion to ONNX runs in the converter process (bsb_hydra/backends/tflite/keras_convert.py);
this module reads the file with the LiteRT interpreter only."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Tuple

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, InputError
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS

# What an already-quantized file is measured as, by its precision.
SCHEME_OF = {"int8": "static", "dynamic": "dynamic", "fp16": "fp16"}
PRECISION_TEXT = {"float": "float32", "int8": "full-integer int8", "dynamic": "dynamic-range int8 weights",
                  "fp16": "float16 weights", "int16x8": "int16 activations with int8 weights"}


@dataclass
class TfliteModelConfig(ModelConfig):
    name: str = "tflite"
    path: str = MISSING  # the .tflite file (float, or already quantized)
    # A quantized model.path's float model (a float .tflite of the same network): its fp32 cell.
    reference: Optional[str] = None
    family: ClassVar[str] = "tflite_file"
    task: ClassVar[Optional[str]] = None  # what the outputs mean is inferred (task=auto) or given
    source_kind: ClassVar[str] = "tflite"
    torch_module: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.checkpoint:
            raise ConfigError(f"model.checkpoint={self.checkpoint!r} does not apply to model=tflite: the file at "
                              "model.path holds the weights")

    @classmethod
    def label_of(cls, cfg) -> str:
        return Path(str(cfg.path)).stem

    def needs_training(self, labelled: bool) -> bool:
        return False

    # -- what the file is
    def facts(self) -> "FileFacts":
        return file_facts(str(self.path), "model.path")

    def float_file(self) -> Optional[str]:
        """The float .tflite of this model: model.path if it is float, else model.reference (None without)."""
        if self.facts().precision == "float":
            if self.reference:
                raise InputError(f"model.reference={self.reference!r} is for a quantized model.path; "
                                 f"model.path={str(self.path)!r} is float32 (it is its own fp32 cell): drop "
                                 "model.reference")
            return str(self.path)
        if not self.reference:
            return None
        ref = file_facts(str(self.reference), "model.reference")
        if ref.precision != "float":
            raise InputError(f"model.reference={self.reference!r} is {PRECISION_TEXT[ref.precision]}, not float32: "
                             "give the float .tflite the quantized model.path was made from")
        mine = self.facts()
        if [(s, d) for _, s, d, _ in ref.inputs] != [(s, d if d == "float32" else "float32") for _, s, d, _ in
                                                     mine.inputs] or len(ref.outputs) != len(mine.outputs):
            raise InputError(f"model.reference={self.reference!r} takes {ref.describe()}; model.path="
                             f"{str(self.path)!r} takes {mine.describe()}: not the same network")
        return str(self.reference)

    def scheme_reason(self, backend: str, scheme: str) -> Optional[str]:
        f = self.facts()
        if f.precision == "float":
            return None
        label = f"model.path={Path(str(self.path)).name} is {PRECISION_TEXT[f.precision]}"
        own = SCHEME_OF.get(f.precision)
        if own is None:
            return f"{label}: none of quant=fp32,fp16,dynamic,static describes it, so it is not measured"
        if scheme == "fp32":
            return None if self.float_file() else (
                f"{label}: there is no float model to measure; give model.reference=FLOAT.tflite (the float model "
                f"it was made from) for the fp32 cell, and its quant={own} cell is compared with it")
        if scheme != own:
            return (f"{label}, already quantized: it is measured as it is under quant={own}"
                    + (", against model.reference under quant=fp32" if self.reference else "")
                    + f"; quant={scheme} would quantize it again (give the float file as model.path for that)")
        if backend not in ("tflite", "onnxruntime"):  # given_artifact has no file for it: it would quantize anew
            return (f"{label}, already quantized: it is measured as it is on backend=tflite (a full-integer file "
                    f"also on onnxruntime, as tf2onnx's QDQ conversion); backend={backend} measures a float "
                    ".tflite file's conversion and quantizes it itself")
        if backend == "onnxruntime" and own != "static":
            return (f"{label}: tf2onnx turns its {'int8' if own == 'dynamic' else 'float16'} weights into "
                    "DequantizeLinear/Cast nodes ahead of float kernels, which is not ONNX Runtime's "
                    f"quant={own}; the file runs as it is on tflite")
        return None

    def given_artifact(self, backend: str, scheme: str) -> Optional[Tuple[Path, Dict[str, str]]]:
        """The file this cell measures as it is (and facts about it), or None: the backend builds it."""
        f = self.facts()
        if backend == "tflite":
            if scheme == "fp32":
                return Path(self.float_file()), {"converter": "as given (the float file)", "precision": "float32"}
            if f.precision != "float" and scheme == SCHEME_OF.get(f.precision):
                return Path(str(self.path)).expanduser(), {"converter": "as given (model.path)",
                                                           "precision": PRECISION_TEXT[f.precision]}
        if backend == "onnxruntime" and f.precision == "int8" and scheme == "static":
            path = onnx_export(str(self.path))
            return path, {"converter": "tf2onnx of model.path (its own scales and zero points, as QDQ)",
                          "precision": PRECISION_TEXT[f.precision]}
        return None

    def has_fp32_reference(self) -> bool:
        return self.float_file() is not None

    # -- what the sweep process reads
    def probe_file(self) -> str:
        """The ONNX conversion the sweep process runs (probe, shapes, costs): the float model's, else the
        quantized file's (QDQ)."""
        return str(onnx_export(self.float_file() or str(self.path)))

    def fixed_input_shape(self):
        from bsb_hydra.models.onnx import signature

        sig = signature(self.probe_file(), None)
        return sig.shape if len(sig.inputs) == 1 else None

    def input_specs(self):
        from bsb_hydra.models.onnx import signature

        return signature(self.probe_file(), None).inputs

    def source_ref(self) -> str:
        from bsb_hydra.train import sha256_file

        ref = f"; reference {self.reference} sha256 {sha256_file(Path(self.reference).expanduser())}" \
            if self.reference else ""
        return f"{self.path} ({PRECISION_TEXT[self.facts().precision]}) sha256 {self.facts().sha256}{ref}"


@dataclass
class FileFacts:
    path: str
    sha256: str
    precision: str  # float | fp16 | dynamic | int8 | int16x8
    inputs: List[Tuple[str, Tuple[int, ...], str, Tuple[float, int]]]  # name, per-sample shape, dtype, (scale, zp)
    outputs: List[Tuple[str, Tuple[int, ...], str, Tuple[float, int]]]
    ops: Dict[str, int]

    def describe(self) -> str:
        return ", ".join(f"{n} {d}{list(s)}" for n, s, d, _ in self.inputs)


def existing_tflite(path: str, key: str) -> Path:
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise InputError(f"{key}={str(path)!r} is a folder: give a .tflite file (a SavedModel folder is model=keras's)")
    if not p.is_file():
        raise InputError(f"{key}={str(path)!r}: no such file")
    with open(p, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":  # a TFLite flatbuffer's file identifier
        raise InputError(f"{key}={str(path)!r} is not a TFLite model (no TFL3 identifier in its header): give a .tflite "
                         "file (an .onnx file is model=onnx's, a .keras/.h5 file or a SavedModel folder model=keras's)")
    return p


def file_facts(path: str, key: str) -> FileFacts:
    p = existing_tflite(path, key)
    st = p.stat()
    return _facts(str(p.resolve()), st.st_size, st.st_mtime_ns, key)


@lru_cache(maxsize=16)
def _facts(path: str, size: int, mtime_ns: int, key: str) -> FileFacts:
    """The file read by the LiteRT interpreter (no delegate: every op as the file holds it)."""
    from collections import Counter

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from bsb_hydra.train import sha256_file

    try:
        it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise InputError(f"{key}={path!r}: LiteRT cannot read it ({type(e).__name__}: {first})") from None
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    dtype = lambda i: np.dtype(tensors[i]["dtype"]).name if i in tensors else ""  # noqa: E731
    compute = [o for o in ops if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE")]
    acts = {dtype(i) for o in compute for i in o["outputs"]}
    kinds = {np.dtype(t["dtype"]).name for t in tensors.values()}
    if acts & {"int8", "uint8"}:
        precision = "int8"
    elif "int16" in acts:
        precision = "int16x8"
    elif kinds & {"int8", "uint8"}:
        precision = "dynamic"
    elif "float16" in kinds:
        precision = "fp16"
    else:
        precision = "float"

    def io(details):
        return [(d["name"], tuple(int(v) for v in d["shape"][1:]), np.dtype(d["dtype"]).name,
                 (float(d["quantization"][0]), int(d["quantization"][1]))) for d in details]

    return FileFacts(path, sha256_file(Path(path)), precision, io(it.get_input_details()), io(it.get_output_details()),
                     dict(Counter(o["op_name"] for o in ops)))


def nhwc(shape) -> bool:
    """An image input the file takes channels-last (what the tflite runner transposes NCHW data for)."""
    return len(shape) == 3 and int(shape[-1]) in (1, 3) and int(shape[0]) not in (1, 3)


def onnx_export(path: str) -> Path:
    """The .tflite as ONNX (tf2onnx in the converter process; NHWC image inputs NCHW; int8 model I/O
    wrapped to float), written once per file content under the cache (``$BSB_CACHE_DIR/tflite``,
    else ``./.cache/bsb_hydra/tflite``), checked against the LiteRT interpreter's outputs."""
    from bsb_hydra.locks import file_lock
    from bsb_hydra.models.keras import run_converter

    facts = file_facts(path, "model.path")
    cache = Path(os.environ.get("BSB_CACHE_DIR") or Path.cwd() / ".cache" / "bsb_hydra") / "tflite"
    out = cache / f"{facts.sha256[:24]}.onnx"
    if out.is_file():
        return out
    with file_lock(cache / f"{out.name}.lock"):
        if out.is_file():
            return out
        run_converter({"op": "tflite_onnx", "path": facts.path, "out": str(out),
                       "nchw": [n for n, s, _, _ in facts.inputs if nhwc(s)],
                       "quantized": facts.precision != "float"}, cache / f"{out.stem}.work", "ONNX conversion")
    return out


@MODELS.register("tflite", schema=TfliteModelConfig)
def build(cfg, input_shape, num_classes):
    """Not a torch module: the ONNX conversion of the float file is the fp32 model of the sweep process
    (probe, task, onnxruntime); the tflite backend measures the files themselves."""
    from bsb_hydra.train import Fp32Model

    facts = cfg.facts()
    float_file = cfg.float_file()
    digest = facts.sha256 if facts.precision == "float" or float_file is None else \
        f"{facts.sha256[:32]}{file_facts(float_file, 'model.reference').sha256[:32]}"
    path = cfg.probe_file()
    return Fp32Model(None, "file", f"tflite-{digest[:20]}", str(path), digest, onnx_path=str(path))
