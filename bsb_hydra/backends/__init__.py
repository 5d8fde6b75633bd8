"""Backends: one package each, bsb_hydra/backends/<name>/. A backend turns the fp32 model into a
deployable artifact for a scheme (its ``build`` module: a Backend subclass, every hook declared on
bsb_hydra/backends/base.py) and runs that artifact (its ``runner`` module: a Runner, used inside the
benchmark worker). The package's __init__ registers both by reference; its config schema, profile
parser, peak kernels and converters live beside them. Adding a backend = its package,
conf/backend/<name>.yaml and its tests.
Runner modules import only numpy at their top level: the worker must load nothing but the runtime it
measures."""
from bsb_hydra.registry import Registry

BACKENDS = Registry("backend", "bsb_hydra.backends", packages_only=True)


def get_backend(name: str):
    return BACKENDS.get(name)()
