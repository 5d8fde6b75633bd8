"""``python -m bsb_hydra.report [experiment=NAME] [arch=aarch64] [budget_pp=1.0] [out=reports/latest]``

Reads every run of the experiment through MLflow's search API, computes per group the fp32
baselines, speedups with significance, the Pareto frontier and the picks, writes report.md,
report.html, the PNG plots and rows.csv to ``out``, tags each cell's run ``pareto_optimal``, logs
the folder as the artifacts of a ``report`` run, and prints the picks."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from bsb_hydra.report.build import ReportError, build_report


@dataclass
class ReportConfig:
    """The report's config: the primary config of its Hydra app, registered in the ConfigStore (no
    YAML, and no config groups: ``experiment=NAME`` here is the MLflow experiment, not the grid's
    ``experiment`` preset group)."""
    defaults: List[Any] = field(default_factory=lambda: [
        "_self_", {"override hydra/job_logging": "none"}, {"override hydra/hydra_logging": "none"}])
    # The store the grid writes to: MLFLOW_TRACKING_URI (a server) or the project's sqlite file.
    tracking_uri: str = "${oc.env:MLFLOW_TRACKING_URI,sqlite:///${hydra:runtime.cwd}/mlflow.db}"
    experiment: str = "bsb-hydra"
    arch: Optional[str] = None  # x86_64 | aarch64 | None (every arch found)
    budget_pp: float = 1.0  # the "fastest within X pp of fp32" pick
    out: str = "reports/latest"
    tag_runs: bool = True  # set pareto_optimal on each cell's run
    log_run: bool = True  # log the report folder as a `report` run
    # Hydra itself: no job folder of its own (the report goes to `out`, which the report checks
    # itself: Hydra would fail with a bare FileExistsError on an out= that is a file), no chdir.
    hydra: Any = field(default_factory=lambda: {"job": {"chdir": False}, "run": {"dir": "."},
                                                "output_subdir": None})


ConfigStore.instance().store(name="report", node=ReportConfig)


@hydra.main(version_base="1.3", config_path=None, config_name="report")
def main(cfg: DictConfig) -> None:
    try:
        build_report(cfg)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
