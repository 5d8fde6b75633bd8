"""bsb_hydra/metric_names.py: the key each metric is stored under, and back. The shared sweep's stored
names are checked in tests/test_sweep.py (test_metrics_are_stored_under_their_groups)."""
import pytest

from bsb_hydra.metric_names import GROUPS, OTHER, flat, flat_key, group_of, mlflow_key, stored
from bsb_hydra.tracking import HEADLINE_METRICS

B = (1, 8)
# Every flat name the code logs (a batch size, a runtime or an output standing for all), by group.
NAMES = {
    "latency": [*(f"latency_{k}_ms_b{b}" for k in ("mean", "p50", "p90", "p95", "p99", "std") for b in B if
                  (k, b) != ("p50", 1)),
                "latency_cv_b1", "latency_p50_ci_low_ms_b8", "latency_p50_ci_high_ms_b8", "latency_count_b1",
                "latency_processes_b1", "latency_process_p50_spread_b1", "throughput_sps_b8", "load_ms",
                "first_inference_ms", "concurrent_jobs"],
    "speedup": ["speedup_b1", "speedup_b8", "speedup_vs_best_fp32_b8", "fp32_latency_p50_ms_b1",
                "fp32_latency_p50_ci_low_ms_b8", "fp32_latency_p50_ci_high_ms_b8", "best_fp32_latency_p50_ms_b1",
                "overhead_bound_b1"],
    "limit": ["int8_peak_ratio", "gflops_fp32", "gops_int8", "mem_bandwidth_gbs", "call_floor_ms",
              "backend_gflops_fp32", "backend_gops_int8", "backend_int8_ratio", "achieved_gflops_b8",
              "speedup_vs_peak_b1", "onnxruntime_gflops_fp32", "pytorch_gops_int8", "tflite_int8_ratio",
              "openvino_call_floor_ms"],
    "size": ["size_bytes", "fp32_size_bytes", "aoti_constants_bytes", "model_params", "model_macs", "simulated"],
    "memory": ["peak_rss_mb", "rss_delta_mb", "rss_after_import_mb"],
    "stage": ["stage_measure_seconds", "stage_score_peak_rss_mb", "cell_seconds", "train_seconds",
              "quantize_seconds", "aoti_compile_seconds"],
    "quality": ["quality", "test_samples", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "fp32_accuracy",
                "accuracy_delta_ci_low_pp", "accuracy_delta_ci_high_pp", "accuracy_delta_p_value", "gained_vs_fp32",
                "lost_vs_fp32", "map", "map50", "fp32_map", "fp32_map50", "map_delta_pp", "miou", "fp32_miou",
                "miou_delta_pp", "pixel_accuracy", "fp32_pixel_accuracy", "foreground_iou", "fp32_foreground_iou",
                "psnr", "ssim", "mse", "mae", "fp32_psnr", "fp32_ssim", "fp32_mse", "fp32_mae", "psnr_delta_db",
                "mae_delta", "mse_delta", "image_data_range", "predicted_classes", "majority_class_share"],
    "fidelity": ["top1_agreement", "confidence_drift", "kl_div", "max_abs_logit_diff", "sqnr_db", "cosine_mean",
                 "map_vs_fp32", "map50_vs_fp32", "miou_vs_fp32", "psnr_vs_fp32", "ssim_vs_fp32", "mse_vs_fp32",
                 "mae_vs_fp32", "max_abs_error_vs_fp32", "foreground_iou_vs_fp32", "pixel_agreement",
                 "embedding_cosine_mean", "embedding_cosine_p5", "embedding_cosine_min", "neighbour_agreement",
                 "neighbour_agreement_at_5", "neighbours_compared", "detections_per_image",
                 "fp32_detections_per_image", "reference_detections", "foreground_fraction",
                 "fp32_foreground_fraction", "segmentation_classes_seen"],
    "fp32_vs_pytorch": ["fp32_vs_pytorch_agreement", "fp32_vs_pytorch_max_abs_logit_diff",
                        "fp32_vs_pytorch_cosine_mean"],
    "calibration": ["calibration_samples_used"],
    "train": ["train_loss", "qat_loss"],
    "auto": ["auto_trials", "auto_float_layers", "auto_layers", "auto_budget_drop_pp", "auto_budget_met",
             "auto_budget_met_test", "auto_selection_accuracy", "auto_selection_samples", "auto_validations",
             "auto_analysis_seconds", "auto_search_seconds", "auto_trial_accuracy", "auto_trial_float_layers",
             "auto_selection_accuracy_delta_pp"],
    "sensitivity": ["sensitivity_layers", "sensitivity_seconds", "sensitivity_selection_samples",
                    "sensitivity_selection_fp32_accuracy", "sensitivity_selection_int8_accuracy",
                    "sensitivity_int8_logits_sqnr_db"],
    "report": ["cells", "groups", "other_runs", "simulated_cells", "pareto_cells"],
}
# Already holding a '/': stored as they are.
SLASHED = ["fidelity/logits/sqnr_db", "fidelity/out/agreement", "fp32_vs_pytorch/logits/cosine_mean"]


def test_the_table_names_every_group_once_and_covers_the_list():
    names = [g for g, _ in GROUPS]
    assert len(names) == len(set(names)) and OTHER not in names and set(NAMES) == set(names)


@pytest.mark.parametrize("group", sorted(NAMES))
def test_each_name_is_stored_under_its_group_and_read_back(group):
    for name in NAMES[group]:
        assert group_of(name) == group, name
        assert mlflow_key(name) == f"{group}/{name}"
        assert flat_key(mlflow_key(name)) == name  # the new key reads back
        assert flat_key(name) == name  # a run logged before the groups reads the same


def test_headline_and_slashed_names_are_stored_as_they_are():
    for name in [*HEADLINE_METRICS, *SLASHED]:
        assert group_of(name) is None and mlflow_key(name) == name and flat_key(name) == name
    # a per-output figure whose output is named like a metric is not taken for a grouped one
    assert flat_key("fidelity/sqnr_db/cosine_mean") == "fidelity/sqnr_db/cosine_mean"


def test_a_name_in_no_group_falls_back_visibly():
    assert group_of("brand_new_metric") == OTHER and mlflow_key("brand_new_metric") == "other/brand_new_metric"
    assert flat_key("other/brand_new_metric") == "brand_new_metric"


def test_flat_reverses_stored_and_leaves_foreign_keys_alone():
    every = {n: float(i) for i, n in enumerate([*HEADLINE_METRICS, *SLASHED, *(n for v in NAMES.values() for n in v)])}
    assert flat(stored(every)) == every and flat(every) == every
    assert len(stored(every)) == len(every)  # no two names share a key
    # a key of some other tool that happens to look grouped, but is not what mlflow_key writes
    assert flat({"latency/p50": 1.0, "quality/top1": 2.0, "size/size_ratio": 3.0}) == \
        {"latency/p50": 1.0, "quality/top1": 2.0, "size/size_ratio": 3.0}
