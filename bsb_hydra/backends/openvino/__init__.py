"""backend=openvino: the OpenVINO runtime (CPU plugin), with NNCF for quantization. One package holds
all of it: ``config`` (the schema of conf/backend/openvino.yaml), ``build`` (the fp32 conversion and
each scheme's build: the sweep's side), ``runner`` (what the benchmark worker runs) and ``profile``
(the CPU plugin's performance counters as the why-slow summary).

The artifact is OpenVINO IR: ``<scheme>.xml`` (the graph) and ``<scheme>.bin`` (the weights) side
by side; the Artifact names the .bin as a companion, so the measured size is both files.

This module registers the backend by reference (imported when the sweep asks for it) and imports
only the runner (numpy): the benchmark worker imports this package for RUNNER and RUNTIME_MODULE and
must load nothing but the runtime it measures (not the build side, nncf, or bsb_hydra.config)."""
from bsb_hydra.backends import BACKENDS
from bsb_hydra.backends.openvino.runner import OpenvinoRunner

BACKENDS.register_lazy("openvino", "bsb_hydra.backends.openvino.build:OpenvinoBackend",
                       schema="bsb_hydra.backends.openvino.config:OpenvinoBackendConfig")

RUNTIME_MODULE = "openvino"  # what the benchmark worker imports before its baseline
RUNNER = OpenvinoRunner
