"""raw: no reading of what the outputs mean, only every output's fidelity to fp32 (SQNR in dB,
cosine similarity per sample, the largest absolute error). The task for an output no other task
understands, and what ``task=auto`` picks when it cannot tell (the cell's tag task_inferred says why)."""
from __future__ import annotations

from dataclasses import dataclass

from bsb_hydra.config.task import TaskConfig
from bsb_hydra.tasks import TASKS
from bsb_hydra.tasks.base import Score, Task, TaskScorer


@dataclass
class RawTaskConfig(TaskConfig):
    name: str = "raw"


class RawScorer(TaskScorer):
    def add(self, cell, ref, labels) -> None:
        pass

    def finish(self) -> Score:
        return Score()


@TASKS.register("raw", schema=RawTaskConfig)
class Raw(Task):
    name = "raw"
    # the read output's cosine to fp32 (per sample, mean; task.output picks which)
    quality = ("", "cosine_mean")

    def check(self) -> None:
        self.index = self.output_index(lambda o: True, "")

    def scorer(self) -> RawScorer:
        return RawScorer([o.name for o in self.probe.outputs], self.index)

    def describe(self) -> str:
        return f"raw: fidelity to fp32 of every output ({self.probe.describe()})"
