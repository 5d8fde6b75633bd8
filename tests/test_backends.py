"""A backend is one package (bsb_hydra/backends/<name>/): it registers its build, schema and Runner by
reference; the worker's side (the Runner) imports nothing heavy; every hook the sweep calls is declared
on the base class."""
import subprocess

from bsb_hydra.backends import BACKENDS
from bsb_hydra.backends.base import Backend, Runner
from tests.conftest import PYTHON, ROOT

HEAVY = ("torch", "onnxruntime", "openvino", "tensorflow", "ai_edge_litert", "onnx", "hydra", "omegaconf", "mlflow",
         "nncf", "executorch")


def test_every_backend_is_a_package_with_build_schema_and_runner():
    names = BACKENDS.options()
    assert {"pytorch", "onnxruntime", "tflite", "openvino"} <= set(names)
    for name in names:
        backend = BACKENDS.get(name)
        assert issubclass(backend, Backend) and backend.name == name
        assert backend.__module__ == f"bsb_hydra.backends.{name}.build"
        assert BACKENDS.schema(name).__module__ == f"bsb_hydra.backends.{name}.config"
        runner = BACKENDS.runner(name)
        assert issubclass(runner, Runner) and runner.runtime_module and runner.libraries, name


def test_the_workers_side_of_each_backend_imports_nothing_heavy():
    """What the benchmark worker imports to find a Runner (before it imports the runtime itself)."""
    for name in BACKENDS.options():
        code = (f"import sys; from bsb_hydra.backends import BACKENDS; BACKENDS.runner({name!r}); "
                f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
        out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]", (name, out)


def test_hooks_are_declared_on_the_base_class():
    """Every method a backend package defines overrides one the base class declares (or is private)."""
    for name in BACKENDS.options():
        cls = BACKENDS.get(name)
        own = {k for k, v in vars(cls).items() if callable(v) and not k.startswith("_")}
        undeclared = {k for k in own if not hasattr(Backend, k) and not k.startswith("build_")}
        assert not undeclared, (name, undeclared)
