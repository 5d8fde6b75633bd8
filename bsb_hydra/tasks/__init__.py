"""Tasks: what a model's outputs mean, and how a quantized model's outputs are scored against its fp32
reference (and against labels when the data has them). One module per task, registered with its
config schema (conf/task/<name>.yaml); ``task=auto`` (the default) infers the task from the model and
its outputs (bsb_hydra/tasks/auto.py) and logs why.

classification   class logits [N, C]: accuracy, top-1 agreement, McNemar (the only task with them)
embedding        vectors [N, D]: cosine to fp32 per sample, top-10 nearest-neighbour overlap
segmentation     per-pixel class scores [N, C, H, W] (or one channel, or integer masks): pixel
                 agreement and mean IoU against fp32's masks and against label masks
detection        boxes, scores, classes: mAP@[.5:.95] and mAP@.5 (torchmetrics over pycocotools)
                 against fp32's detections and against labelled boxes
image_to_image   images [N, C, H, W]: PSNR, SSIM, MSE, MAE against fp32 and against target images
regression       values [N, ...]: MSE, MAE against fp32 and against targets
raw              nothing but the fidelity every task logs: per output SQNR, cosine, max |error|"""
from __future__ import annotations

from bsb_hydra.registry import Registry

TASKS = Registry("task", "bsb_hydra.tasks")


def task_names():
    return [n for n in TASKS.options() if n not in ("base",)]


def resolve(task_cfg, model_cfg, probe, ds):
    """The cell's Task, checked against the probe's outputs and the data's labels: (task, why), ``why``
    the rule that inferred it for task=auto ('' when the task was given)."""
    import dataclasses

    from bsb_hydra.models import model_label

    name, why = task_cfg.name, ""
    if name == "auto":
        name, why = TASKS.get("auto")(model_cfg, probe, ds)
        schema = TASKS.schema(name)
        task_cfg = schema(**{f.name: getattr(task_cfg, f.name) for f in dataclasses.fields(task_cfg)
                             if f.name != "name" and f.name in {g.name for g in dataclasses.fields(schema)}})
    task = TASKS.get(name)(task_cfg, ds, probe, model_label(model_cfg))
    task.check()
    return task, why
