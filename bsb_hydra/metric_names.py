"""How a metric is named in MLflow: the headline metrics as they are, every other one under its group.

MLflow's UI puts a run's metric charts in sections by the part of the key before the first '/'. The
code computes and reads flat names (``latency_p50_ms_b8``, ``stage_quantize_seconds``); what it stores
is ``mlflow_key(name)``: the headline metrics (tracking.HEADLINE_METRICS, first in the runs table)
and names that already hold a '/' (``fidelity/<output>/<stat>``) unchanged, any other name as
``<group>/<name>``, its group the first in GROUPS with a pattern that matches it. ``flat`` is the
reverse, for every reader of a store: runs logged before the groups (flat names) read the same as
newer ones, so a store is never rewritten.

A metric added to the code goes in a group here; one in none is stored under ``other/``, and
tests/test_sweep.py fails on the shared sweep until it has its group (tests/test_metric_names.py
lists every name the code logs)."""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Dict, Mapping, Optional, Tuple

from bsb_hydra.tracking import HEADLINE_METRICS

# (group, the flat names it holds: fnmatch patterns), in matching order: the first that matches wins.
GROUPS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    # the timed runs of the cell (bench/worker.py, scoring.latency_metrics)
    ("latency", ("latency_*", "throughput_*", "first_inference_ms", "load_ms", "concurrent_jobs")),
    # against the paired fp32 reference and the best fp32 of the machine (scoring.best_fp32_metrics)
    ("speedup", ("speedup_b*", "speedup_vs_best_fp32_b*", "fp32_latency_*", "best_fp32_latency_*",
                 "overhead_bound_b*")),
    # the machine's GEMM limit (bench/peak.py) and the cell against it; the peak run's <runtime>_<figure>
    ("limit", ("int8_peak_ratio", "gflops_fp32", "gops_int8", "mem_bandwidth_gbs", "call_floor_ms", "backend_*",
               "achieved_gflops_b*", "speedup_vs_peak_b*", "*_gflops_fp32", "*_gops_int8", "*_int8_ratio",
               "*_call_floor_ms")),
    ("size", ("size_bytes", "fp32_size_bytes", "aoti_constants_bytes", "model_params", "model_macs", "simulated")),
    ("memory", ("peak_rss_mb", "rss_*")),
    # wall-clock seconds and the sweep process's peak RSS of each stage (steps.Stages), and of the cell
    ("stage", ("stage_*", "cell_seconds", "train_seconds", "quantize_seconds", "aoti_compile_seconds")),
    # against the labels, with the fp32 reference's twin (bsb_hydra/tasks)
    ("quality", ("quality", "test_samples", "accuracy", "accuracy_*", "fp32_accuracy", "gained_vs_fp32",
                 "lost_vs_fp32", "map", "map50", "fp32_map", "fp32_map50", "map_delta_pp", "miou", "fp32_miou",
                 "miou_delta_pp", "pixel_accuracy", "fp32_pixel_accuracy", "foreground_iou", "fp32_foreground_iou",
                 "psnr", "ssim", "mse", "mae", "fp32_psnr", "fp32_ssim", "fp32_mse", "fp32_mae", "psnr_delta_db",
                 "mae_delta", "mse_delta", "image_data_range", "predicted_classes", "majority_class_share")),
    # against the fp32 reference's outputs (the per-output figures are fidelity/<output>/<stat> already)
    ("fidelity", ("top1_agreement", "confidence_drift", "kl_div", "max_abs_logit_diff", "sqnr_db", "cosine_mean",
                  "*_vs_fp32", "pixel_agreement", "embedding_*", "neighbour_agreement*", "neighbours_compared",
                  "detections_per_image", "fp32_detections_per_image", "reference_detections",
                  "foreground_fraction", "fp32_foreground_fraction", "segmentation_classes_seen")),
    # the backend's fp32 artifact against the PyTorch model (the per-output ones: fp32_vs_pytorch/<output>/<stat>)
    ("fp32_vs_pytorch", ("fp32_vs_pytorch_*",)),
    ("calibration", ("calibration_samples_used",)),
    ("train", ("train_loss", "qat_loss")),  # curves, one point per step
    ("auto", ("auto_*",)),  # quant=auto's search (mixed.py, backends/openvino/auto.py)
    ("sensitivity", ("sensitivity_*",)),  # quant.analyze's per-layer table (mixed.py)
    ("report", ("cells", "groups", "other_runs", "simulated_cells", "pareto_cells")),  # the report's own run
)
OTHER = "other"  # a name in no group: stored, but a test fails until it has one
_NAMES = {g for g, _ in GROUPS} | {OTHER}


def group_of(name: str) -> Optional[str]:
    """The group a flat name is stored under; None for a headline metric or a name with a '/'."""
    if name in HEADLINE_METRICS or "/" in name:
        return None
    return next((g for g, patterns in GROUPS if any(fnmatchcase(name, p) for p in patterns)), OTHER)


def mlflow_key(name: str) -> str:
    """The key a flat metric name is stored under in MLflow."""
    g = group_of(name)
    return name if g is None else f"{g}/{name}"


def flat_key(key: str) -> str:
    """The flat name of a stored key: '<group>/<name>' written by mlflow_key -> name; any other key (a
    run logged before the groups, fidelity/<output>/<stat>) as it is."""
    group, _, name = key.partition("/")
    return name if group in _NAMES and "/" not in name and group_of(name) == group else key


def flat(metrics: Mapping[str, float]) -> Dict[str, float]:
    """A run's metrics (``run.data.metrics``) by their flat names, whenever they were logged."""
    return {flat_key(k): v for k, v in metrics.items()}


def stored(metrics: Mapping[str, float]) -> Dict[str, float]:
    """Flat names -> the keys MLflow stores them under."""
    return {mlflow_key(k): v for k, v in metrics.items()}


def run_metrics(run) -> Dict[str, float]:
    """An MLflow run's metrics by their flat names."""
    return flat(run.data.metrics)


def flat_runs(runs) -> list:
    """MLflow runs (a search's result) whose ``data.metrics`` hold the flat names: for code that reads
    many runs' metrics by name (scripts/, the tests). Metric histories are read by mlflow_key."""
    from mlflow.entities import Metric, Param, Run, RunData, RunTag

    def one(r):
        data = RunData(metrics=[Metric(k, v, 0, 0) for k, v in run_metrics(r).items()],
                       params=[Param(k, v) for k, v in r.data.params.items()],
                       tags=[RunTag(k, v) for k, v in r.data.tags.items()])
        return Run(r.info, data, r.inputs, r.outputs)

    return [one(r) for r in runs]
