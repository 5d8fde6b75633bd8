"""Backends: one module each. A backend turns the fp32 torch model into a deployable artifact for
a scheme (``build``) and runs that artifact (``Runner``, used inside the benchmark worker).
Module top levels import only numpy: the worker must load nothing but the runtime it measures."""
from bsb_hydra.registry import Registry

BACKENDS = Registry("backend", "bsb_hydra.backends")


def get_backend(name: str):
    return BACKENDS.get(name)()
