"""backend=executorch: PyTorch's on-device runtime, ExecuTorch, with its XNNPACK delegate. One package
holds all of it: ``config`` (the schema of conf/backend/executorch.yaml), ``build`` (torch.export,
XNNPACKQuantizer and the lowering to a .pte: the sweep's side), ``runner`` (what the benchmark worker
runs: ExecuTorch's Python runtime) and ``profile`` (ETDump, read by executorch.devtools' Inspector,
as the why-slow summary).

The artifact is one ``<scheme>.pte`` program: the graph, the XNNPACK partitions with their weights,
and the ops XNNPACK left to ExecuTorch's portable kernels.

This module registers the backend by reference and imports nothing else: the benchmark worker asks
the registry for the Runner only (BACKENDS.runner), and loads nothing but the runtime it measures (not
the build side, torchao's quantizer, or bsb_hydra.config)."""
from bsb_hydra.backends import BACKENDS

BACKENDS.register_lazy("executorch", "bsb_hydra.backends.executorch.build:ExecutorchBackend",
                       schema="bsb_hydra.backends.executorch.config:ExecutorchBackendConfig",
                       runner="bsb_hydra.backends.executorch.runner:ExecutorchRunner")
