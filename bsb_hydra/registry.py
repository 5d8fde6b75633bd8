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
    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._items: Dict[str, Any] = {}
        self._schemas: Dict[str, Any] = {}

    def register(self, name: str, schema: Any = None) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            self._items[name] = obj
            if schema is not None:
                self._schemas[name] = schema
            return obj
        return deco

    def register_lazy(self, name: str, target: str, schema: str) -> None:
        """Register ``name`` by where its implementation and schema are (``"module:attr"``), imported
        when first asked for: a backend package's __init__ registers so, and the benchmark worker,
        which imports that package for its Runner, never imports the build side or the config."""
        self._items[name] = target
        self._schemas[name] = schema

    @staticmethod
    def _resolve(ref: Any) -> Any:
        if isinstance(ref, str):
            module, _, attr = ref.partition(":")
            return getattr(importlib.import_module(module), attr)
        return ref

    def schemas(self, packages_only: bool = False) -> Dict[str, Any]:
        """Every option's schema, by name: imports each module of the package once. ``packages_only``:
        only the options that are sub-packages (a backend as a package, bsb_hydra/backends/<name>/:
        its helper modules beside it, some of which import torch, stay unimported)."""
        pkg = importlib.import_module(self.package)
        for m in pkgutil.iter_modules(pkg.__path__):  # helper modules (data/idx.py) register nothing
            if not m.name.startswith("_") and (m.ispkg or not packages_only):
                importlib.import_module(f"{self.package}.{m.name}")
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
        pkg = importlib.import_module(self.package)
        names = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
        return sorted((names - {"base"}) | set(self._items))

    def get(self, name: str) -> Any:
        if name not in self._items:
            try:
                importlib.import_module(f"{self.package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{self.package}.{name}":
                    raise
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; valid options: {', '.join(self.options())}")
        self._items[name] = self._resolve(self._items[name])
        return self._items[name]
