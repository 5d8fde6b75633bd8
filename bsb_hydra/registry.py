"""Name -> implementation lookup, one module per option.

``Registry("model", "bsb_hydra.models")`` finds option ``cnn`` by importing
``bsb_hydra.models.cnn``, whose module registers itself with ``@MODELS.register("cnn", schema=CnnConfig)``:
the builder and the dataclass schema of its config-group option (its keys and range checks, stored in
Hydra's ConfigStore as ``schema/<group>/<name>``). Adding a model, data set or backend is adding a
module (and its YAML in conf/)."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Dict, List


class Registry:
    def __init__(self, kind: str, package: str, packages_only: bool = False) -> None:
        """``packages_only``: the options are the package's sub-packages (a backend is a package,
        bsb_hydra/backends/<name>/); its plain modules (base.py) are not options."""
        self.kind = kind
        self.package = package
        self.packages_only = packages_only
        self._items: Dict[str, Any] = {}
        self._schemas: Dict[str, Any] = {}
        self._runners: Dict[str, Any] = {}

    def register(self, name: str, schema: Any = None, runner: str = "") -> Callable[[Any], Any]:
        """``runner``: a backend's Runner as ``"module:attr"`` (see ``runner``)."""
        def deco(obj: Any) -> Any:
            self._items[name] = obj
            if schema is not None:
                self._schemas[name] = schema
            if runner:
                self._runners[name] = runner
            return obj
        return deco

    def register_lazy(self, name: str, target: str, schema: str, runner: str = "") -> None:
        """Register ``name`` by where its implementation, schema and (a backend's) Runner are
        (``"module:attr"``), imported when first asked for: a backend package's __init__ registers so,
        and the benchmark worker, which asks for the Runner only (``runner(name)``), never imports the
        build side or the config."""
        self._items[name] = target
        self._schemas[name] = schema
        if runner:
            self._runners[name] = runner

    def _load(self, name: str) -> None:
        """Import ``name``'s module (or package), which registers it."""
        if name not in self._items:
            try:
                importlib.import_module(f"{self.package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{self.package}.{name}":
                    raise

    def runner(self, name: str) -> Any:
        """A backend's Runner class: imports the backend's package and its runner module only."""
        self._load(name)
        if name not in self._runners:
            raise KeyError(f"unknown {self.kind} {name!r} (or it registers no runner); valid options: "
                           f"{', '.join(self.options())}")
        self._runners[name] = self._resolve(self._runners[name])
        return self._runners[name]

    def runners(self) -> Dict[str, Any]:
        """Every option's Runner, by name (each option's package imported, its runner resolved)."""
        for name in self.options():
            self._load(name)
        return {name: self.runner(name) for name in sorted(self._runners)}

    @staticmethod
    def _resolve(ref: Any) -> Any:
        if isinstance(ref, str):
            module, _, attr = ref.partition(":")
            return getattr(importlib.import_module(module), attr)
        return ref

    def _modules(self) -> List[str]:
        pkg = importlib.import_module(self.package)
        return [m.name for m in pkgutil.iter_modules(pkg.__path__)
                if not m.name.startswith("_") and (m.ispkg or not self.packages_only)]

    def schemas(self) -> Dict[str, Any]:
        """Every option's schema, by name: imports each module of the package once (a backend's
        package registers its schema by reference: only its config module is imported)."""
        for name in self._modules():  # helper modules (data/idx.py) register nothing
            importlib.import_module(f"{self.package}.{name}")
        self._schemas = {k: self._resolve(v) for k, v in self._schemas.items()}
        return dict(sorted(self._schemas.items()))

    def schema(self, name: str) -> Any:
        """The schema of one option (imports its module only), or None."""
        try:
            self.get(name)
        except KeyError:
            return None
        if name in self._schemas:
            self._schemas[name] = self._resolve(self._schemas[name])
        return self._schemas.get(name)

    def options(self) -> List[str]:
        return sorted((set(self._modules()) - {"base"}) | set(self._items))

    def get(self, name: str) -> Any:
        self._load(name)
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; valid options: {', '.join(self.options())}")
        self._items[name] = self._resolve(self._items[name])
        return self._items[name]
