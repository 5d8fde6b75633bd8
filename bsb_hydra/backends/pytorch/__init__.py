"""backend=pytorch: PyTorch on the CPU (TorchScript or AOTInductor artifacts). One package holds all of
it: ``config`` (the schema of conf/backend/pytorch.yaml), ``build`` (each scheme's build: the sweep's
side), ``int4_torch`` (int4 weight-only Linear), ``runner`` (what the benchmark worker runs),
``profile`` (torch.profiler as the why-slow summary) and ``peak``.

This module registers the backend by reference and imports nothing else: the benchmark worker asks
the registry for the Runner only (BACKENDS.runner), and loads nothing but torch."""
from bsb_hydra.backends import BACKENDS

BACKENDS.register_lazy("pytorch", "bsb_hydra.backends.pytorch.build:PytorchBackend",
                       schema="bsb_hydra.backends.pytorch.config:PytorchBackendConfig",
                       runner="bsb_hydra.backends.pytorch.runner:PytorchRunner")
