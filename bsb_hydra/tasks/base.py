"""The scorer interface every task implements, and the fidelity measures every task logs.

A task reads a model's outputs. Before anything is quantized, the fp32 model runs once on a few test
samples (``Probe``); the task then checks that it can read those outputs (``Task.check``: one line
naming the output, its shape and dtype, and what the task expects). After the timing, the cell's
outputs and its fp32 reference's are read batch by batch from disk (bsb_hydra/bench/outputs.py)
and reduced by the task's ``Scorer`` (``update`` per batch, ``result`` once): running sums, per-sample
summaries, confusion matrices; never the whole split's outputs at once.

Every task also logs, per output tensor, its fidelity to fp32 (``Fidelity``): SQNR in dB
(10 log10 of the reference's energy over the error's, pooled over the split), the cosine similarity
per sample (mean and 5th percentile) and the largest absolute error. These need no understanding of
what the output means, so ``task=raw`` logs only them."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

from bsb_hydra.config.base import InputError


class TaskError(InputError):
    """The task cannot read the model's outputs (or the data's labels); the message names both."""


@dataclass
class OutputInfo:
    """One output of the fp32 model, as the probe saw it."""
    name: str
    shape: Tuple[int, ...]  # one sample's (no batch)
    dtype: str

    def describe(self) -> str:
        return f"{self.name!r} {self.dtype}[{', '.join(map(str, ('N',) + tuple(self.shape)))}]"

    @property
    def floating(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.floating)


@dataclass
class Probe:
    """The fp32 model's outputs on a few test samples, before any quantization."""
    outputs: List[OutputInfo]
    values: List[np.ndarray]  # the probe batch's outputs, batch first
    input_shape: Tuple[int, ...]  # one sample of the first input (C, H, W for images)
    input_names: List[str] = field(default_factory=list)
    input_values: Optional[np.ndarray] = None  # the probe's first input (task=auto compares value ranges)

    def describe(self) -> str:
        return ", ".join(o.describe() for o in self.outputs)


@dataclass
class Score:
    """What a scorer found: logged once by the cell (metrics, tags, JSON and per-sample arrays)."""
    metrics: Dict[str, float] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)
    json: Dict[str, Any] = field(default_factory=dict)  # artifact file name -> object
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)  # artifact file name (.npy) -> per-sample array


def metric_name(name: str) -> str:
    """An output's name as MLflow accepts it in a metric key."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", name) or "output"


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    if noise_energy <= 0.0:
        return float("inf")
    if signal_energy <= 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal_energy / noise_energy)


def rows(a: np.ndarray) -> np.ndarray:
    """One row per sample, float64."""
    return np.asarray(a, dtype=np.float64).reshape(len(a), -1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample of two batches (1.0 where both are all zeros, 0.0 where one is),
    accumulated in float64."""
    x, y = rows(a), rows(b)
    nx, ny = np.sqrt(np.einsum("ij,ij->i", x, x)), np.sqrt(np.einsum("ij,ij->i", y, y))
    dot = np.einsum("ij,ij->i", x, y)
    out = np.where((nx > 0) & (ny > 0), dot / np.maximum(nx * ny, 1e-300), np.where((nx == 0) & (ny == 0), 1.0, 0.0))
    return np.clip(out, -1.0, 1.0)


class Fidelity:
    """Per float output: energy of the reference and of the error (SQNR), cosine per sample, max
    |error|. Per integer output (class ids, masks, counts), whose differences are not magnitudes:
    the share of elements equal to fp32's (``agreement``) only."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = [metric_name(n) for n in names]
        self.signal = [0.0] * len(names)
        self.noise = [0.0] * len(names)
        self.max_err = [0.0] * len(names)
        self.cos: List[List[np.ndarray]] = [[] for _ in names]
        self.nonfinite = [0] * len(names)
        self.integer = [False] * len(names)
        self.equal = [0] * len(names)
        self.elements = [0] * len(names)

    def update(self, cell: List[np.ndarray], ref: List[np.ndarray]) -> None:
        if len(cell) != len(ref) or len(cell) != len(self.names):
            raise TaskError(f"the quantized model gave {len(cell)} outputs, its fp32 reference {len(ref)}, the fp32 "
                            f"probe {len(self.names)}: they must be the same outputs")
        for k, (a, b) in enumerate(zip(cell, ref)):
            if a.shape != b.shape:
                raise TaskError(f"output {self.names[k]!r}: the quantized model gives shape {a.shape[1:]}, its fp32 "
                                f"reference {b.shape[1:]} (per sample)")
            if not np.issubdtype(b.dtype, np.floating):
                self.integer[k] = True
                self.equal[k] += int(np.sum(np.asarray(a) == np.asarray(b)))
                self.elements[k] += int(np.asarray(b).size)
                continue
            x, y = rows(a), rows(b)
            finite = np.isfinite(x)
            self.nonfinite[k] += int((~finite.all(axis=1)).sum())
            if not finite.all():
                x = np.where(finite, x, 0.0)
            err = x - y
            self.signal[k] += float(np.einsum("ij,ij->", y, y))
            self.noise[k] += float(np.einsum("ij,ij->", err, err))
            if err.size:
                self.max_err[k] = max(self.max_err[k], float(np.abs(err).max()))
            self.cos[k].append(cosine_rows(x, y))

    def metrics(self) -> Dict[str, float]:
        m: Dict[str, float] = {}
        for k, name in enumerate(self.names):
            if self.integer[k]:
                m[f"fidelity/{name}/agreement"] = self.equal[k] / self.elements[k] if self.elements[k] else float("nan")
                continue
            cos = np.concatenate(self.cos[k]) if self.cos[k] else np.zeros(0)
            m[f"fidelity/{name}/sqnr_db"] = sqnr_db(self.signal[k], self.noise[k])
            m[f"fidelity/{name}/cosine_mean"] = float(cos.mean()) if cos.size else float("nan")
            m[f"fidelity/{name}/cosine_p5"] = float(np.percentile(cos, 5)) if cos.size else float("nan")
            m[f"fidelity/{name}/max_abs_error"] = self.max_err[k]
            if self.nonfinite[k]:
                m[f"fidelity/{name}/nonfinite_samples"] = float(self.nonfinite[k])
        return m

    def sqnr(self, k: int) -> float:
        return sqnr_db(self.signal[k], self.noise[k])


class Scorer:
    """Reduces (cell, fp32 reference, labels) batch by batch."""

    def update(self, cell: List[np.ndarray], ref: List[np.ndarray], labels: Optional[Any]) -> None:
        raise NotImplementedError

    def result(self) -> Score:
        raise NotImplementedError


class Task:
    """One task: which outputs it reads, the check before any quantization, and its scorer.

    ``quality`` names the headline metric of the task with labels and without (against fp32), and
    whether higher is better: the report's quality axis and the summary line read it."""
    name: ClassVar[str] = ""
    quality: ClassVar[Tuple[str, str]] = ("", "")  # (with labels, without)
    higher_is_better: ClassVar[bool] = True
    # Where the label comparisons need more than the outputs: classification's class count
    needs_num_classes: ClassVar[bool] = False

    def __init__(self, cfg, ds, probe: Probe, model_label: str = "") -> None:
        self.cfg, self.ds, self.probe, self.model_label = cfg, ds, probe, model_label

    # -- helpers for subclasses
    def output_index(self, want, what: str) -> int:
        """The output the task reads: task.output (a name or an index) or the first one ``want`` accepts."""
        outs = self.probe.outputs
        chosen = getattr(self.cfg, "output", None)
        if chosen is not None and str(chosen) != "":
            names = [o.name for o in outs]
            if str(chosen) in names:
                return names.index(str(chosen))
            if str(chosen).lstrip("-").isdigit() and -len(outs) <= int(chosen) < len(outs):
                return int(chosen) % len(outs)
            raise TaskError(f"task.output={chosen!r} names no output of the model; its outputs are "
                            f"{self.probe.describe()} (give a name or an index)")
        for i, o in enumerate(outs):
            if want(o):
                return i
        raise TaskError(f"task={self.name}: the model's outputs are {self.probe.describe()}; {what}")

    def labels_batch(self, start: int, stop: int):
        y = self.ds.y_test
        return None if y is None else y[start:stop]

    @property
    def labelled(self) -> bool:
        return self.ds.y_test is not None

    def check(self) -> None:
        """Raise TaskError (one line: the output, its shape and dtype, what is expected) if the task
        cannot read the probe's outputs or the data's labels."""

    def scorer(self) -> Scorer:
        raise NotImplementedError

    def quality_metric(self) -> str:
        return self.quality[0] if self.labelled and self.quality[0] else self.quality[1]

    def quality_values(self, m: Dict[str, float]) -> Dict[str, float]:
        """``quality``: the task's headline metric (the report's quality axis); with labels also
        ``quality_delta``: the cell's minus its fp32 reference's (accuracy, mIoU, mAP, PSNR, MAE)."""
        name = self.quality_metric()
        out: Dict[str, float] = {}
        if name in m and math.isfinite(m[name]):
            out["quality"] = m[name]
            if f"fp32_{name}" in m and math.isfinite(m[f"fp32_{name}"]):
                out["quality_delta"] = m[name] - m[f"fp32_{name}"]
        return out

    def describe(self) -> str:
        """What the task reads, for the cell's tags."""
        return self.name


class TaskScorer(Scorer):
    """A task's own reduction plus the per-output fidelity of every task; the output the task reads
    (``primary``) also gives the plain ``sqnr_db`` and ``cosine_mean`` every cell carries."""

    def __init__(self, names: Sequence[str], primary: int = 0) -> None:
        self.fid = Fidelity(names)
        self.primary = primary
        self.n = 0

    def update(self, cell, ref, labels) -> None:
        self.fid.update(cell, ref)
        self.n += len(cell[0])
        self.add(cell, ref, labels)

    def add(self, cell, ref, labels) -> None:
        raise NotImplementedError

    def finish(self) -> Score:
        raise NotImplementedError

    def result(self) -> Score:
        s = self.finish()
        fid = self.fid.metrics()
        s.metrics.update(fid)
        name = self.fid.names[self.primary]
        for key in ("sqnr_db", "cosine_mean"):
            if f"fidelity/{name}/{key}" in fid:
                s.metrics[key] = fid[f"fidelity/{name}/{key}"]
        s.metrics["test_samples"] = float(self.n)
        return s


def dtype_name(a) -> str:
    return str(np.dtype(getattr(a, "dtype", np.float32)))


def plain_cfg(cfg) -> Dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(cfg):
        return {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(cfg).items()}
    return dict(cfg or {})
