"""task=auto: the task inferred from the model, the data's labels and the fp32 model's outputs on a few
test samples (the probe). The rule that decided is logged with the cell (tag task_inferred).

1. A model the tool builds or trains declares its task: the built-in, torchvision and Hugging Face
   sequence models are classifiers, and so is any model trained here (training is for classifiers).
2. With labels, their form decides: one integer per sample -> classification when an output has one
   score per class; a vector named as class scores or shorter than the class count is a classifier of
   other classes (refused, naming both); else embedding when an output is one vector per sample (the
   labels then unused);
   [M, 5] boxes per sample -> detection; integer masks -> segmentation; float targets -> image_to_image
   for image outputs [N, C, H, W], else regression.
3. Without labels, the outputs' shapes decide: boxes [N, K, 4] beside [N, K] outputs -> detection;
   images [N, C, H, W] with the input's channels at the input's size or a multiple of it, and values
   within the input's range -> image_to_image (outside it: raw, image or per-pixel class scores?); [N, C >= 2, H, W] at a size the input divides into -> segmentation; one channel of
   probabilities in [0, 1] -> segmentation (binary); integer [N, H, W] -> segmentation; one vector
   per sample -> classification or embedding when the output's name says which (logits, probs, scores /
   embedding, pooler_output, sentence_embedding); anything else -> raw (fidelity only), with the reason:
   a number is never logged on an output the tool cannot read."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from bsb_hydra.config.task import TaskConfig
from bsb_hydra.tasks import TASKS
from bsb_hydra.tasks.base import OutputInfo, Probe, TaskError

CLASS_HINTS = ("logit", "prob", "class", "pred", "softmax", "score", "output_label")
EMBED_HINTS = ("embed", "pool", "sentence", "feature", "hidden", "vector", "encod")


@dataclass
class AutoTaskConfig(TaskConfig):
    name: str = "auto"


def _images(o: OutputInfo) -> bool:
    return o.floating and len(o.shape) == 3


def infer(model_cfg, probe: Probe, ds) -> Tuple[str, str]:
    """(task name, why)."""
    from bsb_hydra.models import model_label

    label = model_label(model_cfg)
    declared = getattr(type(model_cfg), "task", None)
    if declared:
        return declared, f"model={label} is a {declared} model"
    if model_cfg.needs_training(ds.labelled):
        return "classification", f"model={label} is trained here, and training here is for classifiers"
    outs = probe.outputs
    first = outs[0]
    if ds.labelled:
        return _from_labels(probe, ds)
    det = [o for o in outs if o.floating and len(o.shape) == 2 and o.shape[-1] == 4]
    if det and any(o.shape == (det[0].shape[0],) for o in outs):
        return "detection", f"output {det[0].describe()} holds boxes beside [N, {det[0].shape[0]}] outputs"
    ih = tuple(probe.input_shape[-2:]) if len(probe.input_shape) == 3 else None
    ic = probe.input_shape[0] if len(probe.input_shape) == 3 else None
    if _images(first) and ih:
        c, h, w = first.shape
        scale_ok = h % ih[0] == 0 and w % ih[1] == 0 and h // ih[0] == w // ih[1]
        if c == ic and scale_ok:
            k = h // ih[0]
            what = f"{k}x the input's size (super-resolution)" if k > 1 else "the input's size"
            if _within_input_range(probe.values[0], getattr(probe, "input_values", None)):
                return "image_to_image", (f"output {first.describe()} is an image with the input's {c} channel(s) at "
                                          f"{what}, its values within the input's range")
            return "raw", (f"output {first.describe()} has the input's {c} channel(s) at {what}, but its values are not "
                           f"in the input's range: an image or scores of {c} classes per pixel? fidelity to fp32 only "
                           "(set task=image_to_image or task=segmentation)")
        if c >= 2 and ih[0] % h == 0 and ih[1] % w == 0 or c >= 2 and scale_ok:
            return "segmentation", (f"output {first.describe()} has {c} channels over a {h}x{w} grid of the "
                                    f"{ih[0]}x{ih[1]} input: one score per class and pixel")
        if c == 1:
            v = probe.values[0]
            if float(np.min(v)) >= 0.0 and float(np.max(v)) <= 1.0:
                return "segmentation", (f"output {first.describe()} is one channel of probabilities in [0, 1] over the "
                                        "image: a binary mask (foreground above 0.5)")
    if len(first.shape) == 2 and not first.floating and ih and tuple(first.shape) == ih:
        return "segmentation", f"output {first.describe()} is an integer mask at the input's size"
    if first.floating and len(first.shape) == 1:
        name = first.name.lower()
        if any(h in name for h in EMBED_HINTS):
            return "embedding", f"output {first.describe()} is one vector per sample, named as an embedding"
        if any(h in name for h in CLASS_HINTS) and first.shape[0] >= 2:
            return "classification", f"output {first.describe()} is one score per class, named as such"
        return "raw", (f"output {first.describe()} is one vector per sample, and without labels nothing tells class "
                       "scores from an embedding: fidelity to fp32 only (set task=classification or task=embedding)")
    return "raw", (f"no task reads outputs {probe.describe()} without labels: fidelity to fp32 only (set task=... to "
                   "score them as a task)")


def _within_input_range(out: np.ndarray, x) -> bool:
    """Whether output values lie within the input's value range, give or take half its span (an image
    out of an image); unknown input values: within [-0.5, 1.5] or [0, 255]."""
    lo, hi = float(np.min(out)), float(np.max(out))
    if x is None:
        return (lo >= -0.5 and hi <= 1.5) or (lo >= 0.0 and hi <= 255.0)
    xl, xh = float(np.min(x)), float(np.max(x))
    slack = 0.5 * max(xh - xl, 1e-6)
    return lo >= xl - slack and hi <= xh + slack


def _from_labels(probe: Probe, ds) -> Tuple[str, str]:
    outs = probe.outputs
    y = np.asarray(ds.y_test[:1])
    per = tuple(y.shape[1:])
    integer = np.issubdtype(y.dtype, np.integer)
    if integer and not per:
        k = ds.num_classes
        if any(o.floating and o.shape == (k,) for o in outs):
            o = next(o for o in outs if o.floating and o.shape == (k,))
            return "classification", f"output {o.describe()} has one score per class of the data's {k} integer labels"
        vec = next((o for o in outs if o.floating and len(o.shape) == 1), None)
        if vec is not None:
            d = vec.shape[0]
            if d < k or any(h in vec.name.lower() for h in CLASS_HINTS):  # a classifier of other classes
                raise TaskError(f"output {vec.describe()} holds {d} class scores; the data has {k} classes (labels "
                                f"0..{k - 1}): give data whose labels are 0..{d - 1}, or task=embedding if the "
                                "output is not class scores")
            return "embedding", (f"output {vec.describe()} is one vector per sample, not one score per class of the "
                                 f"data's {k} labels: read as an embedding (the labels are not used)")
        return "raw", (f"the data has {k} class labels, but no output is one score per class ({probe.describe()}): "
                       "fidelity to fp32 only")
    if len(per) == 2 and per[-1] == 5 and not integer:
        return "detection", f"the labels are boxes [M, 5] per sample (x1, y1, x2, y2, class)"
    if integer:
        return "segmentation", f"the labels are integer masks {list(per)} per sample"
    size = int(np.prod(per)) if per else 1
    match = next((o for o in outs if o.floating and int(np.prod(o.shape)) == size), None)
    if match is not None and _images(match):
        return "image_to_image", f"the labels are float images {list(per)} per sample, as output {match.describe()}"
    if match is not None:
        return "regression", f"the labels are float targets {list(per)} per sample, as output {match.describe()}"
    return "raw", (f"the labels ({y.dtype}{list(per)} per sample) fit no output ({probe.describe()}): fidelity to fp32 "
                   "only")


TASKS.register("auto", schema=AutoTaskConfig)(infer)
