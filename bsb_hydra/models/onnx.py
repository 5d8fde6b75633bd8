"""A user's fp32 ONNX model (``model=onnx model.path=FILE.onnx``): measured as it is, through ONNX
Runtime (fp32, fp16, dynamic, static calibrated on the data's training split, int4 weight-only, auto).
Nothing is trained: the file is the fp32 model.

Its input name, shape and dtype come from the file. The batch dimension stays dynamic (the harness
runs batch 1, 8, ...); any other dynamic dimension is fixed by ``model.input_shape`` (per sample,
without the batch), or the cell fails naming it. One input tensor is fed (images NCHW or token ids);
the first output is read as the class logits. PyTorch and TFLite cells end unsupported: there is no
torch module to run or convert."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, List, Optional, Tuple

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, InputError, positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS

ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 2: "uint8", 3: "int8"}


@dataclass
class OnnxModelConfig(ModelConfig):
    name: str = "onnx"
    path: str = MISSING
    # Per-sample input shape (without the batch) fixing the file's dynamic dimensions, e.g. [3, 224, 224];
    # null = the file's own, which must then be static apart from the batch.
    input_shape: Optional[List[int]] = None
    family: ClassVar[str] = "onnx_file"
    source_kind: ClassVar[str] = "onnx"
    torch_module: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.checkpoint:
            raise ConfigError(f"model.checkpoint={self.checkpoint!r} does not apply to model=onnx: the file at "
                              "model.path holds the weights")
        for i, d in enumerate(self.input_shape or []):
            positive(f"model.input_shape[{i}]", d)

    @classmethod
    def label_of(cls, cfg) -> str:
        return Path(str(cfg.path)).stem

    def needs_training(self, labelled: bool) -> bool:
        return False

    def fixed_input_shape(self):
        return signature(self.path, self.input_shape).shape

    def source_ref(self) -> str:
        from bsb_hydra.train import sha256_file

        return f"{self.path} sha256 {sha256_file(existing(self.path, 'model.path'))}"


def existing(path: str, key: str) -> Path:
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise InputError(f"{key}={str(path)!r}: no such file")
    return p


@dataclass
class Signature:
    input_name: str
    shape: Tuple[int, ...]  # per sample, dynamic dims fixed
    dtype: str
    classes: Optional[int]  # the first output's last dimension, when static


def load(path: str):
    import onnx

    p = existing(path, "model.path")
    try:
        return onnx.load(str(p))
    except Exception as e:  # a protobuf DecodeError, a truncated file
        raise InputError(f"model.path={str(path)!r} is not a readable ONNX model ({type(e).__name__}: "
                         f"{str(e).strip()[:200] or 'unparseable'})") from None


def _inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims(value_info) -> List[object]:
    """Each dimension's size, or its name (a str) when it is dynamic."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def signature(path: str, input_shape: Optional[List[int]]) -> Signature:
    model = load(path)
    inputs = _inputs(model)
    if len(inputs) != 1:
        raise InputError(f"model.path={str(path)!r} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "the harness feeds one input tensor (images or token ids)")
    inp = inputs[0]
    dtype = ONNX_DTYPES.get(inp.type.tensor_type.elem_type)
    if dtype is None:
        raise InputError(f"model.path={str(path)!r}: input {inp.name!r} has ONNX element type "
                         f"{inp.type.tensor_type.elem_type}; supported: {', '.join(sorted(set(ONNX_DTYPES.values())))}")
    dims = _dims(inp)
    if not dims:
        raise InputError(f"model.path={str(path)!r}: input {inp.name!r} has no shape")
    per_sample = dims[1:]
    if input_shape is not None:
        if len(input_shape) != len(per_sample) or any(isinstance(d, int) and d and d != s
                                                      for d, s in zip(per_sample, input_shape)):
            raise InputError(f"model.input_shape={list(input_shape)} does not fit input {inp.name!r} of "
                             f"model.path={str(path)!r}, whose dims are {dims} (batch first)")
        shape = tuple(int(s) for s in input_shape)
    else:
        dynamic = [d for d in per_sample if not isinstance(d, int) or d <= 0]
        if dynamic:
            raise InputError(f"model.path={str(path)!r}: input {inp.name!r} has dynamic dims {dims} ({', '.join(map(str, dynamic))} "
                             f"besides the batch): give model.input_shape=[...] per sample, e.g. "
                             f"{[d if isinstance(d, int) and d > 0 else 224 for d in per_sample]}")
        shape = tuple(int(d) for d in per_sample)
    out = model.graph.output[0]
    out_dims = _dims(out)
    classes = out_dims[-1] if out_dims and isinstance(out_dims[-1], int) and out_dims[-1] > 0 else None
    return Signature(inp.name, shape, dtype, classes)


@MODELS.register("onnx", schema=OnnxModelConfig)
def build(cfg, input_shape, num_classes):
    """Not a torch module: the file itself is the fp32 model (train.py: Fp32Model with onnx_path)."""
    from bsb_hydra.train import Fp32Model, sha256_file

    path = existing(cfg.path, "model.path")
    sig = signature(cfg.path, cfg.input_shape)
    if num_classes is not None and sig.classes is not None and sig.classes != num_classes:
        raise InputError(f"model.path={str(cfg.path)!r} outputs {sig.classes} classes; the data has {num_classes}: "
                         "give data whose labels are 0..{} or a model with {} outputs".format(sig.classes - 1,
                                                                                               num_classes))
    digest = sha256_file(path)
    return Fp32Model(None, "file", "onnx-" + digest[:20], str(path), digest, onnx_path=str(path))
