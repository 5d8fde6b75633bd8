"""Read the cells' runs back through MLflow's own search API (a sqlite store or a tracking server).

Every run of the experiment is read, page by page. Report runs (tag ``kind=report``) are skipped.
A run is a measured cell only if its ``status`` tag is ``ok`` and MLflow finished it; every other
run (unsupported, failed, still RUNNING or left RUNNING by a killed job, KILLED) goes to the
``others`` list with its reason, so nothing is silently dropped."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from bsb_hydra import tracking
from bsb_hydra.metric_names import flat

# Params that say where or how a run was logged, not what was measured: never a cell's variant nor
# part of what makes two runs the same cell (`force` only re-runs a measured config).
_NOT_VARIANT = ("mlflow.", "paths.", "debug.", "hydra.", "peak.")
_NOT_VARIANT_KEYS = ("force",)
# A static cell with quant.analyze=true logs the sensitivity analysis beside the plain static
# artifact it measures: the same cell as a static run without it.
_STATIC_ANALYSIS_KEYS = ("quant.analyze", "quant.eval_samples")


def _measured(key: str, quant: str) -> bool:
    return not (key.startswith(_NOT_VARIANT) or key in _NOT_VARIANT_KEYS
                or (quant == "static" and key in _STATIC_ANALYSIS_KEYS))


@dataclass
class Cell:
    """One ok run: what it is (tags, params) and what it measured (metrics)."""
    run_id: str
    start_time: int
    tags: Dict[str, str]
    params: Dict[str, str]
    metrics: Dict[str, float]
    duplicates: int = 1  # ok runs of the same cell in the store; this one is the newest
    variant: str = ""  # the params that tell apart cells with the same model/quant/backend/threads
    derived: Dict[str, object] = field(default_factory=dict)  # filled by the analysis

    def tag(self, key: str) -> str:
        return self.tags.get(key, "")

    @property
    def model(self) -> str:
        return self.tag("model")

    @property
    def quant(self) -> str:
        return self.tag("quant")

    @property
    def backend(self) -> str:
        return self.tag("backend")

    @property
    def threads(self) -> str:
        return self.tag("threads")

    @property
    def concurrent_jobs(self) -> int:
        """bsb_hydra jobs on the machine while this cell was timed (1 = alone; runs before the tag: 1)."""
        try:
            return int(self.tag("concurrent_jobs") or 1)
        except ValueError:
            return 1

    @property
    def emulated(self) -> bool:
        return self.tag("emulated") == "true"

    @property
    def simulated(self) -> bool:
        """quant=fake_quant: N-bit rounding evaluated in float; theoretical size, never timed."""
        return self.tag("simulated") == "true"

    @property
    def group_key(self) -> Tuple[str, str, str, str, bool, str, str, str, str]:
        """(model, data, arch, cpu, emulated, input shape, model ref, task, data source): the rows a
        frontier is computed over. The CPU is part of it: latencies of two machines of the same arch
        are not one trade-off curve; so are the input shape (resnet18 at 224 and at 160), what exactly
        the model is (two ONNX files of one name, by sha256), the task its outputs were scored as and
        where the data came from (two npz files, one labelled). Runs before those tags: ''
        (task: classification)."""
        return (self.model, self.tag("data"), self.tag("arch"), self.tag("cpu"), self.emulated,
                self.tag("input_shape"), self.tag("model_ref"), self.task, self.tag("data_source"))

    @property
    def task(self) -> str:
        """What the outputs were scored as (bsb_hydra/tasks); runs before tasks were classifiers."""
        return self.tag("task") or "classification"

    @property
    def quality_key(self) -> str:
        """The task's headline metric (tag quality_metric): accuracy, top1_agreement, miou, map, psnr, ..."""
        return self.tag("quality_metric") or ("accuracy" if self.labelled else "top1_agreement")

    @property
    def higher_is_better(self) -> bool:
        return self.tag("quality_higher_is_better") != "false"

    @property
    def labelled(self) -> bool:
        """False for cells measured on unlabelled inputs (no accuracy, agreement only)."""
        return self.tag("labelled") != "false"

    @property
    def cell_key(self) -> Tuple[str, str, str, bool]:
        """The same config on the same machine: repeated runs of it are duplicates. The config is
        read from the params (keys that do not change a measurement left out, a static cell's
        analysis keys included, and keys added later at their inert values dropped), so runs logged
        before and after a schema addition match even where their config_hash tags differ."""
        config = json.dumps(sorted((k, v) for k, v in self.params.items() if _measured(k, self.quant)))
        return (config, self.tag("arch"), self.tag("cpu"), self.emulated)

    def metric(self, key: str) -> Optional[float]:
        if key == "quality" and key not in self.metrics:  # runs before the tasks: their task's metric
            key = self.quality_key
        v = self.metrics.get(key)
        return None if v is None or math.isnan(v) else float(v)

    def batch_sizes(self) -> List[int]:
        return sorted(int(m.group(1)) for k in self.metrics if (m := re.fullmatch(r"latency_p50_ms_b(\d+)", k)))

    @property
    def label(self) -> str:
        base = f"{self.quant} / {self.backend}"
        return f"{base} [{self.variant}]" if self.variant else base


@dataclass
class Other:
    """A run that is not a measured cell: unsupported, failed, interrupted or running."""
    run_id: str
    start_time: int
    cell: str
    status: str
    reason: str
    tags: Dict[str, str]


@dataclass
class Runs:
    cells: List[Cell]
    others: List[Other]
    superseded: List[str]  # run ids of older ok runs of a cell that has a newer one
    # ok runs of SIMULATED cells (quant=fake_quant): shown in their own section, never in a group,
    # a frontier or a pick (they are not deployable and have no latency).
    simulated: List[Cell] = field(default_factory=list)


def load(client, experiment_id: str, arch: Optional[str] = None) -> Runs:
    runs = tracking.search_all(client, experiment_id, f"tags.arch = '{arch}'" if arch else "")
    cells: Dict[tuple, Cell] = {}
    superseded: List[str] = []
    others: List[Other] = []
    for r in runs:  # newest first
        tags = dict(r.data.tags)
        if tags.get("kind") in ("report", "peak"):  # not cells
            continue
        status = tags.get("status", "")
        if status != "ok" or r.info.status != "FINISHED":
            if status == "ok":  # the job logged ok, then MLflow did not finish it
                status = r.info.status.lower()
            elif status in ("running", "") and r.info.status != "RUNNING":
                status = r.info.status.lower()  # killed mid-cell: MLflow or a resume marked it
            reason = tags.get("reason") or {"running": "the job is running, or was killed without closing its run",
                                            "killed": "the job was killed", "failed": "the run failed"
                                            }.get(status, f"MLflow status {r.info.status}")
            others.append(Other(r.info.run_id, r.info.start_time, tags.get("cell", r.info.run_name or ""),
                                status or r.info.status.lower(), reason, tags))
            continue
        cell = Cell(r.info.run_id, r.info.start_time, tags, tracking.drop_inert_params(dict(r.data.params)),
                    flat(r.data.metrics))  # groups or not (runs before them): by flat name
        newest = cells.get(cell.cell_key)
        if newest is None:
            cells[cell.cell_key] = cell
        else:
            newest.duplicates += 1
            superseded.append(cell.run_id)
    out = [c for c in cells.values() if not c.simulated]
    _set_variants(out)
    return Runs(out, others, superseded, [c for c in cells.values() if c.simulated])


def _set_variants(cells: List[Cell]) -> None:
    """Cells that share (model, data, machine, quant, backend, threads) but differ in config (a
    granularity, a calibration method, training settings) get a variant label: the params that differ."""
    by_label: Dict[tuple, List[Cell]] = {}
    for c in cells:
        by_label.setdefault((c.group_key, c.quant, c.backend, c.threads), []).append(c)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = sorted({k for c in same for k in c.params if _measured(k, c.quant)})
        differ = [k for k in keys if len({c.params.get(k) for c in same}) > 1]
        for c in same:
            c.variant = ", ".join(f"{k}={c.params.get(k, '-')}" for k in differ)
