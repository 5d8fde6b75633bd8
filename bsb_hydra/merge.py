"""Merge the runs of another MLflow store (a remote machine's sqlite store brought back, with its
artifact folder) into this one, through MLflow's client: tags, params, full metric histories,
start/end times, status, artifacts, its datasets and its LoggedModels (with their files and the
metrics linked to them). Re-merging is safe: a run already merged (tag
``merged_from_run_id``) or present under its own id is skipped, so no run is lost or duplicated.
Metric keys are copied as they are stored: a run logged before the metric groups keeps its flat
names, which every reader reads the same (bsb_hydra/metric_names.py).

    python -m bsb_hydra.merge SOURCE_DB [--artifacts DIR] [--experiment NAME] [--into URI]

SOURCE_DB is a sqlite file or URI; DIR is the source's artifact root (``mlartifacts/``: runs are
found at DIR/<experiment>/<run_id>/artifacts); the target is MLFLOW_TRACKING_URI or the project's
sqlite:///mlflow.db."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from bsb_hydra import tracking

MERGED_FROM = "merged_from_run_id"


# MLflow's own run tags that describe the run rather than the process that logged it: its name and
# description (the cell's summary line); the rest (source, user, git) would name this machine's merge.
KEPT_SYSTEM_TAGS = ("mlflow.runName", "mlflow.note.content")


def _uri(s: str) -> str:
    return s if "://" in s else f"sqlite:///{Path(s).resolve()}"


def _target_experiment(dst, name: str, artifact_root: Optional[Path], uri: str) -> str:
    exp = dst.get_experiment_by_name(name)
    if exp is not None:
        tracking.tag_experiment(dst, exp)
        return exp.experiment_id
    location = None
    if artifact_root is not None and not uri.startswith(("http://", "https://")):
        root = artifact_root.resolve() / name
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    return dst.create_experiment(name, artifact_location=location, tags=tracking.EXPERIMENT_TAGS)


def _source_artifacts(src, run, exp_name: str, artifacts: Optional[Path], tmp: Path) -> Optional[Path]:
    """The run's artifact folder: under the copied artifact root when given, else where the source
    store says (a server, or a path that exists here)."""
    if artifacts is not None:
        local = artifacts / exp_name / run.info.run_id / "artifacts"
        return local if local.is_dir() else None
    try:
        return Path(src.download_artifacts(run.info.run_id, "", str(tmp)))
    except Exception:
        return None


def _copy_logged_models(src, dst, run, dst_exp: str, rid: str, exp_name: str, artifacts: Optional[Path]) -> Dict[str, str]:
    """The run's LoggedModels (bsb_hydra/logged_models.py) re-created in the target for its copy
    ``rid``: name, type, tags, params, status and files (from the copied artifact root when given:
    DIR/<experiment>/models/<model_id>/artifacts). Returns the metric points linked to them:
    {(key, timestamp, step, value): (new model_id, dataset name, dataset digest)}."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    links: Dict[tuple, tuple] = {}
    for out in (run.outputs.model_outputs if run.outputs else []):
        m = src.get_logged_model(out.model_id)
        new = dst.create_logged_model(dst_exp, name=m.name, source_run_id=rid, model_type=m.model_type,
                                      params=dict(m.params or {}),
                                      tags={k: v for k, v in (m.tags or {}).items() if not k.startswith("mlflow.")})
        with tempfile.TemporaryDirectory() as tmp:
            folder = None
            if artifacts is not None:
                local = artifacts / exp_name / "models" / m.model_id / "artifacts"
                folder = local if local.is_dir() else None
            else:
                try:
                    from mlflow.artifacts import download_artifacts

                    folder = Path(download_artifacts(artifact_uri=m.artifact_location, dst_path=tmp,
                                                     tracking_uri=src.tracking_uri))
                except Exception:
                    folder = None
            if folder is not None and any(folder.iterdir()):
                dst.log_model_artifacts(new.model_id, str(folder))
        if m.status != LoggedModelStatus.PENDING:  # a PENDING one (a cell still running there) stays so
            dst.finalize_logged_model(new.model_id, m.status)
        dst.log_outputs(rid, [LoggedModelOutput(new.model_id, step=out.step)])
        for x in m.metrics or []:
            links[(x.key, x.timestamp, x.step, x.value)] = (new.model_id, x.dataset_name, x.dataset_digest)
    return links


def merge(source: str, into: str, artifacts: Optional[Path] = None, experiment: Optional[str] = None,
          artifact_root: Optional[Path] = None) -> Dict[str, int]:
    """Copy every run of ``source`` (one experiment, or all) into ``into``. Returns counts."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    src, dst = MlflowClient(_uri(source)), MlflowClient(into)
    counts = {"merged": 0, "skipped": 0, "artifacts_missing": 0}
    exps = [e for e in src.search_experiments() if experiment is None or e.name == experiment]
    if experiment is not None and not exps:
        names = sorted(e.name for e in src.search_experiments())
        raise SystemExit(f"--experiment {experiment!r} is not in {tracking.mask_text(source)}: it has {names}")
    for exp in exps:
        runs = tracking.search_all(src, exp.experiment_id)
        if not runs:
            continue
        dst_exp = _target_experiment(dst, exp.name, artifact_root, into)
        done = {r.data.tags.get(MERGED_FROM) for r in tracking.search_all(dst, dst_exp)}
        done |= {r.info.run_id for r in tracking.search_all(dst, dst_exp)}
        for run in sorted(runs, key=lambda r: r.info.start_time):
            if run.info.run_id in done:
                counts["skipped"] += 1
                continue
            tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") or k in KEPT_SYSTEM_TAGS}
            tags[MERGED_FROM] = run.info.run_id
            new = dst.create_run(dst_exp, start_time=run.info.start_time, tags=tags,
                                 run_name=run.info.run_name or None)
            rid = new.info.run_id
            params = [Param(k, v) for k, v in run.data.params.items()]
            full = src.get_run(run.info.run_id)  # with its inputs (datasets) and outputs (logged models)
            if full.inputs and full.inputs.dataset_inputs:
                dst.log_inputs(rid, datasets=list(full.inputs.dataset_inputs))
            links = _copy_logged_models(src, dst, full, dst_exp, rid, exp.name, artifacts)
            metrics: List[Metric] = []
            for key in run.data.metrics:  # a point linked to a LoggedModel keeps its link (a history has none)
                for m in src.get_metric_history(run.info.run_id, key):
                    model_id, ds_name, ds_digest = links.get((m.key, m.timestamp, m.step, m.value), (None, None, None))
                    metrics.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id,
                                          dataset_name=ds_name, dataset_digest=ds_digest))
            for i in range(0, max(len(params), 1), 100):
                dst.log_batch(rid, params=params[i:i + 100])
            for i in range(0, len(metrics), 1000):
                dst.log_batch(rid, metrics=metrics[i:i + 1000])
            with tempfile.TemporaryDirectory() as tmp:
                folder = _source_artifacts(src, run, exp.name, artifacts, Path(tmp))
                if folder is not None and any(folder.iterdir()):
                    dst.log_artifacts(rid, str(folder))
                elif artifacts is not None:
                    counts["artifacts_missing"] += 1
            dst.set_terminated(rid, status=run.info.status, end_time=run.info.end_time)
            counts["merged"] += 1
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bsb_hydra.merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="the other store: a sqlite file or a tracking URI")
    ap.add_argument("--artifacts", type=Path, help="the other store's artifact root folder (its mlartifacts/)")
    ap.add_argument("--experiment", help="merge only this experiment")
    ap.add_argument("--into", default=os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd()}/mlflow.db"))
    ap.add_argument("--artifact-root", type=Path, default=Path.cwd() / "mlartifacts",
                    help="where a NEW experiment of a local target keeps its artifacts")
    a = ap.parse_args(argv)
    if a.artifacts is not None and not a.artifacts.is_dir():
        ap.error(f"--artifacts {a.artifacts}: no such folder")
    if "://" not in a.source and not Path(a.source).is_file():
        ap.error(f"{a.source}: no such store file")
    c = merge(a.source, a.into, a.artifacts, a.experiment, a.artifact_root)
    print(f"merged {c['merged']} run(s) from {tracking.mask_text(a.source)} into {tracking.mask_text(a.into)}; "
          f"{c['skipped']} already there" + (f"; {c['artifacts_missing']} without artifacts" if c["artifacts_missing"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
