"""Detection: boxes, scores and classes per image, at a fixed number K of slots per image (padded),
so that batches stack. The outputs the task reads:

- separate outputs: boxes float [N, K, 4], scores float [N, K], classes [N, K] (integer or float ids),
  and optionally a count [N] or [N, 1] of the valid slots; found by ``task.boxes`` / ``task.scores`` /
  ``task.classes`` / ``task.count`` (output names), else by name (box, score, label / class,
  num / count), else by shape;
- or one output [N, K, 6]: x1, y1, x2, y2, score, class per slot (a YOLO-style export after NMS).

A slot is a detection when its score is above 0 (and above ``task.min_score``), its class is not
negative and it is within the count. Boxes are in ``task.box_format`` (xyxy, xywh or cxcywh).

mAP@[.5:.95] and mAP@.5 through torchmetrics' MeanAveragePrecision (pycocotools backend):
against fp32's detections (those scoring at least ``task.reference_min_score`` taken as the truth;
``map_vs_fp32``), and, when the data has labelled boxes (an npz ``y`` of [N, M, 5]: x1, y1, x2, y2,
class in the same box format, class -1 = padding), against them for the cell and for its fp32
reference (``map``, ``fp32_map``, ``map_delta_pp``). When fp32 detects nothing at that score, no
``map_vs_fp32`` is logged (there is nothing to agree with) and the tag detection_note says so."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.task import TaskConfig
from bsb_hydra.tasks import TASKS
from bsb_hydra.tasks.base import Score, Task, TaskError, TaskScorer

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


@dataclass
class DetectionTaskConfig(TaskConfig):
    name: str = "detection"
    # Output names of the boxes, scores, classes and (optional) valid-slot count; null = found by
    # name, then by shape. `output` names one combined [N, K, 6] output instead.
    boxes: Optional[str] = None
    scores: Optional[str] = None
    classes: Optional[str] = None
    count: Optional[str] = None
    box_format: str = "xyxy"  # how boxes are written: xyxy, xywh or cxcywh
    # Detections scoring below this are dropped from the predictions (0.0 keeps every valid slot).
    min_score: float = 0.0
    # fp32's detections scoring at least this are the truth the quantized model is scored against.
    reference_min_score: float = 0.5

    def __post_init__(self) -> None:
        if self.box_format not in BOX_FORMATS:
            raise ConfigError(f"task.box_format={self.box_format!r} is not allowed: use one of {', '.join(BOX_FORMATS)}")
        for key in ("min_score", "reference_min_score"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"task.{key}={v} is not allowed: give a score between 0 and 1")


def to_xyxy(b: np.ndarray, fmt: str) -> np.ndarray:
    b = np.asarray(b, dtype=np.float32)
    if fmt == "xyxy":
        return b
    if fmt == "xywh":
        return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)
    half = b[..., 2:4] / 2.0
    return np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


HINTS = {"boxes": ("box", "bbox"), "scores": ("score", "conf", "prob"), "classes": ("label", "class", "cls", "categor"),
         "count": ("num", "count", "valid")}


class DetectionScorer(TaskScorer):
    def __init__(self, task: "Detection") -> None:
        super().__init__([o.name for o in task.probe.outputs], task.index)
        from torchmetrics.detection import MeanAveragePrecision

        self.task = task
        make = lambda: MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")  # noqa: E731
        self.vs_fp32, self.cell_vs_labels, self.ref_vs_labels = make(), make(), make()
        self.labelled = False
        self.reference_boxes = 0
        self.counts: Dict[str, List[int]] = {"cell": [], "ref": []}

    def add(self, cell, ref, labels) -> None:
        import torch

        t = self.task
        a, b = t.detections(cell, t.cfg.min_score), t.detections(ref, t.cfg.min_score)
        truth = [{k: v for k, v in d.items() if k != "scores"} for d in t.detections(ref, t.cfg.reference_min_score)]
        self.reference_boxes += sum(len(d["labels"]) for d in truth)
        self.counts["cell"] += [len(d["labels"]) for d in a]
        self.counts["ref"] += [len(d["labels"]) for d in b]
        tt = lambda ds: [{k: torch.from_numpy(v) for k, v in d.items()} for d in ds]  # noqa: E731
        self.vs_fp32.update(tt(a), tt(truth))
        if labels is not None:
            self.labelled = True
            y = t.label_boxes(labels)
            self.cell_vs_labels.update(tt(a), tt(y))
            self.ref_vs_labels.update(tt(b), tt(y))

    def finish(self) -> Score:
        m: Dict[str, float] = {"detections_per_image": float(np.mean(self.counts["cell"])),
                               "fp32_detections_per_image": float(np.mean(self.counts["ref"])),
                               "reference_detections": float(self.reference_boxes)}
        tags = {}
        if self.reference_boxes:
            r = self.vs_fp32.compute()
            m["map_vs_fp32"], m["map50_vs_fp32"] = float(r["map"]), float(r["map_50"])
        else:
            tags["detection_note"] = (f"fp32 made no detection scoring >= task.reference_min_score="
                                      f"{self.task.cfg.reference_min_score} on the test split: nothing to score the "
                                      "quantized model against (lower task.reference_min_score)")
        if self.labelled:
            c, r = self.cell_vs_labels.compute(), self.ref_vs_labels.compute()
            m.update({"map": float(c["map"]), "map50": float(c["map_50"]), "fp32_map": float(r["map"]),
                      "fp32_map50": float(r["map_50"])})
            m["map_delta_pp"] = 100.0 * (m["map"] - m["fp32_map"])
        return Score(m, tags=tags)


@TASKS.register("detection", schema=DetectionTaskConfig)
class Detection(Task):
    name = "detection"
    quality = ("map", "map_vs_fp32")

    def _by(self, role: str, want) -> Optional[int]:
        outs = self.probe.outputs
        given = getattr(self.cfg, role)
        if given:
            names = [o.name for o in outs]
            if given not in names:
                raise TaskError(f"task.{role}={given!r} names no output of the model; its outputs are "
                                f"{self.probe.describe()}")
            return names.index(given)
        named = [i for i, o in enumerate(outs) if any(h in o.name.lower() for h in HINTS[role]) and want(o)
                 and i not in self.taken]
        if named:
            return named[0]
        if role == "count":  # an optional output: only by its name, never by shape alone
            return None
        shaped = [i for i, o in enumerate(outs) if want(o) and i not in self.taken]
        return shaped[0] if shaped else None

    def check(self) -> None:
        outs = self.probe.outputs
        self.taken: List[int] = []
        self.combined = None
        chosen = self.cfg.output
        if chosen is not None or (len(outs) == 1 and len(outs[0].shape) == 2 and outs[0].shape[-1] == 6):
            i = self.output_index(lambda o: len(o.shape) == 2 and o.shape[-1] == 6, "")
            o = outs[i]
            if len(o.shape) != 2 or o.shape[-1] != 6:
                raise TaskError(f"task=detection: output {o.describe()} is not [N, K, 6] (x1, y1, x2, y2, score, class)")
            self.combined = self.index = i
            return
        self.boxes = self._by("boxes", lambda o: o.floating and len(o.shape) == 2 and o.shape[-1] == 4)
        if self.boxes is None:
            raise TaskError(f"task=detection: the model's outputs are {self.probe.describe()}; detection reads boxes "
                            "float [N, K, 4] with scores [N, K] and classes [N, K] (or one [N, K, 6] output): name "
                            "them with task.boxes / task.scores / task.classes")
        self.taken.append(self.boxes)
        k = outs[self.boxes].shape[0]
        self.scores = self._by("scores", lambda o: o.floating and o.shape == (k,))
        if self.scores is not None:
            self.taken.append(self.scores)
        self.classes = self._by("classes", lambda o: o.shape == (k,))
        if self.classes is not None:
            self.taken.append(self.classes)
        self.count = self._by("count", lambda o: o.shape in ((), (1,)))
        missing = [r for r in ("scores", "classes") if getattr(self, r) is None]
        if missing:
            raise TaskError(f"task=detection: found boxes {outs[self.boxes].describe()} but no {' or '.join(missing)} "
                            f"[N, {k}] among {self.probe.describe()}: name them with "
                            + " / ".join(f"task.{r}" for r in missing))
        for role in ("scores", "classes"):
            o = outs[getattr(self, role)]
            if o.shape != (k,):
                raise TaskError(f"task=detection: {role} output {o.describe()} does not have the boxes' {k} slots")
        self.index = self.boxes
        if self.labelled:
            y = np.asarray(self.ds.y_test[:1])
            if y.ndim != 3 or y.shape[-1] != 5:
                raise TaskError(f"task=detection: the labels are {y.dtype}{list(y.shape[1:])} per sample; detection "
                                "labels are [M, 5] per image (x1, y1, x2, y2, class; class -1 = padding)")

    def detections(self, outs: List[np.ndarray], min_score: float) -> List[Dict[str, np.ndarray]]:
        """Per image: boxes (xyxy), scores, labels of the valid slots scoring at least min_score."""
        if self.combined is not None:
            a = np.asarray(outs[self.combined], dtype=np.float32)
            boxes, scores, classes, count = a[..., :4], a[..., 4], a[..., 5], None
        else:
            boxes, scores, classes = outs[self.boxes], outs[self.scores], outs[self.classes]
            count = outs[self.count].reshape(len(boxes)) if self.count is not None else None
        boxes = to_xyxy(boxes, self.cfg.box_format)
        out = []
        for i in range(len(boxes)):
            s, c = np.asarray(scores[i], np.float32), np.rint(np.asarray(classes[i], np.float64)).astype(np.int64)
            keep = (s > 0) & (s >= min_score) & (c >= 0) & np.isfinite(boxes[i]).all(axis=1)
            if count is not None:
                keep &= np.arange(len(s)) < int(count[i])
            out.append({"boxes": np.ascontiguousarray(boxes[i][keep]), "scores": s[keep], "labels": c[keep]})
        return out

    def label_boxes(self, y) -> List[Dict[str, np.ndarray]]:
        y = np.asarray(y, dtype=np.float32)
        out = []
        for img in y:
            keep = img[:, 4] >= 0
            out.append({"boxes": np.ascontiguousarray(to_xyxy(img[keep, :4], self.cfg.box_format)),
                        "labels": img[keep, 4].astype(np.int64)})
        return out

    def scorer(self) -> DetectionScorer:
        return DetectionScorer(self)

    def describe(self) -> str:
        outs = self.probe.outputs
        if self.combined is not None:
            return f"detection from output {outs[self.combined].describe()} (x1, y1, x2, y2, score, class)"
        parts = [f"{r} {outs[getattr(self, r)].describe()}" for r in ("boxes", "scores", "classes", "count")
                 if getattr(self, r) is not None]
        return f"detection ({self.cfg.box_format}): " + ", ".join(parts)
