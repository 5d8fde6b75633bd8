"""Hydra's basic sweeper, plus: every job's config is validated (the dataclasses' __post_init__
range checks) before the first job of the batch starts, so a bad value such as train.epochs=0
stops the sweep up front instead of failing every cell one by one."""
# (No `from __future__ import annotations`: Hydra loads plugins without registering them in
# sys.modules, and dataclasses then fail on string annotations.)
from dataclasses import dataclass
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.hydra_config import HydraConfig

from bsb_hydra.config import validate


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(batch)  # composition: unknown options, keys, types
        for overrides in batch:
            cfg = self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides))
            HydraConfig.instance().set_config(cfg)  # as the launcher does: ${hydra:...} must resolve
            validate(cfg)  # raises ConfigError naming the key, the value and what is allowed


@dataclass
class ValidatingSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.bsb_hydra_sweeper.validating_sweeper.ValidatingSweeper"
