"""A model's outputs over the test split, batch by batch, on disk.

The worker writes every output tensor of each evaluation batch to ``DIR/NNNNNN.npz`` (uncompressed,
keys "0", "1", ... in the model's output order) and, at the end, ``DIR/manifest.json`` (the output
names, batch count, sample count, each output's per-sample shape and dtype). The parent reads a cell's
and its fp32 reference's batches in lockstep and reduces them as it goes (bsb_hydra/tasks): a
segmentation model's 21x224x224 logits over 512 samples (2 GB) are never in memory at once.

Each batch is split into files of at most CHUNK_ELEMENTS output elements (at least one sample): a cell
and its reference, with outputs of the same shapes, are split alike, and the parent never holds more
than two such chunks (about 16 MB each) at a time.

Float outputs are stored as float32 (what every runtime's float output converts to exactly; an fp16
output is widened), integer ones in their own dtype (detection labels, masks)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

MANIFEST = "manifest.json"
CHUNK_ELEMENTS = 4 * 2**20  # per file, over all outputs: 16 MB of float32


def samples_per_chunk(arrays: List[np.ndarray]) -> int:
    per_sample = sum(int(np.prod(a.shape[1:])) for a in arrays) or 1
    return max(1, CHUNK_ELEMENTS // per_sample)


def as_stored(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return np.ascontiguousarray(a, dtype=np.float32)
    return np.ascontiguousarray(a)


class OutputWriter:
    """Worker side: one file per evaluation batch, the manifest last (its presence = complete)."""

    def __init__(self, folder) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.npz"):
            old.unlink()
        (self.folder / MANIFEST).unlink(missing_ok=True)
        self.batches = 0
        self.samples = 0
        self.shapes: Optional[List[list]] = None
        self.dtypes: Optional[List[str]] = None

    def write(self, outputs: List[np.ndarray]) -> None:
        arrays = [as_stored(a) for a in outputs]
        if self.shapes is None:
            self.shapes = [list(a.shape[1:]) for a in arrays]
            self.dtypes = [str(a.dtype) for a in arrays]
        n = len(arrays[0]) if arrays and arrays[0].ndim else 0
        step = samples_per_chunk(arrays)
        for i in range(0, max(n, 1), step):
            np.savez(self.folder / f"{self.batches:06d}.npz", **{str(k): a[i:i + step] for k, a in enumerate(arrays)})
            self.batches += 1
        self.samples += n

    def close(self, names: List[str]) -> None:
        tmp = self.folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"names": list(names), "batches": self.batches, "samples": self.samples,
                                   "shapes": self.shapes or [], "dtypes": self.dtypes or []}))
        os.replace(tmp, self.folder / MANIFEST)


class OutputReader:
    """Parent side: the batches of one artifact's outputs, in order."""

    def __init__(self, folder) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{self.folder}: no {MANIFEST} (the worker did not finish writing its outputs)")
        m = json.loads(path.read_text())
        self.names: List[str] = m["names"]
        self.batches: int = m["batches"]
        self.samples: int = m["samples"]
        self.shapes = [tuple(s) for s in m["shapes"]]
        self.dtypes: List[str] = m["dtypes"]

    def batch(self, i: int) -> List[np.ndarray]:
        with np.load(self.folder / f"{i:06d}.npz") as f:
            return [f[str(k)] for k in range(len(f.files))]

    def __iter__(self) -> Iterator[List[np.ndarray]]:
        for i in range(self.batches):
            yield self.batch(i)

    def __len__(self) -> int:
        return self.samples

    def first_output(self) -> np.ndarray:
        """The first output of every sample at once: only for small outputs (class logits)."""
        return np.concatenate([b[0] for b in self]) if self.batches else np.zeros((0,), np.float32)

    def remove(self) -> None:
        for p in self.folder.glob("*.npz"):
            p.unlink()
