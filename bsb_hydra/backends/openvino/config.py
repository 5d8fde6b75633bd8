"""backend=openvino's config schema (conf/backend/openvino.yaml names it: ``/schema/backend/openvino``).
Registered with the backend in the package's __init__, so Hydra's ConfigStore gets it from the
backend's package (bsb_hydra/config/store.py asks each backend package for its schema)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.runtime import BackendConfig


@dataclass
class OpenvinoBackendConfig(BackendConfig):
    name: str = "openvino"
    # The ONNX opset of the torch model's export, the graph OpenVINO converts (ov.convert_model);
    # a user's ONNX file (model=onnx) is converted as it is.
    opset: int = 18
    # Shapes the CPU plugin compiles for: "static" = one compiled model per batch size, its shape
    # fixed before the clock (OpenVINO's advice for latency; the CPU plugin plans memory and picks
    # kernels once), "dynamic" = one compiled model with a dynamic batch dimension for every call.
    shapes: str = "static"
    # The CPU plugin's DYNAMIC_QUANTIZATION_GROUP_SIZE for the cells with NNCF-compressed weights:
    # N = the activations of each FullyConnected whose weights are compressed are quantized to int8 at
    # run time, one scale per group of N input channels, and multiplied in int8; 0 = off (the weights
    # are decompressed inside the kernel, activations stay float). null = 32 for quant=dynamic (what
    # makes it dynamic quantization), the plugin's own default for quant=int4_weight_only (32 on the
    # AVX-512 EPYC here). fp32, fp16 and static cells: not set.
    dynamic_quantization_group_size: Optional[int] = None

    SHAPES: ClassVar[tuple] = ("static", "dynamic")

    def __post_init__(self) -> None:
        if self.shapes not in self.SHAPES:
            raise ConfigError(f"backend.shapes={self.shapes!r} is not allowed: use one of {', '.join(self.SHAPES)}")
        if not 13 <= self.opset <= 21:
            raise ConfigError(f"backend.opset={self.opset} is not allowed: use 13..21")
        g = self.dynamic_quantization_group_size
        if g is not None and g < 0:
            raise ConfigError(f"backend.dynamic_quantization_group_size={g} is not allowed: use 0 (off), a group "
                              "size such as 32, or null (the CPU plugin's default)")
