"""Classification: one output of class scores [N, C] (logits or probabilities).

Against labels: top-1 accuracy with its Wilson interval, the delta against the fp32 reference with
the paired interval and the exact McNemar test (the same test samples), per-class accuracy.
Against fp32 (always): top-1 agreement, confidence drift, KL divergence, the largest logit
difference. A warning (tag quality_warning) when the fp32 reference is a constant in effect: one class
for every sample, or no more accurate than the test split's most frequent class. Streamed: per batch
only the top-1 classes, correctness and running sums are kept."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from bsb_hydra.bench import stats
from bsb_hydra.config.task import TaskConfig
from bsb_hydra.tasks import TASKS
from bsb_hydra.tasks.base import Score, Task, TaskError, TaskScorer


@dataclass
class ClassificationTaskConfig(TaskConfig):
    name: str = "classification"


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    return stats.softmax(np.asarray(logits, dtype=np.float64))


class ClassificationScorer(TaskScorer):
    def __init__(self, task: "Classification") -> None:
        super().__init__([o.name for o in task.probe.outputs], task.index)
        self.k = task.index
        self.num_classes = task.num_classes
        self.class_names = list(getattr(task.ds, "class_names", []) or [])
        self.pred: List[np.ndarray] = []
        self.ref_pred: List[np.ndarray] = []
        self.labels: List[np.ndarray] = []
        self.drift = 0.0
        self.kl = 0.0
        self.max_diff = 0.0

    def add(self, cell, ref, labels) -> None:
        a, b = np.asarray(cell[self.k], dtype=np.float64), np.asarray(ref[self.k], dtype=np.float64)
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        p, q = softmax_rows(b), softmax_rows(a)
        top_ref = b.argmax(axis=1)
        rows = np.arange(len(top_ref))
        eps = 1e-12
        self.drift += float(np.abs(q[rows, top_ref] - p[rows, top_ref]).sum())
        self.kl += float(np.maximum(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1), 0.0).sum())
        self.max_diff = max(self.max_diff, float(np.abs(a - b).max()) if a.size else 0.0)
        self.pred.append(a.argmax(axis=1))
        self.ref_pred.append(top_ref)
        if labels is not None:
            self.labels.append(np.asarray(labels).reshape(-1))

    def finish(self) -> Score:
        pred, ref = np.concatenate(self.pred), np.concatenate(self.ref_pred)
        n = len(pred)
        m: Dict[str, float] = {"top1_agreement": float((pred == ref).mean()), "confidence_drift": self.drift / n,
                               "kl_div": self.kl / n, "max_abs_logit_diff": self.max_diff}
        m["predicted_classes"] = float(np.unique(pred).size)
        score = Score(m, arrays={"predictions.npy": pred.astype(np.int16)})
        y = np.concatenate(self.labels) if self.labels else None
        warning = self.reference_warning(ref, y)
        if warning:
            score.tags["quality_warning"] = warning
        if y is None:
            return score
        correct, ref_correct = pred == y, ref == y
        acc, ref_acc = correct.mean(), ref_correct.mean()
        lo, hi = stats.wilson_interval(int(correct.sum()), n)
        paired = stats.paired_accuracy(correct, ref_correct)  # same samples: McNemar
        m.update({"accuracy": float(acc), "accuracy_ci_low": lo, "accuracy_ci_high": hi,
                  "fp32_accuracy": float(ref_acc), "accuracy_delta_pp": 100.0 * float(acc - ref_acc),
                  "accuracy_delta_ci_low_pp": paired["ci_low_pp"], "accuracy_delta_ci_high_pp": paired["ci_high_pp"],
                  "accuracy_delta_p_value": paired["p_value"], "gained_vs_fp32": paired["gained"],
                  "lost_vs_fp32": paired["lost"]})
        k = self.num_classes or int(max(y.max(initial=0), pred.max(initial=0))) + 1

        def per_class(p):
            return {c: float((p[y == c] == c).mean()) if (y == c).any() else float("nan") for c in range(k)}

        names = self.class_names
        score.json["per_class_accuracy.json"] = {
            "per_class_accuracy": {names[c] if c < len(names) else str(c): v for c, v in per_class(pred).items()},
            "fp32_per_class_accuracy": {str(c): v for c, v in per_class(ref).items()}}
        score.arrays["correct.npy"] = correct  # right or wrong per test sample: paired tests between cells
        score.metrics["majority_class_share"] = float(np.unique(y, return_counts=True)[1].max() / n)
        return score

    def _class(self, c: int) -> str:
        names = self.class_names
        return f"{c} ({names[c]})" if 0 <= c < len(names) else str(c)

    def reference_warning(self, ref: np.ndarray, y) -> str:
        """Why this cell's accuracy and agreement say nothing about quantization ('' = they can): the
        fp32 reference answers one class for every test sample, or (labelled) is no more accurate than
        always answering the test split's most frequent class. Its deltas and agreement are then those
        of a constant, whatever quantization did to the weights. A labelled split of one class is
        never judged: there a model right on every sample answers one class too."""
        n = len(ref)
        if n < 2 or (y is not None and np.unique(y).size < 2):
            return ""
        what = ""
        if np.unique(ref).size == 1:
            what = f"the fp32 model answers class {self._class(int(ref[0]))} for all {n} test samples"
        elif y is not None:
            classes, counts = np.unique(y, return_counts=True)
            majority, ref_acc = counts.max() / n, float((ref == y).mean())
            if ref_acc <= majority:
                what = (f"the fp32 model's accuracy ({100 * ref_acc:.2f}%) is no better than always answering the "
                        f"most frequent class {self._class(int(classes[counts.argmax()]))} ({100 * majority:.2f}% "
                        f"of the {n} test samples)")
        if not what:
            return ""
        why = ("Is it untrained, or made for other data? Give it trained weights: train=realsize or more epochs for a "
               "model trained here, model.checkpoint, or a trained file" if y is not None else
               "Are these inputs what it was made for (random inputs often get one answer), and is it trained? Give "
               "it real samples of its data, or trained weights")
        return (what + _CONSEQUENCE + "cannot show what quantization costs here (size and latency still hold). "
                + why)


# Where a quality_warning's finding ends and its explanation starts (a class name may hold a ':').
_CONSEQUENCE = ": accuracy deltas and top-1 agreement "


def warning_headline(warning: str) -> str:
    """A quality_warning's finding alone, for one-line places (the sweep's table, the report's model line)."""
    return warning.split(_CONSEQUENCE)[0]


@TASKS.register("classification", schema=ClassificationTaskConfig)
class Classification(Task):
    name = "classification"
    quality = ("accuracy", "top1_agreement")

    def check(self) -> None:
        num = self.ds.num_classes
        self.index = self.output_index(lambda o: o.floating and len(o.shape) == 1 and (num is None or o.shape[0] == num),
                                       "classification reads class scores [N, C]"
                                       + (f" with C = {num} (the data's classes)" if num else ""))
        o = self.probe.outputs[self.index]
        if not o.floating or len(o.shape) != 1:
            raise TaskError(f"task=classification: output {o.describe()} is not class scores [N, C]")
        if num is not None and o.shape[0] != num:
            raise TaskError(f"task=classification: output {o.describe()} has {o.shape[0]} classes, the data has {num} "
                            f"(labels 0..{num - 1}): give data with {o.shape[0]} classes, or another task "
                            "(task=embedding for vectors)")
        if self.labelled:
            y = self.ds.y_test
            if np.ndim(y) != 1 or not np.issubdtype(np.asarray(y).dtype, np.integer):
                raise TaskError(f"task=classification needs one integer class label per sample; the data's labels "
                                f"have shape {tuple(np.shape(y))[1:]} per sample and dtype {np.asarray(y).dtype}")
        self.num_classes = num or o.shape[0]

    def scorer(self) -> ClassificationScorer:
        return ClassificationScorer(self)

    def describe(self) -> str:
        return f"classification of output {self.probe.outputs[self.index].describe()}"
