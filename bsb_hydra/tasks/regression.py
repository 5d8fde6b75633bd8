"""Regression: one float output of values per sample ([N], [N, K] or any shape). MSE and MAE (and
the largest absolute error) against fp32's values, and, when the data has float targets of the
output's size per sample, against them for the cell and for its fp32 reference, with the deltas.
Lower is better. Streamed: running sums per batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bsb_hydra.config.task import TaskConfig
from bsb_hydra.tasks import TASKS
from bsb_hydra.tasks.base import Score, Task, TaskError, TaskScorer, rows


@dataclass
class RegressionTaskConfig(TaskConfig):
    name: str = "regression"


class Sums:
    def __init__(self) -> None:
        self.se = self.ae = 0.0
        self.count = 0
        self.max = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        d = rows(a) - rows(b)
        self.se += float(np.sum(d * d))
        self.ae += float(np.sum(np.abs(d)))
        self.count += d.size
        self.max = max(self.max, float(np.abs(d).max()) if d.size else 0.0)

    def mse(self) -> float:
        return self.se / self.count if self.count else float("nan")

    def mae(self) -> float:
        return self.ae / self.count if self.count else float("nan")


class RegressionScorer(TaskScorer):
    def __init__(self, task: "Regression") -> None:
        super().__init__([o.name for o in task.probe.outputs], task.index)
        self.k = task.index
        self.vs_fp32, self.cell, self.ref = Sums(), Sums(), Sums()
        self.labelled = False

    def add(self, cell, ref, labels) -> None:
        a, b = cell[self.k], ref[self.k]
        self.vs_fp32.add(a, b)
        if labels is not None:
            y = np.asarray(labels, dtype=np.float64).reshape(len(a), -1)
            self.labelled = True
            self.cell.add(a, y)
            self.ref.add(b, y)

    def finish(self) -> Score:
        m = {"mse_vs_fp32": self.vs_fp32.mse(), "mae_vs_fp32": self.vs_fp32.mae(),
             "max_abs_error_vs_fp32": self.vs_fp32.max}
        if self.labelled:
            m.update({"mse": self.cell.mse(), "mae": self.cell.mae(), "fp32_mse": self.ref.mse(),
                      "fp32_mae": self.ref.mae()})
            m["mae_delta"] = m["mae"] - m["fp32_mae"]
            m["mse_delta"] = m["mse"] - m["fp32_mse"]
        return Score(m)


@TASKS.register("regression", schema=RegressionTaskConfig)
class Regression(Task):
    name = "regression"
    quality = ("mae", "mae_vs_fp32")
    higher_is_better = False

    def check(self) -> None:
        self.index = self.output_index(lambda o: o.floating, "regression reads a float output")
        o = self.probe.outputs[self.index]
        if not o.floating:
            raise TaskError(f"task=regression: output {o.describe()} is not float values")
        if self.labelled:
            y = np.asarray(self.ds.y_test[:1])
            if not np.issubdtype(y.dtype, np.floating) or int(np.prod(y.shape[1:])) != int(np.prod(o.shape)):
                raise TaskError(f"task=regression: the targets are {y.dtype}{list(y.shape[1:])} per sample; the output "
                                f"{o.describe()} needs float targets of {int(np.prod(o.shape))} value(s) per sample")

    def scorer(self) -> RegressionScorer:
        return RegressionScorer(self)

    def describe(self) -> str:
        return f"regression of output {self.probe.outputs[self.index].describe()}"
