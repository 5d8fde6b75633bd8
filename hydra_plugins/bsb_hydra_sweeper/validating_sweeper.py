"""Hydra's basic sweeper, plus:

- keys of one option of a config group, swept beside options that do not have them
  (``quant=fp32,fake_quant quant.bits=2,4``: fp32 has no bits) are left out of the jobs whose
  option lacks them, and the jobs that then repeat one another run once. Hydra alone refuses the
  whole sweep ("Key 'bits' not in 'Fp32Config'"). A key that no job's option has is kept, so
  Hydra's own error still names it (a typo is never dropped).
- every job's config is validated (the dataclasses' __post_init__ range checks) before the first
  job of the batch starts, so a bad value such as train.epochs=0 stops the sweep up front instead
  of failing every cell one by one."""
# (No `from __future__ import annotations`: Hydra loads plugins without registering them in
# sys.modules, and dataclasses then fail on string annotations.)
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.checks import validate
from bsb_hydra.config.overrides import GROUP_NAMES


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _group_key(override: str) -> Optional[Tuple[str, str]]:
    """("quant", "bits") for quant.bits=4; None for group choices, plain keys and +/~ overrides."""
    key = _key(override)
    group, dot, rest = key.partition(".")
    return (group, rest) if dot and group in GROUP_NAMES and rest else None


def drop_inapplicable(jobs: List[List[str]], has_key: Callable[[List[str], str], bool]
                      ) -> Tuple[List[List[str]], List[str]]:
    """Leave ``group.key=value`` out of the jobs whose group option has no such key, when some
    other job's option has it; then drop the jobs that repeat an earlier one. ``has_key(choices,
    "group.key")``: does the config composed from these group choices have that key? Returns the
    jobs and one note per key left out."""
    def choices(job: List[str]) -> List[str]:
        return [o for o in job if _group_key(o) is None]

    applies: Dict[Tuple[Tuple[str, ...], str], bool] = {}
    for job in jobs:
        for o in job:
            if _group_key(o) is not None:
                k = (tuple(choices(job)), _key(o))
                if k not in applies:
                    applies[k] = has_key(choices(job), _key(o))
    used = {key for (_, key), ok in applies.items() if ok}
    out: List[List[str]] = []
    seen = set()
    dropped: Dict[str, set] = {}
    for job in jobs:
        keep = []
        for o in job:
            key = _key(o)
            if _group_key(o) is not None and key in used and not applies[(tuple(choices(job)), key)]:
                group = key.split(".", 1)[0]
                dropped.setdefault(key, set()).update(c for c in job if _key(c) == group)
                continue
            keep.append(o)
        if tuple(keep) not in seen:
            seen.add(tuple(keep))
            out.append(keep)
    notes = [f"{key} does not apply to {', '.join(sorted(opts)) or 'the other options'}: left out of those jobs"
             for key, opts in sorted(dropped.items())]
    if len(out) < len(jobs):
        notes.append(f"{len(jobs) - len(out)} job(s) that then repeated another were dropped: {len(out)} jobs run")
    return out, notes


class ValidatingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        super().__init__(max_batch_size, params)
        # _has_key's compositions, one per distinct set of group choices, whatever the number of keys
        # asked of it (a composition is ~0.1 s; a task sweep asks 5 keys of each of its 9 jobs' choices)
        self._composed: Dict[Tuple[str, ...], object] = {}

    def split_arguments(self, overrides, max_batch_size):  # an instance method here (static in Hydra)
        jobs = [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
        jobs, notes = drop_inapplicable(jobs, self._has_key)
        for note in notes:
            print(f"[sweep] {note}", flush=True)
        if max_batch_size is None:
            return [jobs]
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))

    def _has_key(self, choices: List[str], key: str) -> bool:
        if tuple(choices) not in self._composed:
            self._composed[tuple(choices)] = self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(choices))
        node = self._composed[tuple(choices)]
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node.keys():
                return False
            node = node._get_node(part)
        return True

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Hydra's check (each job's config composes: unknown options, keys, types), then the
        dataclasses' range checks on that same composition: one per job, not Hydra's and another."""
        for overrides in batch:
            cfg = self.hydra_context.config_loader.load_sweep_config(
                master_config=self.config, sweep_overrides=list(overrides))
            HydraConfig.instance().set_config(cfg)  # as the launcher does: ${hydra:...} must resolve
            try:
                validate(cfg)  # raises ConfigError naming the key, the value and what is allowed
            except ConfigError as e:  # a usage error: its message, not Hydra's traceback around it
                print(f"Error in the config of the job {' '.join(overrides)}: {e}\nNo job was started.",
                      file=sys.stderr, flush=True)
                sys.exit(1)


@dataclass
class ValidatingSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.bsb_hydra_sweeper.validating_sweeper.ValidatingSweeper"


# Registered by the plugin itself (Hydra imports every module under hydra_plugins/ when it starts):
# `hydra/sweeper: validating` in conf/config.yaml finds it; bsb_hydra.config does not import this module.
ConfigStore.instance().store(group="hydra/sweeper", name="validating", node=ValidatingSweeperConf,
                             provider="bsb_hydra")
