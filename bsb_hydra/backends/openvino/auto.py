"""quant=auto on openvino: NNCF's accuracy-aware post-training quantization,
``nncf.quantize_with_accuracy_control``, given what quant=auto means on every backend here
(bsb_hydra/mixed.py), so that the cells compare:

calibration  the cell's calibration samples, with quant=static's nncf.quantize parameters
             (OpenvinoBackend._static_setup, package-internal: min/max ranges, quant.granularity, quant.reduce_range).
validation   the selection subset of the TRAINING split mixed.py searches on
             (mixed.selection_indices: quant.eval_samples samples, seeded, none of them a calibration
             sample; the test split is never seen), one sample per NNCF item. The metric is top-1
             accuracy against the labels, computed by ``validate`` on the model NNCF compiled (CPU, f32
             inference precision), with each sample's 1/0 as NNCF's per-item values ("metric mode": NNCF
             ranks the groups of quantizers by the accuracy reverting each recovers on the ranking
             subset, the samples int8 got wrong first).
budget       quant.budget_pp (percentage points) -> max_drop = budget_pp / 100, DropType.ABSOLUTE
             (NNCF's absolute drop is fp32 metric - int8 metric, in the metric's units: accuracy as a
             fraction); quant.budget_rel -> max_drop = budget_rel, DropType.RELATIVE (NNCF's relative
             drop is 1 - int8 / fp32, so drop <= budget_rel * fp32 accuracy). Both are
             AutoQuantConfig.budget_for's budget: the same cells pass on every backend.
trials       quant.max_trials -> max_num_iterations: at most that many groups reverted (NNCF reverts
             one group per iteration and validates the result; mixed.py's max_trials bounds its
             builds, k = 1, 2, 4, ... float layers, so it reaches further on a model with many layers).
fallback     fp32 only: NNCF reverts a group to the model's own precision, and ov.save_model's
             compress_to_fp16 leaves a quantized model's float weights f32.

What NNCF does: nncf.quantize; validates the fp32 and the int8 model on the whole subset; if the
drop is over max_drop, ranks the groups of quantizers (an operation with the quantizers of its
inputs and weights) by the metric the model gets back with each group reverted to float, on the
ranking subset (subset_size items, those whose per-item metric int8 lowered); then greedily
reverts the top group, validates, and repeats until the drop is within budget (a revert that makes
it worse is undone once and the rest ranked again).

Logged: which Conv/MatMul layers the chosen model keeps float (the layers int8 in NNCF's fully
quantized model whose weights and inputs are float in the chosen one: auto.float_layers,
auto_float_layers of auto_layers), the fp32 / int8 / chosen accuracies on the subset, whether the
budget held there, every validation NNCF ran (analysis/auto_openvino.json) and NNCF's own account
of the search (analysis/nncf_accuracy_control.log)."""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List

import numpy as np

from bsb_hydra.backends.base import Artifact, BuildContext

# Ops NNCF quantizes that carry a model's arithmetic: what "a layer kept float" counts.
LAYER_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul")
# What lies between an int8 weight (or a FakeQuantize) and the layer reading it: dequantization, layout.
PASS_THROUGH = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze")
LOW_BIT = ("i8", "u8", "i4", "u4")


def _origin(output):
    """The node an input comes from, past its dequantization and layout ops."""
    node = output.get_node()
    while node.get_type_name() in PASS_THROUGH and node.get_input_size():
        node = node.input_value(0).get_node()
    return node


def int8_layers(model) -> List[str]:
    """Friendly names of ``model``'s layers (LAYER_TYPES) with an input from a FakeQuantize or an
    int8 constant: quantized. A layer NNCF reverted reads float inputs and a float weight."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in LAYER_TYPES:
            continue
        for i in range(op.get_input_size()):
            src = _origin(op.input_value(i))
            kind = src.get_type_name()
            low_bit = kind == "Constant" and src.get_output_element_type(0).get_type_name() in LOW_BIT
            if kind == "FakeQuantize" or low_bit:
                names.append(op.get_friendly_name())
                break
    return names


def nncf_budget(q):
    """(max_drop, nncf.DropType, what it is in words) for quant.budget_pp / budget_rel."""
    import nncf

    if q.budget_rel is not None:
        return float(q.budget_rel), nncf.DropType.RELATIVE, f"relative {q.budget_rel:g} (1 - int8/fp32 accuracy)"
    return float(q.budget_pp) / 100.0, nncf.DropType.ABSOLUTE, f"absolute {q.budget_pp:g} pp"


def batch_size_for(model, wanted: int) -> int:
    """``wanted`` samples per call where every input's batch dimension is dynamic, else 1."""
    for p in model.inputs:
        shape = p.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() == 0 or not shape[0].is_dynamic:
            return 1
    return wanted


class Validator:
    """NNCF's validation_fn: top-1 accuracy of a compiled model on (inputs, label) items, batched;
    each call recorded (samples, accuracy, seconds)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.calls: List[Dict[str, float]] = []

    def correct(self, compiled, items) -> np.ndarray:
        """1.0 or 0.0 per item: whether the top-1 class of its first output is its label."""
        items = list(items)
        correct = []
        for i in range(0, len(items), self.batch):
            chunk = items[i:i + self.batch]
            feed = {n: np.concatenate([inputs[n] for inputs, _ in chunk]) for n in chunk[0][0]}
            logits = np.asarray(compiled(feed)[0])
            correct.append(logits.reshape(len(chunk), -1).argmax(1) == np.array([label for _, label in chunk]))
        return np.concatenate(correct).astype(np.float64) if correct else np.zeros(0)

    def __call__(self, compiled, items):
        t0 = time.perf_counter()
        ok = self.correct(compiled, items)
        acc = float(ok.mean()) if len(ok) else 0.0
        self.calls.append({"samples": len(ok), "accuracy": acc, "seconds": time.perf_counter() - t0})
        return acc, ok.tolist()


@contextmanager
def nncf_log(path: Path):
    """NNCF's INFO records (its account of the search) into ``path`` only: its own handlers and the
    root's (Hydra's console) keep showing warnings alone."""
    logger = logging.getLogger("nncf")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    others = [(h, h.level) for h in logger.handlers]
    for h, lv in others:
        h.setLevel(max(lv, logging.WARNING))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(level)
        logger.propagate = propagate
        for h, lv in others:
            h.setLevel(lv)


def build_auto(backend, ctx: BuildContext, out: Path) -> Artifact:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from bsb_hydra.backends.openvino.build import model_inputs
    from bsb_hydra.feeds import materialize
    from bsb_hydra.mixed import selection_indices

    q, ds = ctx.cfg.quant, ctx.data
    model, calibration, advanced, kw, info = backend._static_setup(ctx)
    idx = selection_indices(len(ds.y_train), q.eval_samples, ctx.cfg.seed, ctx.calibration_indices)
    labels = np.asarray(ds.y_train)[idx]
    items = list(zip(model_inputs(model, materialize(ds.x_train[idx])), labels.tolist()))
    validation = nncf.Dataset(items, lambda item: item[0])
    validate = Validator(batch_size_for(model, ctx.cfg.benchmark.eval_batch_size))
    max_drop, drop_type, budget_text = nncf_budget(q)
    reports = ctx.workdir / "auto_report"
    int8_dir = ctx.workdir / "nncf_int8"  # NNCF writes its fully quantized model here (intermediate_model.xml)
    for d in (reports, int8_dir):
        d.mkdir(parents=True, exist_ok=True)
    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=q.max_trials, intermediate_model_dir=str(int8_dir))
    t0 = time.perf_counter()
    with nncf_log(reports / "nncf_accuracy_control.log"):
        chosen = nncf.quantize_with_accuracy_control(
            model, calibration, validation, validate, max_drop=max_drop, drop_type=drop_type,
            advanced_quantization_parameters=advanced, advanced_accuracy_restorer_parameters=restorer, **kw)
    search_s = time.perf_counter() - t0

    # NNCF's first call tells its metric mode (one item, the fp32 model); its next whole-subset
    # validations are the fp32 model's, then the fully quantized one's. The chosen model is validated here.
    whole = [c["accuracy"] for c in validate.calls[1:] if c["samples"] == len(items)]
    fp32_acc, int8_acc = whole[0], whole[1]
    compiled = ov.Core().compile_model(chosen, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    chosen_acc = float(validate.correct(compiled, items).mean())
    del compiled
    quantized = int8_layers(ov.Core().read_model(str(int8_dir / "intermediate_model.xml")))
    still = set(int8_layers(chosen))
    floated = [n for n in quantized if n not in still]
    budget = q.budget_for(fp32_acc)
    met = fp32_acc - chosen_acc <= budget + 1e-12

    info = {**info, "method": "nncf.quantize_with_accuracy_control (nncf.quantize, then layers reverted to float "
                              "until the accuracy drop is within the budget)",
            "auto.float_layers": ",".join(floated) or "(none)", "auto.fallback": q.fallback.value,
            "auto.budget_met": str(met).lower(), "auto.budget": budget_text,
            "auto.nncf_max_drop": f"{max_drop:g} ({drop_type.value})", "auto.max_num_iterations": str(q.max_trials),
            "auto.selection": f"{len(items)} training samples, disjoint from the calibration samples"}
    art = backend._save(chosen, ctx, out, info)  # every layer float: the best NNCF found, as mixed.py keeps it
    metrics = {"auto_layers": len(quantized), "auto_float_layers": len(floated),
               "auto_budget_drop_pp": 100.0 * budget, "auto_budget_met": float(met),
               "auto_selection_samples": len(items), "auto_selection_accuracy": chosen_acc,
               "auto_selection_fp32_accuracy": fp32_acc, "auto_selection_int8_accuracy": int8_acc,
               "auto_selection_accuracy_delta_pp": 100.0 * (chosen_acc - fp32_acc),
               "auto_validations": len(validate.calls), "auto_search_seconds": search_s}
    (reports / "auto_openvino.json").write_text(json.dumps({
        "budget": budget_text, "max_drop": max_drop, "drop_type": drop_type.value, "max_num_iterations": q.max_trials,
        "int8_layers": quantized, "float_layers": floated, "selection_indices": idx.tolist(),
        "validations": validate.calls, **metrics}, indent=1))
    art.metrics.update(metrics)
    art.files.extend([reports / "auto_openvino.json", reports / "nncf_accuracy_control.log"])
    return art
