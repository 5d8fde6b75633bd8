"""Image to image (super-resolution, denoising, style, depth): one output of images [N, C, H, W].

Per sample, through torchmetrics: PSNR (dB, at ``task.data_range``) and SSIM (Gaussian window),
plus MSE and MAE; each averaged over the samples. Against fp32's images (always: ``*_vs_fp32``)
and, when the data has target images of the output's shape, against them for the cell and for its
fp32 reference (``psnr``, ``fp32_psnr``, ``psnr_delta_db``, ...). Streamed: per batch, only the
per-sample figures are kept."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from bsb_hydra.config.base import positive
from bsb_hydra.config.task import TaskConfig
from bsb_hydra.tasks import TASKS
from bsb_hydra.tasks.base import Score, Task, TaskError, TaskScorer


@dataclass
class ImageToImageTaskConfig(TaskConfig):
    name: str = "image_to_image"
    # The images' value range for PSNR and SSIM (1.0 for [0, 1], 255 for 8-bit); null = from the target
    # images (else the fp32 probe's outputs): 1.0 within [-0.5, 1.5], 255 within [0, 255], else their span.
    data_range: Optional[float] = None

    def __post_init__(self) -> None:
        positive("task.data_range", self.data_range, allow_none=True)


SSIM_BATCH = 8  # samples per SSIM call: its Gaussian-filtered maps are several times the images' size


def image_scores(pred: np.ndarray, target: np.ndarray, data_range: float) -> Dict[str, np.ndarray]:
    """Per sample: psnr, ssim, mse, mae."""
    if len(pred) > SSIM_BATCH:
        parts = [image_scores(pred[i:i + SSIM_BATCH], target[i:i + SSIM_BATCH], data_range)
                 for i in range(0, len(pred), SSIM_BATCH)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
    dims = tuple(range(1, p.ndim))
    err = (p - t).double()
    out = {"mse": err.pow(2).mean(dim=dims).numpy(), "mae": err.abs().mean(dim=dims).numpy(),
           "psnr": peak_signal_noise_ratio(p, t, data_range=data_range, reduction="none", dim=dims).double().numpy()}
    if p.ndim == 4:
        out["ssim"] = structural_similarity_index_measure(p, t, data_range=data_range, reduction="none").double().numpy()
    return out


class ImageScorer(TaskScorer):
    def __init__(self, task: "ImageToImage") -> None:
        super().__init__([o.name for o in task.probe.outputs], task.index)
        self.k, self.range = task.index, task.data_range
        self.parts: Dict[str, List[np.ndarray]] = {}

    def _keep(self, prefix: str, scores: Dict[str, np.ndarray]) -> None:
        for key, v in scores.items():
            self.parts.setdefault(prefix + key, []).append(v)

    def add(self, cell, ref, labels) -> None:
        a, b = cell[self.k], ref[self.k]
        self._keep("vs_fp32:", image_scores(a, b, self.range))
        if labels is not None:
            y = np.asarray(labels, dtype=np.float32).reshape(a.shape)
            self._keep("cell:", image_scores(a, y, self.range))
            self._keep("ref:", image_scores(b, y, self.range))

    def finish(self) -> Score:
        v = {k: np.concatenate(p) for k, p in self.parts.items()}
        m = {f"{k.split(':')[1]}_vs_fp32": float(np.mean(x)) for k, x in v.items() if k.startswith("vs_fp32:")}
        if "cell:psnr" in v:
            for key in ("psnr", "ssim", "mse", "mae"):
                if f"cell:{key}" in v:
                    m[key], m[f"fp32_{key}"] = float(np.mean(v[f"cell:{key}"])), float(np.mean(v[f"ref:{key}"]))
            m["psnr_delta_db"] = m["psnr"] - m["fp32_psnr"]
        m["image_data_range"] = float(self.range)
        return Score(m, arrays={"psnr_vs_fp32.npy": v["vs_fp32:psnr"].astype(np.float32)})


def infer_range(values: np.ndarray) -> float:
    """1.0 for images around [0, 1] (an output may over- or undershoot a little), 255 for 8-bit
    values, else the values' span."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo >= -0.5 and hi <= 1.5:
        return 1.0
    if lo >= -2.55 and hi <= 300.0:
        return 255.0
    return max(hi - lo, 1e-6)


@TASKS.register("image_to_image", schema=ImageToImageTaskConfig)
class ImageToImage(Task):
    name = "image_to_image"
    quality = ("psnr", "psnr_vs_fp32")

    def check(self) -> None:
        self.index = self.output_index(lambda o: o.floating and len(o.shape) == 3,
                                       "image_to_image reads float images [N, C, H, W]")
        o = self.probe.outputs[self.index]
        if not o.floating or len(o.shape) != 3:
            raise TaskError(f"task=image_to_image: output {o.describe()} is not float images [N, C, H, W]")
        # the targets' range when the data has them (what the images are), else fp32's outputs'
        self.data_range = self.cfg.data_range or infer_range(
            np.asarray(self.ds.y_test[:64]) if self.labelled else self.probe.values[self.index])
        if self.labelled:
            y = np.asarray(self.ds.y_test[:1])
            if not np.issubdtype(y.dtype, np.floating) or int(np.prod(y.shape[1:])) != int(np.prod(o.shape)):
                raise TaskError(f"task=image_to_image: the targets are {y.dtype}{list(y.shape[1:])} per sample; the "
                                f"output {o.describe()} needs float target images of {list(o.shape)} per sample")

    def scorer(self) -> ImageScorer:
        return ImageScorer(self)

    def describe(self) -> str:
        return f"image_to_image of output {self.probe.outputs[self.index].describe()} (data range {self.data_range:g})"
