"""Every group option's schema, and their registration in Hydra's ConfigStore.

Model and data options register their schema with their builder or loader
(``MODELS.register(name, schema=...)`` in bsb_hydra/models/, ``DATASETS.register`` in bsb_hydra/data/);
the other groups' schemas are in this package. A YAML in conf/<group>/ names its schema in its
defaults list (``- /schema/<group>/<name>@_here_``)."""
from __future__ import annotations

from typing import Any, Dict

from bsb_hydra.config.data import ImageDataConfig, TextDataConfig
from bsb_hydra.config.quant import (AutoQuantConfig, DynamicQuantConfig, FakeQuantConfig, Fp16Config, Fp32Config,
                                    Int4WeightOnlyQuantConfig, QatQuantConfig, StaticQuantConfig)
from bsb_hydra.config.run import Config, TrainConfig
from bsb_hydra.config.runtime import DeviceConfig

_FIXED = {
    "quant": {"fp32": Fp32Config, "fp16": Fp16Config, "dynamic": DynamicQuantConfig, "static": StaticQuantConfig,
              "qat": QatQuantConfig, "auto": AutoQuantConfig, "int4_weight_only": Int4WeightOnlyQuantConfig,
              "fake_quant": FakeQuantConfig},
    "device": {"base": DeviceConfig},
    "train": {"base": TrainConfig},
}


def schemas(group: str) -> Dict[str, Any]:
    """{option name: dataclass} of a group. Model and data schemas come from their modules' registries."""
    if group == "model":
        from bsb_hydra.models import MODELS

        return MODELS.schemas()
    if group == "task":
        from bsb_hydra.tasks import TASKS

        return TASKS.schemas()
    if group == "data":
        from bsb_hydra.data import DATASETS

        return {"image": ImageDataConfig, "text": TextDataConfig, **DATASETS.schemas()}
    if group == "backend":  # each backend's package (bsb_hydra/backends/<name>/) registers its own
        from bsb_hydra.backends import BACKENDS

        return BACKENDS.schemas()
    return dict(_FIXED.get(group, {}))


def model_schema(name: str):
    """The schema of one model option, importing only its module (None if there is no such option)."""
    from bsb_hydra.models import MODELS

    return MODELS.schema(name)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group in ("model", "data", "task", "backend", *_FIXED):
        for name, node in schemas(group).items():
            cs.store(group=f"schema/{group}", name=name, node=node)
