"""Segmentation: a class per pixel. The output the task reads is one of

- per-class scores [N, C, H, W] (C >= 2): the mask is the argmax over C;
- one channel [N, 1, H, W] or [N, H, W] of float scores: a binary mask, score > task.threshold
  (null: 0.5 when the fp32 probe's values lie in [0, 1], probabilities; else 0.0, logits);
- integer masks [N, H, W].

Against fp32's masks (always): pixel agreement and mean IoU with fp32's mask as the truth (for a
binary mask also the foreground's IoU, its quality figure, and the foreground's share of pixels: a
reference with no foreground at all is flagged, its IoU is not logged). Against
label masks (integer [N, H, W] of the output's H and W; ``task.ignore_index`` pixels skipped): pixel
accuracy and mean IoU of the cell and of its fp32 reference, and the delta. Mean IoU is over the
classes present in the truth or the prediction (a class absent from both is left out, not counted
as 1 or 0). Streamed: confusion matrices summed batch by batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from bsb_hydra.config.task import TaskConfig
from bsb_hydra.tasks import TASKS
from bsb_hydra.tasks.base import Score, Task, TaskError, TaskScorer


@dataclass
class SegmentationTaskConfig(TaskConfig):
    name: str = "segmentation"
    # Label value whose pixels are not scored (e.g. 255 for VOC's borders); null = every pixel.
    ignore_index: Optional[int] = None
    # One-channel outputs: the score above which a pixel is foreground; null = 0.5 for probabilities
    # (the fp32 probe's values within [0, 1]), 0.0 for logits.
    threshold: Optional[float] = None


class Confusion:
    """A confusion matrix (truth x prediction) that grows with the classes it meets."""

    def __init__(self, k: int = 2) -> None:
        self.m = np.zeros((k, k), dtype=np.int64)

    def add(self, truth: np.ndarray, pred: np.ndarray, ignore: Optional[int] = None) -> None:
        t, p = truth.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
        keep = (t >= 0) & (p >= 0)
        if ignore is not None:
            keep &= t != ignore
        t, p = t[keep], p[keep]
        k = int(max(self.m.shape[0], t.max(initial=-1) + 1, p.max(initial=-1) + 1))
        if k > self.m.shape[0]:
            grown = np.zeros((k, k), dtype=np.int64)
            grown[:self.m.shape[0], :self.m.shape[0]] = self.m
            self.m = grown
        self.m += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def iou(self) -> np.ndarray:
        """Per class; nan where the class is in neither truth nor prediction."""
        inter = np.diag(self.m).astype(np.float64)
        union = self.m.sum(0) + self.m.sum(1) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def accuracy(self) -> float:
        total = self.m.sum()
        return float(np.trace(self.m) / total) if total else float("nan")


class SegmentationScorer(TaskScorer):
    def __init__(self, task: "Segmentation") -> None:
        super().__init__([o.name for o in task.probe.outputs], task.index)
        self.task = task
        self.k = task.index
        self.vs_fp32 = Confusion()
        self.cell_vs_labels = Confusion()
        self.ref_vs_labels = Confusion()
        self.agree: List[np.ndarray] = []
        self.labelled = False

    def add(self, cell, ref, labels) -> None:
        a, b = self.task.masks(cell[self.k]), self.task.masks(ref[self.k])
        self.vs_fp32.add(b, a)
        self.agree.append((a == b).reshape(len(a), -1).mean(axis=1))
        if labels is not None:
            y = self.task.label_masks(labels)
            self.labelled = True
            self.cell_vs_labels.add(y, a, self.task.cfg.ignore_index)
            self.ref_vs_labels.add(y, b, self.task.cfg.ignore_index)

    def finish(self) -> Score:
        agree = np.concatenate(self.agree)
        m = {"pixel_agreement": float(agree.mean()), "miou_vs_fp32": self.vs_fp32.miou(),
             "segmentation_classes_seen": float(self.vs_fp32.m.shape[0])}
        tags = {}
        if self.task.kind == "binary":  # the foreground's IoU is the figure of a binary mask
            c = self.vs_fp32.m
            m["fp32_foreground_fraction"] = float(c[1:].sum() / c.sum()) if c.sum() else float("nan")
            m["foreground_fraction"] = float(c[:, 1:].sum() / c.sum()) if c.sum() else float("nan")
            m["foreground_iou_vs_fp32"] = float(self.vs_fp32.iou()[1]) if c.shape[0] > 1 else float("nan")
            if not c[1:].sum():
                tags["segmentation_note"] = ("fp32's masks have no foreground pixel on these inputs: there is no "
                                             "foreground to agree on (foreground_iou_vs_fp32 is not logged; "
                                             "miou_vs_fp32 covers the background only); feed inputs with "
                                             "something to find")
        js = {"iou_vs_fp32": [None if np.isnan(v) else float(v) for v in self.vs_fp32.iou()]}
        if self.labelled:
            m.update({"pixel_accuracy": self.cell_vs_labels.accuracy(), "miou": self.cell_vs_labels.miou(),
                      "fp32_pixel_accuracy": self.ref_vs_labels.accuracy(), "fp32_miou": self.ref_vs_labels.miou()})
            m["miou_delta_pp"] = 100.0 * (m["miou"] - m["fp32_miou"])
            if self.task.kind == "binary":
                iou, ref_iou = self.cell_vs_labels.iou(), self.ref_vs_labels.iou()
                m["foreground_iou"] = float(iou[1]) if len(iou) > 1 else float("nan")
                m["fp32_foreground_iou"] = float(ref_iou[1]) if len(ref_iou) > 1 else float("nan")
            js["iou"] = [None if np.isnan(v) else float(v) for v in self.cell_vs_labels.iou()]
            js["fp32_iou"] = [None if np.isnan(v) else float(v) for v in self.ref_vs_labels.iou()]
        return Score(m, tags=tags, json={"per_class_iou.json": js},
                     arrays={"pixel_agreement.npy": agree.astype(np.float32)})


@TASKS.register("segmentation", schema=SegmentationTaskConfig)
class Segmentation(Task):
    name = "segmentation"
    quality = ("miou", "miou_vs_fp32")

    def check(self) -> None:
        def readable(o) -> bool:
            return (len(o.shape) == 3 and o.floating) or (len(o.shape) == 2) or (len(o.shape) == 3 and o.shape[0] == 1)

        self.index = self.output_index(readable, "segmentation reads per-class scores [N, C, H, W], one channel "
                                                 "[N, 1, H, W] / [N, H, W] of scores, or integer masks [N, H, W]")
        o = self.probe.outputs[self.index]
        if not readable(o) or (len(o.shape) == 3 and not o.floating and o.shape[0] != 1):
            raise TaskError(f"task=segmentation: output {o.describe()} is not per-class scores [N, C, H, W], one "
                            "channel of scores [N, 1, H, W] / [N, H, W], or integer masks [N, H, W]")
        self.kind = ("masks" if not o.floating else
                     "binary" if len(o.shape) == 2 or o.shape[0] == 1 else "classes")
        self.hw = tuple(o.shape[-2:])
        self.threshold = self.cfg.threshold
        if self.kind == "binary" and self.threshold is None:
            v = self.probe.values[self.index]
            self.threshold = 0.5 if float(np.min(v)) >= 0.0 and float(np.max(v)) <= 1.0 else 0.0
        if self.labelled:
            y = np.asarray(self.ds.y_test[:1])
            shape = tuple(y.shape[1:])
            if shape[:1] == (1,) and len(shape) == 3:
                shape = shape[1:]
            if not np.issubdtype(y.dtype, np.integer) or shape != self.hw:
                raise TaskError(f"task=segmentation: the labels are {y.dtype}{list(y.shape[1:])} per sample; the output "
                                f"{o.describe()} needs integer label masks of {self.hw[0]}x{self.hw[1]} per sample")

    def quality_metric(self) -> str:
        """mIoU; for a binary mask the foreground's IoU (the background's would flatter it)."""
        if getattr(self, "kind", "") == "binary":
            return "foreground_iou" if self.labelled else "foreground_iou_vs_fp32"
        return super().quality_metric()

    def masks(self, out: np.ndarray) -> np.ndarray:
        a = np.asarray(out)
        if self.kind == "classes":
            return a.argmax(axis=1)
        if self.kind == "binary":
            a = a.reshape(len(a), *self.hw)
            return (a > self.threshold).astype(np.int64)
        return a.reshape(len(a), *self.hw).astype(np.int64)

    def label_masks(self, y) -> np.ndarray:
        y = np.asarray(y)
        return y.reshape(len(y), *self.hw)

    def scorer(self) -> SegmentationScorer:
        return SegmentationScorer(self)

    def describe(self) -> str:
        o = self.probe.outputs[self.index]
        how = {"classes": "argmax over its channels", "masks": "integer masks as they are",
               "binary": f"one channel, foreground above {self.threshold}"}[self.kind]
        return f"segmentation of output {o.describe()} ({how})"
