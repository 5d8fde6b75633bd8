"""A user's fp32 ONNX model (``model=onnx model.path=FILE.onnx``): measured as it is, through ONNX
Runtime (fp32, fp16, dynamic, static calibrated on the data's training split, int4 weight-only, auto).
Nothing is trained: the file is the fp32 model.

Its inputs (names, shapes, dtypes) come from the file; a model with several (a BERT export's
input_ids, attention_mask and token_type_ids) is fed all of them by name (bsb_hydra/feeds.py). The
batch dimension stays dynamic (the harness runs batch 1, 8, ...); any other dynamic dimension is
fixed by ``model.input_shape`` (per sample, without the batch; it applies to every input of that
rank) or, for token inputs, by the text data's ``seq_len``. ``model.tokenizer=DIR`` names the
Hugging Face tokenizer folder the model was exported with: its texts are tokenized by it. What the
outputs mean is the task's business (bsb_hydra/tasks). PyTorch and TFLite cells end unsupported:
there is no torch module to run or convert."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Tuple

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, InputError, positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.feeds import InputSpec
from bsb_hydra.models import MODELS

ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 2: "uint8", 3: "int8"}


@dataclass
class OnnxModelConfig(ModelConfig):
    name: str = "onnx"
    path: str = MISSING  # the .onnx file
    # Per-sample input shape (without the batch) fixing the file's dynamic dimensions, e.g. [3, 224, 224];
    # null = the file's own, which must then be static apart from the batch.
    input_shape: Optional[List[int]] = None
    # The Hugging Face tokenizer folder the model was exported with (texts are tokenized by it:
    # data.tokenizer=hf); null = none (image or feature inputs, or data.tokenizer=minilm).
    tokenizer: Optional[str] = None
    family: ClassVar[str] = "onnx_file"
    task: ClassVar[Optional[str]] = None  # what the outputs mean is inferred (task=auto) or given
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
        sig = signature(self.path, self.input_shape)
        return sig.shape if len(sig.inputs) == 1 else None

    def input_specs(self):
        """Every input the file declares; a dim it leaves dynamic (besides the batch) is None; token
        ids carry the rows of the embedding table they index."""
        import dataclasses

        vocab = vocabulary_sizes(self.path)
        return [dataclasses.replace(s, vocab=vocab.get(s.name)) for s in signature(self.path, self.input_shape).inputs]

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
    inputs: List[InputSpec]  # per sample; a dynamic dim left unfixed is None (several inputs only)
    output_names: List[str]

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.inputs[0].shape

    @property
    def dtype(self) -> str:
        return self.inputs[0].dtype


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
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _input_spec(path, inp, input_shape, several: bool) -> InputSpec:
    dtype = ONNX_DTYPES.get(inp.type.tensor_type.elem_type)
    if dtype is None:
        raise InputError(f"model.path={str(path)!r}: input {inp.name!r} has ONNX element type "
                         f"{inp.type.tensor_type.elem_type}; supported: {', '.join(sorted(set(ONNX_DTYPES.values())))}")
    dims = _dims(inp)
    if not dims:
        raise InputError(f"model.path={str(path)!r}: input {inp.name!r} has no shape")
    per_sample = dims[1:]
    if input_shape is not None and (len(input_shape) == len(per_sample) or not several):
        if len(input_shape) != len(per_sample) or any(isinstance(d, int) and d != s
                                                      for d, s in zip(per_sample, input_shape)):
            raise InputError(f"model.input_shape={list(input_shape)} does not fit input {inp.name!r} of "
                             f"model.path={str(path)!r}, whose dims are {dims} (batch first)")
        return InputSpec(inp.name, tuple(int(s) for s in input_shape), dtype)
    dynamic = [d for d in per_sample if not isinstance(d, int)]
    if dynamic and not several:
        raise InputError(f"model.path={str(path)!r}: input {inp.name!r} has dynamic dims {dims} ({', '.join(map(str, dynamic))} "
                         f"besides the batch): give model.input_shape=[...] per sample, e.g. "
                         f"{[d if isinstance(d, int) else 224 for d in per_sample]}")
    return InputSpec(inp.name, tuple(d if isinstance(d, int) else None for d in per_sample), dtype)


def signature(path: str, input_shape: Optional[List[int]]) -> Signature:
    model = load(path)
    inputs = _inputs(model)
    if not inputs:
        raise InputError(f"model.path={str(path)!r} has no inputs to feed")
    several = len(inputs) > 1
    return Signature([_input_spec(path, i, input_shape, several) for i in inputs], [o.name for o in model.graph.output])


def vocabulary_sizes(path: str) -> Dict[str, int]:
    """Per integer input that indexes an embedding table (a Gather on a constant matrix), the table's
    rows: token ids must stay below it (data=random draws ids within it)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name: i for i in g.initializer}
    feeds = {i.name for i in _inputs(onnx.load(str(path), load_external_data=False))}
    out: Dict[str, int] = {}
    for n in g.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] in feeds and n.input[0] in inits:
            rows = int(inits[n.input[0]].dims[0]) if inits[n.input[0]].dims else 0
            out[n.input[1]] = max(out.get(n.input[1], 0), rows)
    return out


def run_file(path: str, x) -> Tuple[List[str], List]:
    """The file's outputs on inputs ``x`` (one array or a Feeds), through an ONNX Runtime session in
    this process (the fp32 probe): (output names, arrays)."""
    import numpy as np
    import onnxruntime as ort

    from bsb_hydra.backends.onnxruntime.runner import ORT_TYPES
    from bsb_hydra.feeds import Feeds

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins = session.get_inputs()
    arrays = x.arrays if isinstance(x, Feeds) else {ins[0].name: x}
    missing = [i.name for i in ins if i.name not in arrays]
    if missing:
        raise InputError(f"model.path={str(path)!r} takes inputs {', '.join(i.name for i in ins)}; the data feeds "
                         f"{', '.join(arrays)} (missing: {', '.join(missing)})")
    feed = {i.name: np.ascontiguousarray(arrays[i.name], dtype=ORT_TYPES.get(i.type, "float32")) for i in ins}
    out = session.run(None, feed)
    return [o.name for o in session.get_outputs()], [np.asarray(v) for v in out]
@MODELS.register("onnx", schema=OnnxModelConfig)
def build(cfg, input_shape, num_classes):
    """Not a torch module: the file itself is the fp32 model (train.py: Fp32Model with onnx_path).
    What its outputs mean is checked by the task, after a probe run (bsb_hydra/steps.py)."""
    from bsb_hydra.train import Fp32Model, sha256_file

    path = existing(cfg.path, "model.path")
    signature(cfg.path, cfg.input_shape)
    digest = sha256_file(path)
    return Fp32Model(None, "file", "onnx-" + digest[:20], str(path), digest, onnx_path=str(path))
