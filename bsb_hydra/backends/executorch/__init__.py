"""backend=executorch: PyTorch's on-device runtime, ExecuTorch, with its XNNPACK delegate. One package
holds all of it: ``config`` (the schema of conf/backend/executorch.yaml), ``build`` (torch.export,
XNNPACKQuantizer and the lowering to a .pte: the sweep's side), ``runner`` (what the benchmark worker
runs: ExecuTorch's Python runtime) and ``profile`` (ETDump, read by executorch.devtools' Inspector,
as the why-slow summary).

The artifact is one ``<scheme>.pte`` program: the graph, the XNNPACK partitions with their weights,
and the ops XNNPACK left to ExecuTorch's portable kernels.

This module registers the backend by reference (imported when the sweep asks for it) and imports
only the runner (numpy): the benchmark worker imports this package for RUNNER and RUNTIME_MODULE and
must load nothing but the runtime it measures (not the build side, torchao's quantizer, or
bsb_hydra.config)."""
from bsb_hydra.backends import BACKENDS
from bsb_hydra.backends.executorch.runner import ExecutorchRunner

BACKENDS.register_lazy("executorch", "bsb_hydra.backends.executorch.build:ExecutorchBackend",
                       schema="bsb_hydra.backends.executorch.config:ExecutorchBackendConfig")

# What the benchmark worker imports before its baseline. It imports torch (its tensors are the
# runtime's inputs and outputs) and executorch.exir (its warning class), not only the C++ runtime:
# a Python user of ExecuTorch's runtime loads the same (docs/methodology.md).
RUNTIME_MODULE = "executorch.runtime"
RUNNER = ExecutorchRunner
