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

    def schemas(self) -> Dict[str, Any]:
        """Every option's schema, by name: imports each module of the package once."""
        pkg = importlib.import_module(self.package)
        for m in pkgutil.iter_modules(pkg.__path__):  # helper modules (data/idx.py) register nothing
            if not m.name.startswith("_"):
                importlib.import_module(f"{self.package}.{m.name}")
        return dict(sorted(self._schemas.items()))

    def schema(self, name: str) -> Any:
        """The schema of one option (imports its module only), or None."""
        try:
            self.get(name)
        except KeyError:
            return None
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
        return self._items[name]
