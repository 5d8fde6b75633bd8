"""Embedding: one output of vectors [N, D] (a sentence encoder's pooled output, an image encoder's
features). There is no label to score against: what matters is whether the quantized model puts
each sample where fp32 put it, and keeps each sample's neighbours.

- cosine similarity to the fp32 vector, per sample: mean, 5th percentile, minimum;
- nearest-neighbour agreement: for each sample, the overlap of its ``task.neighbours`` nearest
  neighbours (cosine, itself excluded) among the test samples under the quantized model and under
  fp32 (1.0 = the same neighbours). The vectors are kept (N x D floats: 1.5 MB for 1000 x 384) and
  compared in blocks of rows, so memory grows with N x block, not N x N."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.task import TaskConfig
from bsb_hydra.tasks import TASKS
from bsb_hydra.tasks.base import Score, Task, TaskError, TaskScorer, cosine_rows


@dataclass
class EmbeddingTaskConfig(TaskConfig):
    name: str = "embedding"
    # Neighbours compared per sample (nearest-neighbour agreement).
    neighbours: int = 10

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ConfigError(f"task.neighbours={self.neighbours} is not allowed: give 1 or more")


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def neighbours(v: np.ndarray, k: int, block: int = 512) -> np.ndarray:
    """The indices of each row's k nearest rows by cosine similarity (itself excluded), [N, k]."""
    u = _unit(v.astype(np.float64))
    n = len(u)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(0, n, block):
        sim = u[i:i + block] @ u.T
        sim[np.arange(len(sim)), np.arange(i, i + len(sim))] = -np.inf  # not itself
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        out[i:i + block] = part
    return out


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per sample, the share of its k nearest neighbours under ``a`` that are also among them under ``b``."""
    na, nb = neighbours(a, k), neighbours(b, k)
    return np.array([len(set(x) & set(y)) / k for x, y in zip(na.tolist(), nb.tolist())])


class EmbeddingScorer(TaskScorer):
    def __init__(self, task: "Embedding") -> None:
        super().__init__([o.name for o in task.probe.outputs], task.index)
        self.k = task.index
        self.neighbours = task.cfg.neighbours
        self.cell: List[np.ndarray] = []
        self.ref: List[np.ndarray] = []
        self.cos: List[np.ndarray] = []

    def add(self, cell, ref, labels) -> None:
        a, b = cell[self.k], ref[self.k]
        self.cos.append(cosine_rows(a, b))
        self.cell.append(np.asarray(a, np.float32).reshape(len(a), -1))
        self.ref.append(np.asarray(b, np.float32).reshape(len(b), -1))

    def finish(self) -> Score:
        cos = np.concatenate(self.cos)
        m = {"embedding_cosine_mean": float(cos.mean()), "embedding_cosine_p5": float(np.percentile(cos, 5)),
             "embedding_cosine_min": float(cos.min())}
        a, b = np.concatenate(self.cell), np.concatenate(self.ref)
        k = min(self.neighbours, len(a) - 1)
        arrays = {"embedding_cosine.npy": cos.astype(np.float32)}
        if k >= 1:
            overlap = neighbour_overlap(a, b, k)
            m[f"neighbour_agreement_at_{self.neighbours}"] = float(overlap.mean())
            m["neighbour_agreement"] = float(overlap.mean())
            m["neighbours_compared"] = float(k)
            arrays["neighbour_agreement.npy"] = overlap.astype(np.float32)
        return Score(m, arrays=arrays)


@TASKS.register("embedding", schema=EmbeddingTaskConfig)
class Embedding(Task):
    name = "embedding"
    quality = ("", "embedding_cosine_mean")

    def check(self) -> None:
        self.index = self.output_index(lambda o: o.floating and len(o.shape) == 1,
                                       "embedding reads one float vector per sample, [N, D]")
        o = self.probe.outputs[self.index]
        if not o.floating or len(o.shape) != 1:
            raise TaskError(f"task=embedding: output {o.describe()} is not one float vector per sample [N, D]"
                            + ("; token-level outputs [N, L, D] are scored by task=raw (or pool them in the model)"
                               if len(o.shape) == 2 else ""))
        if self.cfg.neighbours >= len(self.ds.x_test):
            raise TaskError(f"task.neighbours={self.cfg.neighbours} needs more than {self.cfg.neighbours} test samples; "
                            f"the test split has {len(self.ds.x_test)}")

    def scorer(self) -> EmbeddingScorer:
        return EmbeddingScorer(self)

    def describe(self) -> str:
        return f"embedding of output {self.probe.outputs[self.index].describe()}"
