"""backend=onnxruntime's config schema (conf/backend/onnxruntime.yaml names it:
``/schema/backend/onnxruntime``), registered with the backend in the package's __init__."""
from __future__ import annotations

from dataclasses import dataclass

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.runtime import BackendConfig


@dataclass
class OnnxruntimeBackendConfig(BackendConfig):
    name: str = "onnxruntime"
    opset: int = 18  # the ONNX opset of the export (13..21)
    # ORT graph optimisation level for the measured session: disable | basic | extended | all
    graph_optimization: str = "all"
    # quant=dynamic on a transformer (BERT encoder): quantize the graph of ORT's transformer optimizer
    # (fused Attention -> QAttention, EmbedLayerNormalization -> QEmbedLayerNormalization), ORT's own
    # recipe. MiniLM-L6, seq 128, AMX Xeon, 2 threads: b1 10-12% faster than unfused (8.0-8.3 vs
    # 9.0-9.4 ms), b8 a tie, 47 MB less RSS, the same accuracy. false = the unfused graph (the only
    # one before 2026-12-04). No effect on other cells.
    transformer_optimizer: bool = True

    def __post_init__(self) -> None:
        allowed = ("disable", "basic", "extended", "all")
        if self.graph_optimization not in allowed:
            raise ConfigError(
                f"backend.graph_optimization={self.graph_optimization!r} is not allowed: use one of {allowed}"
            )
        if not 13 <= self.opset <= 21:
            raise ConfigError(f"backend.opset={self.opset} is not allowed: use 13..21")

