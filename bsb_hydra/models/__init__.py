"""fp32 PyTorch models: each module registers a builder ``(cfg, input_shape, num_classes) -> nn.Module``.

Every model is plain ``nn.Module`` code that torch.fx can trace, so one trained fp32 model feeds
every backend (TorchScript, ONNX export) and every scheme (FX fuses conv+bn(+relu) itself)."""
from bsb_hydra.registry import Registry

MODELS = Registry("model", "bsb_hydra.models")


def build_model(cfg, input_shape, num_classes):
    return MODELS.get(cfg.name)(cfg, tuple(input_shape), num_classes)


def model_label(model_cfg) -> str:
    """What the model is called in cell ids, run names, weight files and the ``model`` tag: the
    option's name, or what it names (resnet18 for model=torchvision model.arch=resnet18). ``model_cfg``
    may be the composed DictConfig or the validated dataclass."""
    schema = MODELS.schema(model_cfg.name)
    return schema.label_of(model_cfg) if schema is not None else str(model_cfg.name)
