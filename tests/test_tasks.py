"""Tasks (bsb_hydra/tasks): each scorer against a maintained implementation or the whole-array
computation it streams, task=auto's rules, the checks before any quantization, and the plumbing of
several inputs and outputs (bsb_hydra/feeds.py, bsb_hydra/bench/outputs.py). No sweep here: the real
sweeps over every task are in tests/test_task_sweeps.py."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from bsb_hydra.bench import stats
from bsb_hydra.tasks.base import Fidelity, OutputInfo, Probe, TaskError


def _ds(x=None, y=None, num_classes=None, class_names=()):
    x = np.zeros((8, 3, 16, 16), np.float32) if x is None else x
    return SimpleNamespace(x_test=x, y_test=y, x_train=x, num_classes=num_classes, class_names=list(class_names),
                           labelled=y is not None, input_shape=tuple(x.shape[1:]), name="npz")


def _probe(*outs, input_shape=(3, 16, 16)):
    """outs: (name, per-sample shape, dtype) or (name, values with batch)."""
    infos, values = [], []
    for o in outs:
        if isinstance(o[1], np.ndarray):
            v = o[1]
        else:
            v = np.zeros((2, *o[1]), dtype=o[2])
        infos.append(OutputInfo(o[0], tuple(v.shape[1:]), str(v.dtype)))
        values.append(v)
    return Probe(infos, values, input_shape)


def _task(name, probe, ds, **cfg):
    from bsb_hydra.tasks import TASKS

    schema = TASKS.schema(name)
    task = TASKS.get(name)(schema(**cfg), ds, probe, "m")
    task.check()
    return task


def _score(task, cell, ref, labels=None, batch=7):
    """Feed the scorer in batches, as the cell's outputs stream from disk."""
    s = task.scorer()
    n = len(cell[0])
    for i in range(0, n, batch):
        s.update([a[i:i + batch] for a in cell], [b[i:i + batch] for b in ref],
                 None if labels is None else labels[i:i + batch])
    return s.result()


# ------------------------------------------------------------------------------------ fidelity
def test_fidelity_is_sqnr_cosine_and_max_error_per_output_and_agreement_for_integer_outputs():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((20, 5)).astype(np.float32)
    noise = 0.1 * rng.standard_normal((20, 5)).astype(np.float32)
    ids = rng.integers(0, 3, (20, 4))
    ids_q = ids.copy()
    ids_q[0, 0] = (ids_q[0, 0] + 1) % 3
    f = Fidelity(["logits", "classes:0"])
    for i in range(0, 20, 6):
        f.update([ref[i:i + 6] + noise[i:i + 6], ids_q[i:i + 6]], [ref[i:i + 6], ids[i:i + 6]])
    m = f.metrics()
    want = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum(noise.astype(np.float64) ** 2))
    assert m["fidelity/logits/sqnr_db"] == pytest.approx(want, rel=1e-6)
    cos = np.sum((ref + noise) * ref, 1) / np.linalg.norm(ref + noise, axis=1) / np.linalg.norm(ref, axis=1)
    assert m["fidelity/logits/cosine_mean"] == pytest.approx(cos.mean(), rel=1e-6)
    assert m["fidelity/logits/cosine_p5"] == pytest.approx(np.percentile(cos, 5), rel=1e-6)
    assert m["fidelity/logits/max_abs_error"] == pytest.approx(np.abs(noise).max(), rel=1e-6)
    # an integer output (classes) has no magnitude: only the share of equal elements, name made MLflow-safe
    assert m["fidelity/classes_0/agreement"] == pytest.approx(79 / 80)
    assert not any(k.startswith("fidelity/classes_0/") and k.endswith(("sqnr_db", "cosine_mean")) for k in m)


# ------------------------------------------------------------------------------ classification
def test_classification_streamed_equals_the_whole_array_statistics():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50, 4)).astype(np.float32)
    cell = ref + 0.8 * rng.standard_normal((50, 4)).astype(np.float32)
    y = rng.integers(0, 4, 50)
    ds = _ds(np.zeros((50, 3, 16, 16), np.float32), y, 4, ["a", "b", "c", "d"])
    task = _task("classification", _probe(("logits", (4,), "float32")), ds)
    s = _score(task, [cell], [ref], y)
    acc, ref_acc = stats.accuracy_metrics(cell, y, 4), stats.accuracy_metrics(ref, y, 4)
    agree = stats.agreement_metrics(cell, ref)
    paired = stats.paired_accuracy(cell.argmax(1) == y, ref.argmax(1) == y)
    for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high"):
        assert s.metrics[k] == pytest.approx(acc[k])
    for k, v in agree.items():
        assert s.metrics[k] == pytest.approx(v, rel=1e-6)
    assert s.metrics["accuracy_delta_pp"] == pytest.approx(100 * (acc["accuracy"] - ref_acc["accuracy"]))
    assert s.metrics["accuracy_delta_p_value"] == pytest.approx(paired["p_value"])
    assert s.metrics["test_samples"] == 50
    assert list(s.json["per_class_accuracy.json"]["per_class_accuracy"]) == ["a", "b", "c", "d"]
    assert (s.arrays["correct.npy"] == (cell.argmax(1) == y)).all()


def test_a_constant_fp32_reference_is_named_and_a_real_one_is_not():
    """An fp32 model that answers one class for every sample, or is no more accurate than always
    answering the most frequent class, makes accuracy deltas and agreement a constant's: the score
    says so (tag quality_warning); a model better than that gets no warning."""
    y = np.repeat(np.arange(4), [20, 10, 10, 10])  # class 0 ("a") is 40% of the 50 samples
    ds = _ds(np.zeros((50, 3, 16, 16), np.float32), y, 4, ["a", "b", "c", "d"])
    task = _task("classification", _probe(("logits", (4,), "float32")), ds)

    def logits(pred):
        return np.eye(4, dtype=np.float32)[pred] + 0.01 * np.arange(50, dtype=np.float32)[:, None] / 50

    constant = logits(np.full(50, 2))
    s = _score(task, [logits(y)], [constant], y)
    assert s.tags["quality_warning"].startswith("the fp32 model answers class 2 (c) for all 50 test samples: "
                                                "accuracy deltas and top-1 agreement cannot show")
    assert s.tags["quality_warning"].endswith("Give it trained weights: train=realsize or more epochs for a model "
                                              "trained here, model.checkpoint, or a trained file")
    assert s.metrics["predicted_classes"] == 4 and s.metrics["majority_class_share"] == pytest.approx(0.4)
    weak = y.copy()
    weak[20:40] = (weak[20:40] + 1) % 4  # right on 20 + 10 = 30 of 50: 60%
    assert "quality_warning" not in _score(task, [logits(weak)], [logits(weak)], y).tags
    weak[40:] = (weak[40:] + 1) % 4  # right on 20 of 50: 40%, no better than always answering "a"
    s = _score(task, [logits(weak)], [logits(weak)], y)
    assert s.tags["quality_warning"].startswith("the fp32 model's accuracy (40.00%) is no better than always answering "
                                                "the most frequent class 0 (a) (40.00% of the 50 test samples)")
    unlabelled = _task("classification", _probe(("logits", (4,), "float32")), _ds(np.zeros((50, 3, 16, 16), np.float32)))
    assert "quality_warning" in _score(unlabelled, [constant], [constant]).tags
    assert "quality_warning" not in _score(unlabelled, [logits(weak)], [logits(weak)]).tags
    assert _score(unlabelled, [constant], [constant]).tags["quality_warning"].endswith(
        "Are these inputs what it was made for (random inputs often get one answer), and is it trained? Give it real "
        "samples of its data, or trained weights")
    one_class = np.full(50, 2)  # a split of one class: a model right on every sample answers one class too
    assert "quality_warning" not in _score(task, [constant], [constant], one_class).tags


def test_classification_refuses_outputs_that_are_not_the_datas_class_scores():
    ds = _ds(y=np.zeros(8, np.int64), num_classes=10)
    with pytest.raises(TaskError, match=r"task=classification: the model's outputs are 'out' float32\[N, 3\]; "
                                        r"classification reads class scores \[N, C\] with C = 10"):
        _task("classification", _probe(("out", (3,), "float32")), ds)
    with pytest.raises(TaskError, match=r"output 'seg' float32\[N, 4, 8, 8\] is not class scores"):
        _task("classification", _probe(("seg", (4, 8, 8), "float32")), _ds(), output="seg")
    with pytest.raises(TaskError, match=r"task.output='nope' names no output of the model"):
        _task("classification", _probe(("logits", (3,), "float32")), _ds(), output="nope")


# ---------------------------------------------------------------------------------- embedding
def test_embedding_scores_cosine_and_nearest_neighbour_agreement():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((40, 16)).astype(np.float32)
    task = _task("embedding", _probe(("sentence_embedding", (16,), "float32")), _ds(np.zeros((40, 8), np.int64)),
                 neighbours=5)
    same = _score(task, [ref.copy()], [ref])
    assert same.metrics["embedding_cosine_mean"] == pytest.approx(1.0)
    assert same.metrics["neighbour_agreement_at_5"] == pytest.approx(1.0)
    shuffled = _score(task, [rng.standard_normal((40, 16)).astype(np.float32)], [ref])
    assert shuffled.metrics["neighbour_agreement_at_5"] < 0.5 and shuffled.metrics["embedding_cosine_mean"] < 0.5
    assert "accuracy" not in shuffled.metrics and "top1_agreement" not in shuffled.metrics
    from bsb_hydra.tasks.embedding import neighbours

    v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert neighbours(v, 1).ravel().tolist() == [1, 0, 3, 2]


# ------------------------------------------------------------------------------- segmentation
def test_segmentation_iou_matches_torchmetrics_and_streams_with_ignored_pixels():
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(3)
    ref = rng.standard_normal((12, 4, 8, 8)).astype(np.float32)
    cell = ref + 0.7 * rng.standard_normal(ref.shape).astype(np.float32)
    y = rng.integers(0, 4, (12, 8, 8))
    y[:, 0, :] = 255
    ds = _ds(np.zeros((12, 3, 8, 8), np.float32), y, 4)
    task = _task("segmentation", _probe(("out", (4, 8, 8), "float32"), input_shape=(3, 8, 8)), ds, ignore_index=255)
    s = _score(task, [cell], [ref], y, batch=5)
    tm = MulticlassJaccardIndex(num_classes=4, ignore_index=255, average="macro")
    want = float(tm(torch.from_numpy(cell.argmax(1)), torch.from_numpy(y)))
    assert s.metrics["miou"] == pytest.approx(want, rel=1e-6)
    tm2 = MulticlassJaccardIndex(num_classes=4, average="macro")
    assert s.metrics["miou_vs_fp32"] == pytest.approx(float(tm2(torch.from_numpy(cell.argmax(1)),
                                                               torch.from_numpy(ref.argmax(1)))), rel=1e-6)
    assert s.metrics["pixel_agreement"] == pytest.approx(float((cell.argmax(1) == ref.argmax(1)).mean()))
    assert s.metrics["miou_delta_pp"] == pytest.approx(100 * (s.metrics["miou"] - s.metrics["fp32_miou"]))
    assert task.quality_metric() == "miou"


def test_binary_segmentation_reads_the_foreground_and_flags_a_reference_without_one():
    prob = np.zeros((4, 1, 8, 8), np.float32)
    prob[:, :, 2:5, 2:5] = 0.9
    task = _task("segmentation", _probe(("map", prob), input_shape=(3, 8, 8)), _ds(np.zeros((4, 3, 8, 8), np.float32)))
    assert task.kind == "binary" and task.threshold == 0.5 and task.quality_metric() == "foreground_iou_vs_fp32"
    cell = prob.copy()
    cell[:, :, 2:5, 4] = 0.1  # one column of the foreground lost: IoU 6/9
    s = _score(task, [cell], [prob])
    assert s.metrics["foreground_iou_vs_fp32"] == pytest.approx(6 / 9)
    empty = _score(task, [np.zeros_like(prob)], [np.zeros_like(prob)])
    assert "no foreground" in empty.tags["segmentation_note"]
    assert np.isnan(empty.metrics["foreground_iou_vs_fp32"])


def test_segmentation_labels_must_be_masks_of_the_outputs_size():
    ds = _ds(np.zeros((4, 3, 8, 8), np.float32), np.zeros((4, 16, 16), np.int64), 3)
    with pytest.raises(TaskError, match=r"the labels are int64\[16, 16\] per sample; the output 'out' "
                                        r"float32\[N, 3, 8, 8\] needs integer label masks of 8x8"):
        _task("segmentation", _probe(("out", (3, 8, 8), "float32"), input_shape=(3, 8, 8)), ds)


# ---------------------------------------------------------------------------------- detection
def _boxes(n=6, k=5, seed=4):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 40, (n, k, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (n, k, 2)).astype(np.float32)], -1)
    scores = rng.uniform(0.6, 1.0, (n, k)).astype(np.float32)
    scores[:, -1] = 0.0  # a padding slot
    classes = rng.integers(0, 3, (n, k))
    return boxes, scores, classes


def test_detection_map_against_fp32_and_labels_through_torchmetrics():
    boxes, scores, classes = _boxes()
    probe = _probe(("boxes", boxes), ("scores", scores), ("labels", classes))
    y = np.concatenate([boxes, classes[..., None].astype(np.float32)], -1)
    y[:, -1, 4] = -1  # padding row
    task = _task("detection", probe, _ds(np.zeros((6, 3, 16, 16), np.float32), y))
    same = _score(task, [boxes, scores, classes], [boxes, scores, classes], y, batch=4)
    assert same.metrics["map_vs_fp32"] == pytest.approx(1.0) and same.metrics["map"] == pytest.approx(1.0)
    assert same.metrics["detections_per_image"] == 4  # the zero-score slot is padding
    moved = _score(task, [boxes + 6.0, scores, classes], [boxes, scores, classes], y, batch=4)
    assert moved.metrics["map_vs_fp32"] < 0.5 and moved.metrics["map_delta_pp"] < -50
    assert task.describe() == ("detection (xyxy): boxes 'boxes' float32[N, 5, 4], scores 'scores' float32[N, 5], "
                               "classes 'labels' int64[N, 5]")
    weak = _score(task, [boxes, scores * 0.1, classes], [boxes, scores * 0.1, classes], y)
    assert "map_vs_fp32" not in weak.metrics and "reference_min_score=0.5" in weak.tags["detection_note"]


def test_detection_reads_one_combined_output_and_names_what_is_missing():
    boxes, scores, classes = _boxes()
    combined = np.concatenate([boxes, scores[..., None], classes[..., None].astype(np.float32)], -1)
    task = _task("detection", _probe(("output0", combined)), _ds(np.zeros((6, 3, 16, 16), np.float32)))
    assert task.combined == 0
    assert _score(task, [combined], [combined]).metrics["map_vs_fp32"] == pytest.approx(1.0)
    with pytest.raises(TaskError, match=r"found boxes 'b' float32\[N, 5, 4\] but no scores or classes"):
        _task("detection", _probe(("b", boxes)), _ds())


# ------------------------------------------------------------------- image to image, regression
def test_image_to_image_psnr_and_ssim_per_sample_against_fp32_and_targets():
    rng = np.random.default_rng(5)
    target = rng.random((6, 1, 16, 16)).astype(np.float32)
    ref = np.clip(target + 0.05 * rng.standard_normal(target.shape), 0, 1).astype(np.float32)
    cell = np.clip(ref + 0.02 * rng.standard_normal(target.shape), 0, 1).astype(np.float32)
    task = _task("image_to_image", _probe(("sr", ref), input_shape=(1, 8, 8)),
                 _ds(np.zeros((6, 1, 8, 8), np.float32), target))
    assert task.data_range == 1.0
    s = _score(task, [cell], [ref], target, batch=4)
    mse = ((cell.astype(np.float64) - ref) ** 2).reshape(6, -1).mean(1)
    assert s.metrics["psnr_vs_fp32"] == pytest.approx(np.mean(10 * np.log10(1.0 / mse)), rel=1e-4)
    assert s.metrics["mae_vs_fp32"] == pytest.approx(np.abs(cell.astype(np.float64) - ref).mean(), rel=1e-5)
    assert 0 < s.metrics["ssim_vs_fp32"] < 1 and s.metrics["psnr"] < s.metrics["psnr_vs_fp32"]
    assert s.metrics["psnr_delta_db"] == pytest.approx(s.metrics["psnr"] - s.metrics["fp32_psnr"])
    assert _task("image_to_image", _probe(("x", ref * 255), input_shape=(1, 8, 8)), _ds()).data_range == 255.0


def test_regression_mse_and_mae_and_lower_is_better():
    rng = np.random.default_rng(6)
    y = rng.standard_normal((10, 1)).astype(np.float32)
    ref, cell = y + 0.1, y + 0.3
    task = _task("regression", _probe(("value", (1,), "float32")), _ds(np.zeros((10, 4), np.float32), y))
    s = _score(task, [cell], [ref], y)
    assert s.metrics["mae"] == pytest.approx(0.3, rel=1e-5) and s.metrics["fp32_mae"] == pytest.approx(0.1, rel=1e-4)
    assert s.metrics["mse_vs_fp32"] == pytest.approx(0.04, rel=1e-4)
    assert task.quality_metric() == "mae" and not task.higher_is_better
    assert task.quality_values(s.metrics)["quality_delta"] == pytest.approx(0.2, rel=1e-4)


# ------------------------------------------------------------------------------------ task=auto
@pytest.mark.parametrize("outs,labels,input_shape,want", [
    ([("logits", (10,), "float32")], ("int", 10), (3, 16, 16), "classification"),
    ([("last", (384,), "float32")], ("int", 2), (64,), "embedding"),
    ([("out", (21, 16, 16), "float32")], None, (3, 16, 16), "segmentation"),
    ([("out", (21, 4, 4), "float32")], None, (3, 16, 16), "segmentation"),
    ([("mask", (16, 16), "int64")], None, (3, 16, 16), "segmentation"),
    ([("sr", (3, 48, 48), "float32")], None, (3, 16, 16), "image_to_image"),
    ([("b", (8, 4), "float32"), ("s", (8,), "float32"), ("c", (8,), "int64")], None, (3, 16, 16), "detection"),
    ([("sentence_embedding", (384,), "float32")], None, (64,), "embedding"),
    ([("logits", (5,), "float32")], None, (3, 16, 16), "classification"),
    ([("output", (5,), "float32")], None, (3, 16, 16), "raw"),
    ([("last_hidden_state", (64, 384), "float32")], None, (64,), "raw"),
    ([("out", (4, 16, 16), "float32")], ("int_mask", (16, 16)), (3, 16, 16), "segmentation"),
    ([("out", (3, 32, 32), "float32")], ("float", (3, 32, 32)), (3, 16, 16), "image_to_image"),
    ([("v", (2,), "float32")], ("float", (2,)), (8,), "regression"),
    ([("b", (8, 4), "float32"), ("s", (8,), "float32")], ("float", (5, 5)), (3, 16, 16), "detection"),
])
def test_auto_infers_the_task_from_outputs_and_labels(outs, labels, input_shape, want):
    from bsb_hydra.tasks.auto import infer

    y, k = None, None
    if labels and labels[0] == "int":
        y, k = np.zeros(4, np.int64), labels[1]
    elif labels and labels[0] == "int_mask":
        y, k = np.zeros((4, *labels[1]), np.int64), 4
    elif labels:
        y = np.zeros((4, *labels[1]), np.float32)
    ds = _ds(np.zeros((4, *input_shape), np.float32), y, k)
    model = SimpleNamespace(needs_training=lambda labelled: False, name="m")
    name, why = infer(model, _probe(*outs, input_shape=input_shape), ds)
    assert name == want, why
    assert why


def test_auto_keeps_a_built_in_models_declared_task_and_a_model_trained_here_a_classifier():
    from bsb_hydra.config.store import model_schema
    from bsb_hydra.tasks.auto import infer

    cnn = model_schema("cnn")()
    assert infer(cnn, _probe(("x", (10,), "float32")), _ds())[0] == "classification"
    trained = SimpleNamespace(needs_training=lambda labelled: True, name="m")
    name, why = infer(trained, _probe(("x", (4, 8, 8), "float32")), _ds(y=np.zeros(8, np.int64), num_classes=4))
    assert name == "classification" and "trained here" in why


# ------------------------------------------------------------------------------ inputs, outputs
def test_feeds_index_save_and_load_like_arrays(tmp_path):
    from bsb_hydra.feeds import Feeds, load_inputs, resize, save_inputs, specs_of, to_torch_args

    f = Feeds({"input_ids": np.arange(12).reshape(4, 3), "attention_mask": np.ones((4, 3), np.int64)})
    assert len(f) == 4 and f[1:3].arrays["input_ids"].tolist() == [[3, 4, 5], [6, 7, 8]]
    assert f[np.array([0, 3])].arrays["attention_mask"].shape == (2, 3)
    assert [s.describe() for s in specs_of(f)] == ["'input_ids' int64[N, 3]", "'attention_mask' int64[N, 3]"]
    spec = save_inputs(tmp_path / "x", f)
    back = load_inputs(spec, mmap=True)
    assert back.names == ["input_ids", "attention_mask"] and (back.arrays["input_ids"] == f.arrays["input_ids"]).all()
    assert len(resize(f, 6)) == 6 and [a.shape for a in to_torch_args(f)] == [(4, 3), (4, 3)]
    with pytest.raises(TypeError, match="takes named arrays"):
        np.asarray(f)


def test_outputs_go_to_disk_in_chunks_that_pair_up(tmp_path, monkeypatch):
    from bsb_hydra.bench import outputs

    monkeypatch.setattr(outputs, "CHUNK_ELEMENTS", 1000)
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((25, 4, 10, 10)).astype(np.float32), rng.integers(0, 3, (25, 2))
    w = outputs.OutputWriter(tmp_path / "o")
    for i in range(0, 25, 10):
        w.write([a[i:i + 10], b[i:i + 10]])
    w.close(["map", "ids"])
    r = outputs.OutputReader(tmp_path / "o")
    assert r.names == ["map", "ids"] and r.samples == 25 and r.batches == 13  # 2 samples (804 elements) a file
    chunks = list(r)
    assert max(len(c[0]) for c in chunks) == 2
    assert (np.concatenate([c[0] for c in chunks]) == a).all() and (np.concatenate([c[1] for c in chunks]) == b).all()
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["dtypes"] == ["float32", "int64"]


def test_random_inputs_follow_each_inputs_name_dtype_and_vocabulary():
    from bsb_hydra.data.random import RandomDataConfig, _load
    from bsb_hydra.feeds import InputSpec

    specs = [InputSpec("input_ids", (12,), "int64", vocab=50), InputSpec("attention_mask", (12,), "int64"),
             InputSpec("token_type_ids", (12,), "int32"), InputSpec("pixels", (None, 4), "float32")]
    cfg = RandomDataConfig(samples=20, shape=[3, 4])
    ds = _load(cfg, 0, None, specs)
    x = ds.x_test.arrays
    assert x["input_ids"].dtype == np.int64 and 1 <= x["input_ids"].min() and x["input_ids"].max() < 50
    assert (x["attention_mask"] == 1).all() and (x["token_type_ids"] == 0).all() and x["token_type_ids"].dtype == np.int32
    assert x["pixels"].shape == (20, 3, 4) and x["pixels"].dtype == np.float32
    with pytest.raises(Exception, match=r"input 'pixels' float32\[N, None, 4\] has dynamic dims: give data.shape"):
        _load(RandomDataConfig(samples=4), 0, None, specs[3:])


def test_text_feeds_every_input_a_tokenizer_gives():
    from bsb_hydra.data import Dataset
    from bsb_hydra.data.text import as_model_inputs
    from bsb_hydra.feeds import InputSpec

    ids = np.array([[2, 7, 9, 3, 0, 0], [2, 5, 3, 0, 0, 0]])
    ds = Dataset("t", ids, np.zeros(2, np.int64), ids, np.zeros(2, np.int64), 2, vocab=SimpleNamespace(pad_id=0))
    specs = [InputSpec("input_ids", (None,), "int64"), InputSpec("attention_mask", (None,), "int64"),
             InputSpec("token_type_ids", (6,), "int64")]
    out = as_model_inputs(ds, specs).x_test.arrays
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert (out["token_type_ids"] == 0).all() and (out["input_ids"] == ids).all()
    with pytest.raises(Exception, match=r"does not take token ids of data.seq_len=6"):
        as_model_inputs(ds, [InputSpec("input_ids", (8,), "int64")])


def test_npz_labels_of_any_shape_for_the_task_and_calibration_uses_what_there_is(tmp_path):
    from omegaconf import OmegaConf

    from bsb_hydra.config import InputError
    from bsb_hydra.config.store import schemas
    from bsb_hydra.data import calibration_indices, load_dataset

    def cfg(path):
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schemas("data")["npz"]), {"path": str(path)}))

    x = np.zeros((10, 3, 8, 8), np.float32)
    np.savez(tmp_path / "seg.npz", x_train=x, y_train=np.ones((10, 8, 8), np.uint8), x_test=x[:4],
             y_test=np.ones((4, 8, 8), np.uint8))
    ds = load_dataset(cfg(tmp_path / "seg.npz"), 0)
    assert ds.y_test.dtype == np.uint8 and ds.y_test.shape == (4, 8, 8) and ds.labelled  # masks stay compact
    np.savez(tmp_path / "sr.npz", x_train=x, y_train=np.zeros((10, 3, 16, 16), np.float64), x_test=x[:4],
             y_test=np.zeros((4, 3, 16, 16), np.float64))
    assert load_dataset(cfg(tmp_path / "sr.npz"), 0).y_test.dtype == np.float32
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.zeros((10, 2)), x_test=x[:4], y_test=np.zeros((4, 3)))
    with pytest.raises(InputError, match=r"y_train is float64\[2\] per sample, y_test float64\[3\]"):
        load_dataset(cfg(tmp_path / "bad.npz"), 0)
    assert len(calibration_indices(ds, 256, 0)) == 10  # more asked than there is: all of it


def test_the_task_group_at_auto_leaves_config_hash_and_params_as_before(compose_cfg):
    """The task group came after runs had been stored: at task=auto (every earlier run's reading) it
    changes neither config_hash (resume finds the older runs) nor the params; another task does."""
    from omegaconf import open_dict

    from bsb_hydra.cell import config_hash
    from bsb_hydra.tracking import resolved_params

    cfg = compose_cfg([])
    cfg.paths.root = "/tmp/project"
    before = cfg.copy()
    with open_dict(before):
        del before.task
    assert config_hash(cfg) == config_hash(before)
    assert not any(k.startswith("task.") for k in resolved_params(cfg))
    seg = compose_cfg(["task=segmentation"])
    seg.paths.root = "/tmp/project"
    assert config_hash(seg) != config_hash(before) and resolved_params(seg)["task.name"] == "segmentation"


def test_scheme_properties_live_on_the_quant_configs():
    from bsb_hydra.config.store import schemas

    q = {name: schema() for name, schema in schemas("quant").items()}
    assert {n for n, c in q.items() if c.int8} == {"dynamic", "static", "qat", "auto"}
    assert {n for n, c in q.items() if c.calibrates()} == {"static", "qat", "auto"}
    assert q["qat"].label_reason() and q["auto"].label_reason() and not q["static"].label_reason()
    assert "task=classification" in q["qat"].task_reason("segmentation") and not q["static"].task_reason("detection")
    assert not q["auto"].task_reason("classification")


def test_a_file_rewritten_at_the_same_path_is_another_measurement(compose_cfg, tmp_path):
    """config_hash holds the SHA-256 of the files a config names (a checkpoint, an npz): resume never
    skips a cell whose weights or data changed under the same path; a config naming no file keeps
    its hash."""
    from bsb_hydra.cell import config_hash

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"one")
    cfg = compose_cfg(["model=torch", "model.target=x.Net", "model.input_shape=[3,8,8]", f"model.checkpoint={ckpt}"])
    cfg.paths.root = "/tmp/project"
    first = config_hash(cfg)
    assert config_hash(cfg) == first
    ckpt.write_bytes(b"two")
    assert config_hash(cfg) != first
    plain = compose_cfg([])
    plain.paths.root = "/tmp/project"
    from omegaconf import OmegaConf

    from bsb_hydra import tracking

    c = OmegaConf.to_container(plain, resolve=True, enum_to_str=True)
    for k in ("hydra", "mlflow", "paths", "debug", "force", "peak"):
        c.pop(k, None)
    tracking.drop_inert(c)
    import hashlib

    assert config_hash(plain) == hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------- labels beside image files
def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_masks_twin_folder_is_resized_with_the_images(tmp_path):
    from omegaconf import OmegaConf

    from bsb_hydra.config.store import schemas
    from bsb_hydra.data import load_dataset
    from bsb_hydra.data.transforms import fit_to_model

    rng = np.random.default_rng(8)
    for i in range(6):
        img = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
        mask = np.zeros((20, 24), np.uint8)
        mask[4:12, 6:18] = 1 + i % 2
        _png(tmp_path / "seg" / "images" / f"im{i}.png", img)
        _png(tmp_path / "seg" / "masks" / f"im{i}.png", mask)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schemas("data")["image_folder"]),
                                              {"root": str(tmp_path / "seg"), "resize": 16, "test_fraction": 0.34}))
    ds = fit_to_model(load_dataset(cfg, 0), (3, 16, 16), cfg, "m")
    assert ds.y_test.shape == (2, 16, 16) and ds.y_train.shape == (4, 16, 16) and ds.y_test.dtype == np.int32
    assert set(np.unique(np.concatenate([ds.y_train.ravel(), ds.y_test.ravel()]))) == {0, 1, 2}  # never blended
    assert ds.num_classes == 3 and ds.x_test[:2].shape == (2, 3, 16, 16) and "with masks" in ds.source
    (tmp_path / "seg" / "masks" / "im0.png").unlink()
    from bsb_hydra.config import InputError

    with pytest.raises(InputError, match=r"1 image\(s\) of .*images have no mask of the same name .* \(e.g. im0.png\)"):
        load_dataset(cfg, 1)


def test_coco_boxes_follow_their_images_to_the_models_size(tmp_path):
    from omegaconf import OmegaConf

    from bsb_hydra.config import InputError
    from bsb_hydra.config.store import schemas
    from bsb_hydra.data import load_dataset
    from bsb_hydra.data.transforms import fit_to_model

    for i, (w, h) in enumerate(((32, 16), (16, 16), (64, 32))):
        _png(tmp_path / "img" / f"{i}.png", np.zeros((h, w, 3), np.uint8))
    doc = {"images": [{"id": 10 + i, "file_name": f"{i}.png", "width": w, "height": h}
                      for i, (w, h) in enumerate(((32, 16), (16, 16), (64, 32)))],
           "annotations": [{"image_id": 10, "bbox": [8, 4, 8, 8], "category_id": 3},
                           {"image_id": 12, "bbox": [0, 0, 32, 16], "category_id": 1},
                           {"image_id": 12, "bbox": [1, 1, 2, 2], "category_id": 2, "iscrowd": 1}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schemas("data")["coco"]),
                                              {"root": str(tmp_path / "img"), "annotations": str(tmp_path / "ann.json"),
                                               "resize": 16}))
    ds = fit_to_model(load_dataset(cfg, 0), (3, 16, 16), cfg, "m")
    y = ds.y_test
    assert y.shape == (3, 1, 5) and ds.labelled and ds.class_names == ["0", "cat", "2", "dog"]
    assert y[0, 0].tolist() == [4.0, 4.0, 8.0, 12.0, 3.0]  # x halved (32 -> 16 wide), y as it was
    assert y[1, 0, 4] == -1 and y[2, 0].tolist() == [0.0, 0.0, 8.0, 8.0, 1.0]  # no box; the crowd box skipped
    doc["annotations"].append({"image_id": 99, "bbox": [0, 0, 1, 1], "category_id": 1})
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"annotations\[3\] needs image_id \(of a listed image\)"):
        load_dataset(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schemas("data")["coco"]),
                                                         {"root": str(tmp_path / "img"),
                                                          "annotations": str(tmp_path / "bad.json")})), 0)


def test_every_key_a_scorer_computes_against_fp32_is_one_a_cell_without_a_reference_drops():
    """scoring.FP32_COMPARISONS is what a cell without a fp32 reference (a quantized .tflite given alone)
    drops: every metric whose value changes when only the reference's outputs change must match it, and
    the task's own quality against the labels must not."""
    from bsb_hydra.scoring import compares_with_fp32

    rng = np.random.default_rng(9)
    boxes, scores, classes = _boxes()
    y_det = np.concatenate([boxes, classes[..., None].astype(np.float32)], -1)
    logits = rng.standard_normal((12, 4)).astype(np.float32)
    seg = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    img = rng.random((6, 1, 16, 16)).astype(np.float32)
    emb = rng.standard_normal((12, 16)).astype(np.float32)
    value = rng.standard_normal((12, 1)).astype(np.float32)
    cases = [
        ("classification", _probe(("logits", logits)), _ds(np.zeros((12, 3, 8, 8), np.float32),
                                                           rng.integers(0, 4, 12), num_classes=4), [logits],
         rng.integers(0, 4, 12)),
        ("segmentation", _probe(("out", seg)), _ds(np.zeros((6, 3, 8, 8), np.float32)), [seg],
         rng.integers(0, 3, (6, 8, 8))),
        ("image_to_image", _probe(("sr", img), input_shape=(1, 8, 8)), _ds(np.zeros((6, 1, 8, 8), np.float32)), [img],
         np.clip(img + 0.05, 0, 1)),
        ("embedding", _probe(("e", emb)), _ds(np.zeros((12, 8), np.int64)), [emb], None),
        ("regression", _probe(("v", value)), _ds(np.zeros((12, 4), np.float32)), [value], value + 0.1),
        ("detection", _probe(("boxes", boxes), ("scores", scores), ("labels", classes)),
         _ds(np.zeros((6, 3, 16, 16), np.float32)), [boxes, scores, classes], y_det),
        ("raw", _probe(("o", value)), _ds(np.zeros((12, 4), np.float32)), [value], None),
    ]
    for name, probe, ds, outs, labels in cases:
        if labels is not None:
            ds.y_test, ds.labelled = labels, True
        task = _task(name, probe, ds, **({"neighbours": 3} if name == "embedding" else {}))
        noisy = [(o + 0.3 * rng.standard_normal(o.shape)).astype(o.dtype) if o.dtype.kind == "f" else o for o in outs]
        if name == "detection":
            noisy = [outs[0] + 3.0, outs[1], outs[2]]
        a = _score(task, noisy, outs, labels, batch=4).metrics
        b = _score(task, noisy, [(o + 0.7 * rng.standard_normal(o.shape)).astype(o.dtype) if o.dtype.kind == "f" else o
                                 for o in (outs if name != "detection" else [outs[0] - 2.0, outs[1], outs[2]])],
                   labels, batch=4).metrics
        changed = {k for k in set(a) | set(b) if k not in a or k not in b or
                   not (a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])))}
        assert changed and all(compares_with_fp32(k) for k in changed), (name, sorted(k for k in changed
                                                                                      if not compares_with_fp32(k)))
        quality = task.quality_metric()
        if quality and labels is not None:
            assert quality in a and not compares_with_fp32(quality), (name, quality)
