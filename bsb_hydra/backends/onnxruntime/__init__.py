"""backend=onnxruntime: ONNX Runtime's CPU execution provider, with ORT's own quantization tools. One
package holds all of it: ``config`` (the schema of conf/backend/onnxruntime.yaml), ``build`` (the ONNX
export and each scheme's build: the sweep's side), ``qat_onnx`` (QAT's QDQ export), ``runner`` (what
the benchmark worker runs), ``profile`` (ORT's session profiler as the why-slow summary) and ``peak``
(the machine's limit through ORT's GEMM kernels).

This module registers the backend by reference and imports nothing else: the benchmark worker asks
the registry for the Runner only (BACKENDS.runner), and loads nothing but onnxruntime."""
from bsb_hydra.backends import BACKENDS

BACKENDS.register_lazy("onnxruntime", "bsb_hydra.backends.onnxruntime.build:OnnxruntimeBackend",
                       schema="bsb_hydra.backends.onnxruntime.config:OnnxruntimeBackendConfig",
                       runner="bsb_hydra.backends.onnxruntime.runner:OnnxruntimeRunner")
