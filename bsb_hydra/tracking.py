"""MLflow: one run per cell. The store is sqlite at the project root by default; artifacts of a new
experiment go to a fixed folder beside it (MLflow would otherwise use ./mlruns of whatever the
current directory is)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def setup(cfg) -> str:
    """Point MLflow at the store and experiment; returns the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not cfg.mlflow.tracking_uri.startswith(("http://", "https://", "databricks")):
        root = Path(cfg.mlflow.artifact_root).expanduser().resolve() / cfg.mlflow.experiment
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    try:
        return client.create_experiment(cfg.mlflow.experiment, artifact_location=location)
    except Exception:  # another job created it first
        exp = client.get_experiment_by_name(cfg.mlflow.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def resolved_params(dict_cfg) -> Dict[str, str]:
    container = OmegaConf.to_container(dict_cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    return flatten(container)
