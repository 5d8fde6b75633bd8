"""Name -> implementation lookup, one module per option.

``Registry("model", "bsb_hydra.models")`` finds option ``cnn`` by importing
``bsb_hydra.models.cnn``, whose module registers itself with ``@MODELS.register("cnn")``.
Adding a model, data set or backend is adding a module (and its config in conf/)."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Dict, List


class Registry:
    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._items: Dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            self._items[name] = obj
            return obj
        return deco

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
