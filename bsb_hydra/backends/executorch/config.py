"""backend=executorch's config schema (conf/backend/executorch.yaml names it: ``/schema/backend/executorch``).
Registered with the backend itself (``BACKENDS.register_lazy("executorch", schema=...)`` in the
package's __init__), so Hydra's ConfigStore gets it from the backend's package."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.runtime import BackendConfig


@dataclass
class ExecutorchBackendConfig(BackendConfig):
    name: str = "executorch"
    # The upper bound of the .pte's dynamic batch dimension (torch.export Dim("batch", max=...)).
    # ExecuTorch plans the memory of every tensor outside the XNNPACK delegate (the inputs, the
    # delegate's outputs, the ops it did not take) for this bound and allocates it when the method
    # loads, so a larger bound is more resident memory, not a free choice. null = the largest of
    # benchmark.batch_sizes (the evaluation feeds larger batches in chunks of it; the chunks are not
    # timed). 1 = a static batch-1 export.
    max_batch: Optional[int] = None

    def __post_init__(self) -> None:
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"backend.max_batch={self.max_batch} is not allowed: use a batch size >= 1, or null "
                              "(the largest of benchmark.batch_sizes)")
