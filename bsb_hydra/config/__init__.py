"""Structured configs: one dataclass per config-group option, registered in Hydra's ConfigStore.

The YAML files in ``conf/<group>/`` name their schema in their defaults list
(``- /schema/<group>/<name>@_here_``), so Hydra type-checks every value and rejects unknown keys
while composing. ``validate(cfg)`` turns the composed config into these dataclasses, which runs
each ``__post_init__``: range checks that name the bad value and what is allowed. All of this
happens before any data is loaded or any model is trained.

By concern: ``base`` (the error, the range check), ``model`` / ``data`` (the base schemas; each
option's own schema is in its module under bsb_hydra/models/ or bsb_hydra/data/), ``quant``,
``runtime`` (backend, device), ``run`` (train, benchmark, mlflow, paths, debug, the root Config),
``store`` (ConfigStore registration), ``checks`` (validate), ``overrides`` (the command line)."""
from bsb_hydra.config.base import ConfigError, InputError
from bsb_hydra.config.checks import validate
from bsb_hydra.config.data import DataConfig, ImageDataConfig, TextDataConfig
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.config.overrides import (CONF_DIR, GROUP_NAMES, check_group_overrides, defer_group_keys,
                                        group_options, snapshot_conf)
from bsb_hydra.config.quant import (AutoQuantConfig, CalibrationMethod, DynamicQuantConfig, Fallback, FakeQuantConfig,
                                    Fp16Config, Fp32Config, Granularity, Int4WeightOnlyQuantConfig, QatQuantConfig,
                                    QuantConfig, Scheme, StaticQuantConfig)
from bsb_hydra.config.run import (BenchmarkConfig, Config, DebugConfig, FaultStage, MlflowConfig, PathsConfig,
                                  TrainConfig)
from bsb_hydra.config.runtime import ISA_FEATURES, BackendConfig, DeviceConfig
from bsb_hydra.config.store import register_configs, schemas
from bsb_hydra.config.task import TaskConfig

__all__ = [n for n in dir() if not n.startswith("_")]
