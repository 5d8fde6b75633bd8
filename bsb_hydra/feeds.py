"""Model inputs: one array, or several named ones (``Feeds``).

Most models take one tensor (images NCHW, token ids), and a data split is then one array. A model
with several inputs (a BERT export's input_ids, attention_mask and token_type_ids; a torch module
declared with ``model.inputs``) takes a ``Feeds``: named arrays of the same N samples, in the
model's input order. A Feeds indexes like an array (``x[a:b]``, ``x[index_array]``, ``len(x)``), so
calibration subsets, chunks and latency inputs are taken the same way for both.

The benchmark worker gets inputs as files: ``save_inputs`` writes one ``.npy`` per input (the
worker memory-maps them) and returns the spec ``load_inputs`` reads back."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, one sample's shape (no batch; None for a dim the model leaves
    dynamic), its dtype and, for token ids, the size of the table they index (when known)."""
    name: str
    shape: Tuple[int, ...]
    dtype: str
    vocab: Optional[int] = None

    def describe(self) -> str:
        return f"{self.name!r} {self.dtype}[{', '.join(map(str, ('N',) + tuple(self.shape)))}]"


class Feeds:
    """Several named inputs of the same N samples, in the model's input order."""

    def __init__(self, arrays: Dict[str, Any]) -> None:
        if not arrays:
            raise ValueError("Feeds needs at least one input")
        lengths = {k: len(v) for k, v in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"inputs of different sample counts: {lengths}")
        self.arrays = dict(arrays)

    @property
    def names(self) -> List[str]:
        return list(self.arrays)

    def specs(self) -> List[InputSpec]:
        return [InputSpec(k, tuple(int(d) for d in v.shape[1:]), str(np.dtype(v.dtype))) for k, v in self.arrays.items()]

    @property
    def shape(self) -> Tuple[int, ...]:
        """The first input's shape (what a single-input view of the data reads)."""
        return tuple(next(iter(self.arrays.values())).shape)

    @property
    def dtype(self):
        return next(iter(self.arrays.values())).dtype

    @property
    def nbytes(self) -> int:
        return int(sum(getattr(v, "nbytes", 0) for v in self.arrays.values()))

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, idx) -> "Feeds":
        if isinstance(idx, (int, np.integer)):
            idx = slice(int(idx), int(idx) + 1 if idx != -1 else None)
        return Feeds({k: v[idx] for k, v in self.arrays.items()})

    def subset(self, idx) -> "Feeds":
        from bsb_hydra.data.transforms import take

        return Feeds({k: take(v, idx) for k, v in self.arrays.items()})

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def items(self):
        return self.arrays.items()

    def values(self):
        return self.arrays.values()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"a model with several inputs ({', '.join(self.names)}) takes named arrays, not one array")

    def __repr__(self) -> str:
        return f"Feeds({', '.join(s.describe() for s in self.specs())})"


Inputs = Union[np.ndarray, Feeds]


def is_feeds(x) -> bool:
    return isinstance(x, Feeds)


def specs_of(x, default_name: str = "input") -> List[InputSpec]:
    """The inputs a split feeds, each with one sample's shape and dtype."""
    if isinstance(x, Feeds):
        return x.specs()
    return [InputSpec(default_name, tuple(int(d) for d in x.shape[1:]), str(np.dtype(x.dtype)))]


def describe(x) -> str:
    """input_shape tag: '3x224x224' for one input, 'input_ids:128,attention_mask:128' for several."""
    if isinstance(x, Feeds):
        return ",".join(f"{s.name}:{'x'.join(map(str, s.shape))}" for s in x.specs())
    return "x".join(map(str, x.shape[1:]))


def resize(x, n: int):
    """``n`` samples: the first ones, repeated when there are fewer (latency inputs of batch n)."""
    if isinstance(x, Feeds):
        return Feeds({k: np.resize(np.asarray(v), (n,) + tuple(v.shape[1:])) for k, v in x.items()})
    return np.resize(x, (n,) + x.shape[1:])


def concat(parts: List[Any]):
    if parts and isinstance(parts[0], Feeds):
        return Feeds({k: np.concatenate([p.arrays[k] for p in parts]) for k in parts[0].names})
    return np.concatenate(parts)


def save_inputs(stem: Path, x) -> Dict[str, Any]:
    """Write a split for the worker: ``stem.npy``, or ``stem.<i>.npy`` per input of a Feeds (a fitted
    image split chunk by chunk). Returns the spec for ``load_inputs``."""
    from bsb_hydra.data.transforms import save_array

    if isinstance(x, Feeds):
        files = {}
        for i, (name, a) in enumerate(x.items()):
            path = stem.with_name(f"{stem.name}.{i}.npy")
            save_array(path, a)
            files[name] = str(path)
        return {"kind": "feeds", "files": files}
    path = stem.with_name(stem.name + ".npy")
    save_array(path, x)
    return {"kind": "array", "file": str(path)}


def load_inputs(spec: Dict[str, Any], mmap: bool = False):
    mode = "r" if mmap else None
    if spec["kind"] == "feeds":
        return Feeds({name: np.load(p, mmap_mode=mode) for name, p in spec["files"].items()})
    return np.load(spec["file"], mmap_mode=mode)


def input_files(spec: Dict[str, Any]) -> List[Path]:
    return [Path(p) for p in spec["files"].values()] if spec["kind"] == "feeds" else [Path(spec["file"])]


def materialize(x):
    """Plain in-memory arrays (a memory-mapped slice read)."""
    if isinstance(x, Feeds):
        return Feeds({k: np.ascontiguousarray(v) for k, v in x.items()})
    return np.ascontiguousarray(x)


def to_torch_args(x) -> tuple:
    """The positional arguments of a torch module's forward: one tensor, or one per input in order."""
    import torch

    if isinstance(x, Feeds):
        return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in x.values())
    return (torch.from_numpy(np.ascontiguousarray(x)),)


def flatten_outputs(out) -> List[Any]:
    """A module's outputs in order: a tensor, a tuple/list of them, a dict's values (ONNX export order),
    an object with ``to_tuple`` (transformers' ModelOutput), nested."""
    if hasattr(out, "to_tuple") and not hasattr(out, "shape"):
        out = out.to_tuple()
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return [out]


def torch_outputs(module, x) -> List[np.ndarray]:
    """Run a torch module on inputs ``x`` (inference mode); its outputs as numpy arrays."""
    import torch

    with torch.inference_mode():
        out = module(*to_torch_args(x))
    return [np.asarray(t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy())
            for t in flatten_outputs(out)]
