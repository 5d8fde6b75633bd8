"""backend=tflite's config schema (conf/backend/tflite.yaml names it: ``/schema/backend/tflite``),
registered with the backend in the package's __init__."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.runtime import BackendConfig


@dataclass
class TfliteBackendConfig(BackendConfig):
    name: str = "tflite"
    # Full-integer schemes (static, qat): int8 model input and output instead of float ones. The
    # worker quantizes inputs with the model's own scale before the clock starts.
    int8_io: bool = False
    # Run through LiteRT's XNNPACK delegate (the default CPU path); false = the builtin kernels.
    xnnpack: bool = True
    # LiteRT's experimental_default_delegate_latest_features: the default XNNPACK delegate may enable
    # every flag-protected feature (e.g. its dynamically quantized kernels for dynamic-range models).
    xnnpack_latest_features: bool = False
    # How the .tflite is made: keras_twin (the built-in models' Keras twins + TensorFlow's converter),
    # litert_torch (litert-torch converts the torch model, ai-edge-quantizer quantizes it), or auto:
    # the twin where one exists (mlp, cnn, mobilenet, lstm), litert_torch for every other model.
    converter: str = "auto"

    CONVERTERS: ClassVar[tuple] = ("auto", "keras_twin", "litert_torch")

    def __post_init__(self) -> None:
        if self.xnnpack_latest_features and not self.xnnpack:
            raise ConfigError("backend.xnnpack_latest_features=true is not allowed with backend.xnnpack=false: "
                              "the features are XNNPACK's (valid: xnnpack=true, or latest_features=false)")
        if self.converter not in self.CONVERTERS:
            raise ConfigError(f"backend.converter={self.converter!r} is not allowed: use one of "
                              f"{', '.join(self.CONVERTERS)}")

