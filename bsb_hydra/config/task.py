"""The base schema of the task group (conf/task/*.yaml). Each option's own schema lives in its module
under bsb_hydra/tasks/, registered with its task (``TASKS.register(name, schema=...)``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING


@dataclass
class TaskConfig:
    # The task (fixed by the option): what the outputs mean and how they are scored (the task tag).
    name: str = MISSING
    # The output the task reads, by name or index (0 = the first); null = the first output the task
    # can read. Every output's fidelity to fp32 (SQNR, cosine, max |error|) is logged either way.
    output: Optional[str] = None
