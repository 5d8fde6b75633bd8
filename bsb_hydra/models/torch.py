"""A user's own PyTorch model (``model=torch``), run through every backend the built-in models run through.

``model.target=package.module.Builder`` names an importable ``nn.Module`` class or a function returning
one, called with ``model.kwargs`` (Hydra's ``_target_`` instantiation; ``num_classes`` is passed from
the data when the builder takes it and kwargs do not set it). ``model.input_shape`` is one sample's
shape, e.g. [3, 224, 224]; the data is fitted to it. The weights:

- ``model.checkpoint`` a state_dict (``torch.save(model.state_dict(), PATH)``), loaded into the built
  module with ``weights_only=True``;
- ``model.checkpoint`` a whole model file, with no ``model.target`` needed: TorchScript
  (``torch.jit.save``), an ExportedProgram (``torch.export.save``), or a pickled module
  (``torch.save(model)``). Loading any of them runs code from the file (bsb_hydra/untrusted.py), so
  each loads only with ``model.allow_pickle=true``, as does a state_dict whose pickle names callables;
- no checkpoint: trained on the data like the built-in models (train group; cached under a key that
  includes the target's source file, so editing the code retrains).

A model with several inputs lists them in ``model.inputs`` (name, shape, dtype, in the forward's
order); text data feeds them by name (input_ids, attention_mask, token_type_ids), data=random by
dtype. What the outputs mean is the task's business (bsb_hydra/tasks): a model trained here is a
classifier; a checkpoint's outputs are read by task=auto or the task given.

FX graph-mode quantization (pytorch static, qat, auto) needs a traceable ``nn.Module``: a TorchScript
or ExportedProgram file ends unsupported there (and dynamic too when it swaps no module: compiled
code has none), with the reason; every scheme runs on onnxruntime from its ONNX export."""
from __future__ import annotations

import inspect
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional

from bsb_hydra.config.base import ConfigError, InputError, positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS


@dataclass
class TorchModelConfig(ModelConfig):
    name: str = "torch"
    # package.module.Name of an nn.Module class or a function returning one; null with a whole-model checkpoint
    target: Optional[str] = None
    kwargs: Any = None  # a dict: model.kwargs={width:16,depth:2} (untyped, so one override sets it whole)
    # One sample's input shape (without the batch), e.g. [3, 224, 224]; [64] for 64 token ids.
    input_shape: Optional[List[int]] = None
    # A model with several inputs: [{name: input_ids, shape: [128], dtype: int64}, ...] in the order of
    # its forward's arguments (replaces input_shape). dtype: float32 (default), float16, int64, int32, bool.
    inputs: Any = None
    # Trust model.checkpoint to run code while it loads: a pickled module (torch.save(model)) or any
    # pickle naming callables, a TorchScript file, an ExportedProgram (bsb_hydra/untrusted.py).
    allow_pickle: bool = False
    source_kind: ClassVar[str] = "torch"
    task: ClassVar[Optional[str]] = None  # inferred from its outputs (task=auto) unless trained here

    INPUT_DTYPES: ClassVar[tuple] = ("float32", "float16", "int64", "int32", "bool")

    def __post_init__(self) -> None:
        if not self.target and not self.checkpoint:
            raise ConfigError("model=torch needs model.target=package.module.Builder (an nn.Module class or a "
                              "function returning one) or model.checkpoint=FILE holding a whole model")
        if self.inputs is not None:
            if self.input_shape is not None:
                raise ConfigError("model.inputs and model.input_shape both given: model.inputs lists every input "
                                  "with its shape; leave model.input_shape unset")
            self._check_inputs()
            return
        if not self.input_shape:
            raise ConfigError("model=torch needs model.input_shape=[...] (one sample's shape, e.g. [3, 224, 224]) or "
                              "model.inputs=[{name: ..., shape: [...], dtype: ...}, ...] for several inputs")
        for i, d in enumerate(self.input_shape):
            positive(f"model.input_shape[{i}]", d)

    def _check_inputs(self) -> None:
        items = list(self.inputs) if isinstance(self.inputs, (list, tuple)) else None
        if not items:
            raise ConfigError(f"model.inputs={self.inputs!r} is not allowed: give a list of "
                              "{name: ..., shape: [...], dtype: ...}, one per input of the forward, in order")
        names = []
        for i, item in enumerate(items):
            item = dict(item) if hasattr(item, "keys") else None
            if not item or set(item) - {"name", "shape", "dtype"} or "name" not in item or "shape" not in item:
                raise ConfigError(f"model.inputs[{i}] must be {{name: ..., shape: [...], dtype: ...}} (dtype optional, "
                                  "float32 by default)")
            if item.get("dtype", "float32") not in self.INPUT_DTYPES:
                raise ConfigError(f"model.inputs[{i}].dtype={item['dtype']!r} is not allowed: use one of "
                                  f"{', '.join(self.INPUT_DTYPES)}")
            for j, d in enumerate(list(item["shape"])):
                positive(f"model.inputs[{i}].shape[{j}]", d)
            names.append(str(item["name"]))
        if len(set(names)) != len(names):
            raise ConfigError(f"model.inputs names {names} repeat a name: each input needs its own")

    def input_specs(self):
        """model.inputs as specs (None for a one-input model: its shape is input_shape, its dtype the data's)."""
        if self.inputs is None:
            return None
        from bsb_hydra.feeds import InputSpec

        return [InputSpec(str(i["name"]), tuple(int(d) for d in i["shape"]), str(i.get("dtype", "float32")))
                for i in self.inputs]

    def file_kind(self) -> Optional[str]:
        """torchscript | exported_program when model.checkpoint is a whole compiled model, else None."""
        if not self.checkpoint:
            return None
        path = Path(str(self.checkpoint)).expanduser()
        kind = file_kind(path) if path.is_file() else "torch_save"
        return kind if kind != "torch_save" else None

    @classmethod
    def label_of(cls, cfg) -> str:
        target = getattr(cfg, "target", None)
        if target:
            return str(target).rsplit(".", 1)[-1]
        return Path(str(cfg.checkpoint)).stem

    def fixed_input_shape(self):
        if self.inputs is not None:
            return None
        return tuple(int(d) for d in self.input_shape)

    def source_ref(self) -> str:
        from bsb_hydra.train import sha256_file

        parts = []
        if self.target:
            parts.append(f"{self.target}({', '.join(f'{k}={v!r}' for k, v in (self.kwargs or {}).items())})")
        if self.checkpoint:
            parts.append(f"{self.checkpoint} sha256 {sha256_file(existing(self.checkpoint))}")
        return " + ".join(parts)

    def cache_identity(self) -> str:
        """The target's source file: edited code is another model (the cache retrains it)."""
        if not self.target:
            return ""
        from bsb_hydra.train import sha256_file

        builder = resolve(self.target)
        source = inspect.getsourcefile(builder) if callable(builder) else None
        return sha256_file(source) if source else self.target


def existing(path: str) -> Path:
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise InputError(f"model.checkpoint={str(path)!r}: no such file")
    return p


def resolve(target: str):
    """The object a dotted path names, through Hydra's own locator."""
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as e:
        cause = e.__cause__ or e
        raise InputError(f"model.target={target!r} does not resolve to an importable class or function "
                         f"({type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]})") from None


def file_kind(path: Path) -> str:
    """torchscript | exported_program | torch_save (a state_dict or a pickled object), from the archive's entries."""
    try:
        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
    except zipfile.BadZipFile:
        names = []
    if any("/code/__torch__/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
        return "exported_program"
    return "torch_save"


# What a refusal offers besides model.allow_pickle=true: forms that load without running the file.
INSTEAD = "save model.state_dict() and give model.target, or export it to ONNX for model=onnx"


def load_whole(path: Path, allow_pickle: bool):
    """A whole model from a file, or None when the file is weights for model.target. Every form that
    runs code from the file while loading (a TorchScript file, an ExportedProgram, a pickle naming
    callables: bsb_hydra/untrusted.py) is refused unless ``allow_pickle``, before it is opened."""
    import torch

    from bsb_hydra.untrusted import OPT_IN, RUNS_CODE, pickle_refusal, torch_reason

    kind = file_kind(path)
    if kind in RUNS_CODE and not allow_pickle:
        raise InputError(f"model.checkpoint={str(path)!r} {RUNS_CODE[kind]}: {OPT_IN}, or {INSTEAD}")
    try:
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location="cpu").eval()
        if kind == "exported_program":
            return torch.export.load(str(path)).module()
    except Exception as e:
        raise InputError(f"model.checkpoint={str(path)!r} looks like a {kind.replace('_', ' ')} file but does not "
                         f"load ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return None  # plain data: a state_dict for model.target (checked when it is loaded)
    except Exception as e:
        refused = pickle_refusal(path, e)
        if refused is None:
            raise InputError(f"model.checkpoint={str(path)!r} is not a PyTorch file torch.load can read "
                             f"({type(e).__name__}: {torch_reason(e)})") from None
    if not allow_pickle:
        raise InputError(f"model.checkpoint={str(path)!r} is not plain weights: {refused}; {OPT_IN}, or {INSTEAD}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise InputError(f"model.checkpoint={str(path)!r} does not unpickle ({type(e).__name__}: {first})") from None
    if isinstance(obj, Mapping):  # weights for model.target, read again with the same trust (train.read_state_dict)
        return None
    if not isinstance(obj, torch.nn.Module):
        raise InputError(f"model.checkpoint={str(path)!r} holds a {type(obj).__name__}, not an nn.Module")
    return obj.eval()


def instantiate(cfg, num_classes: Optional[int]):
    from hydra.utils import instantiate as hydra_instantiate

    builder = resolve(cfg.target)
    kwargs = dict(cfg.kwargs or {})
    try:
        takes = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        takes = {}
    if num_classes is not None and "num_classes" in takes and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    try:
        module = hydra_instantiate({"_target_": cfg.target, **kwargs}, _convert_="all")
    except Exception as e:
        cause = e.__cause__ or e
        raise InputError(f"model.target={cfg.target!r} with model.kwargs={dict(cfg.kwargs or {})} could not be built "
                         f"({type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]})") from None
    import torch

    if not isinstance(module, torch.nn.Module):
        raise InputError(f"model.target={cfg.target!r} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


@MODELS.register("torch", schema=TorchModelConfig)
def build(cfg, input_shape, num_classes):
    """The module to train or to load a state_dict into; or, for a whole-model checkpoint, the
    finished fp32 model (train.Fp32Model)."""
    if cfg.checkpoint:
        path = existing(cfg.checkpoint)
        whole = load_whole(path, cfg.allow_pickle)
        if whole is not None:
            from bsb_hydra.train import Fp32Model, sha256_file

            digest = sha256_file(path)
            return Fp32Model(whole, "checkpoint", "ckpt-" + digest[:20], str(path), digest)
        if not cfg.target:
            raise InputError(f"model.checkpoint={str(cfg.checkpoint)!r} is a state_dict: give model.target=... "
                             "naming the module its weights belong to")
    return instantiate(cfg, num_classes)
