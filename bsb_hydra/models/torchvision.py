"""Any torchvision classification architecture by name (``model=torchvision model.arch=resnet18``), at
``model.input_size`` (224) with 3 channels, built with ``torchvision.models.get_model(arch,
weights=None, num_classes=...)``. torchvision's pretrained weights download from a hub, which these
machines cannot reach, so the weights are trained on the data (``train=realsize``: short; latency does
not depend on it) or loaded from ``model.checkpoint``. The data is fitted to the input size
(bsb_hydra/data/transforms.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

from bsb_hydra.config.base import ConfigError, positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS


def classification_models() -> List[str]:
    """torchvision's classification builders (detection, segmentation, video and quantized ones are
    in submodules and left out)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


@dataclass
class TorchvisionConfig(ModelConfig):
    name: str = "torchvision"
    arch: str = "resnet18"  # a torchvision classification builder (an unknown name lists them all)
    # Side of the square input; the images are resized to it.
    input_size: int = 224
    # Extra keyword arguments of the builder (e.g. {dropout: 0.3} for mobilenet_v2).
    kwargs: Any = None  # a dict: model.kwargs={width:16,depth:2} (untyped, so one override sets it whole)
    source_kind: ClassVar[str] = "torchvision"

    def __post_init__(self) -> None:
        positive("model.input_size", self.input_size)
        names = classification_models()
        if self.arch not in names:
            raise ConfigError(f"model.arch={self.arch!r} is not a torchvision classification model: choose one of "
                              f"{', '.join(names)}")

    @classmethod
    def label_of(cls, cfg) -> str:
        return cfg.arch

    def fixed_input_shape(self):
        return (3, self.input_size, self.input_size)

    def source_ref(self) -> str:
        import torchvision

        return f"torchvision=={torchvision.__version__.split('+')[0]} models.get_model({self.arch!r}, weights=None)"


@MODELS.register("torchvision", schema=TorchvisionConfig)
def build(cfg, input_shape, num_classes):
    import torchvision

    kw = dict(cfg.kwargs or {})
    if cfg.arch in ("inception_v3", "googlenet"):  # one output, no auxiliary heads (weights=None)
        kw.setdefault("aux_logits", False)
        kw.setdefault("init_weights", True)
    if cfg.arch.startswith("vit_"):
        kw.setdefault("image_size", input_shape[-1])
    try:
        return torchvision.models.get_model(cfg.arch, weights=None, num_classes=num_classes, **kw)
    except TypeError as e:
        raise ValueError(f"model.kwargs={kw} do not fit torchvision's {cfg.arch} builder: {e}") from None
