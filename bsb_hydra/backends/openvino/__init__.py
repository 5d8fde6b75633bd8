"""backend=openvino: the OpenVINO runtime (CPU plugin), with NNCF for quantization. One package holds
all of it: ``config`` (the schema of conf/backend/openvino.yaml), ``build`` (the fp32 conversion and
each scheme's build: the sweep's side), ``runner`` (what the benchmark worker runs) and ``profile``
(the CPU plugin's performance counters as the why-slow summary).

The artifact is OpenVINO IR: ``<scheme>.xml`` (the graph) and ``<scheme>.bin`` (the weights) side
by side; the Artifact names the .bin as a companion, so the measured size is both files.

This module registers the backend by reference and imports nothing else: the benchmark worker asks
the registry for the Runner only (BACKENDS.runner), and loads nothing but openvino (not the build
side, nncf, or bsb_hydra.config)."""
from bsb_hydra.backends import BACKENDS

BACKENDS.register_lazy("openvino", "bsb_hydra.backends.openvino.build:OpenvinoBackend",
                       schema="bsb_hydra.backends.openvino.config:OpenvinoBackendConfig",
                       runner="bsb_hydra.backends.openvino.runner:OpenvinoRunner")
