"""fp32 PyTorch models: each module registers a builder ``(cfg, input_shape, num_classes) -> nn.Module``.

Every model is plain ``nn.Module`` code that torch.fx can trace, so one trained fp32 model feeds
every backend (TorchScript, ONNX export) and every scheme (FX fuses conv+bn(+relu) itself)."""
from bsb_hydra.registry import Registry

MODELS = Registry("model", "bsb_hydra.models")


def build_model(cfg, input_shape, num_classes):
    return MODELS.get(cfg.name)(cfg, tuple(input_shape), num_classes)
