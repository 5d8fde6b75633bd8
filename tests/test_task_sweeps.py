"""Every task through real sweeps, on small models built here: a 3-input BERT-style ONNX with a
classification head and one with an embedding output (random BertConfig, a tokenizer folder of its
own), a segmentation net, a detection net and an image-to-image (ESPCN-style) net given as model=torch
with a state_dict, each through quant=fp32,dynamic,static on every backend, with labels; without labels
on onnxruntime. Also: a TorchScript file's schemes, and two real pretrained ONNX files of PaddleOCR (the
rapidocr-onnxruntime wheel: a text detector whose output is a probability map, a 2-class classifier on
which ORT's symbolic shape inference asserts)."""
import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMOKE, model_of, run_bsb, runs_of

QUICK = [a for a in SMOKE if not a.startswith(("data.limit_test", "benchmark.batch_sizes"))] + \
    ["benchmark.batch_sizes=[1]", "quant.samples=32"]
CLASSIFIER_ONLY = ("accuracy", "top1_agreement", "accuracy_delta_p_value", "gained_vs_fp32", "lost_vs_fp32",
                   "fp32_accuracy", "kl_div")

NETS = '''
import torch
from torch import nn


class Seg(nn.Module):
    """(3, 16, 16) -> scores of 4 classes per pixel, returned as torchvision's segmentation models do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return {"out": self.body(x)}


class SuperRes(nn.Module):
    """ESPCN-style: (1, 8, 8) -> (1, 16, 16) through a pixel shuffle, a residual on the upsampled input."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 4, 3, padding=1))
        self.up = nn.PixelShuffle(2)
        self.near = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        return self.near(x) + 0.05 * self.up(self.body(x))


class Det(nn.Module):
    """(3, 16, 16) -> 6 boxes (xyxy), their scores and classes per image."""

    def __init__(self, k=6, classes=2):
        super().__init__()
        self.k, self.c = k, classes
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten())
        self.box = nn.Linear(32, k * 4)
        self.cls = nn.Linear(32, k * (classes + 1))
        nn.init.normal_(self.cls.weight, std=2.0)  # confident scores, so fp32's detections are a reference

    def forward(self, x):
        f = self.body(x)
        b = torch.sigmoid(self.box(f)).view(-1, self.k, 4) * 16.0
        boxes = torch.cat([torch.minimum(b[..., :2], b[..., 2:]), torch.maximum(b[..., :2], b[..., 2:]) + 1.0], -1)
        p = torch.softmax(self.cls(f).view(-1, self.k, self.c + 1), -1)
        scores, classes = p[..., 1:].max(-1)
        return boxes, scores, classes
'''


def _nets(d: Path):
    """The nets' package under d, importable by the sweeps (PYTHONPATH) and here."""
    pkg = d / "pkg" / "tasknets"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(NETS))
    sys.path.insert(0, str(d / "pkg"))
    try:
        import importlib

        import tasknets.nets as nets

        return importlib.reload(nets)
    finally:
        sys.path.remove(str(d / "pkg"))


def _made(d: Path, name: str) -> Path:
    """One net's state_dict and its npz data under d (labelled, and x only): seg, sr or det."""
    import torch

    nets = _nets(d)
    torch.manual_seed(0)
    torch.save({"seg": nets.Seg, "sr": nets.SuperRes, "det": nets.Det}[name]().eval().state_dict(), d / f"{name}.pt")
    rng = np.random.default_rng(0)
    # a bright square of class 1 or 2 on a dark background
    x = (rng.random((96, 3, 16, 16)) * 0.3).astype(np.float32)
    y = np.zeros((96, 16, 16), np.uint8)
    for i in range(96):
        c, (r, q) = 1 + i % 2, rng.integers(0, 8, 2)
        x[i, :, r:r + 8, q:q + 8] += 0.3 * c
        y[i, r:r + 8, q:q + 8] = c
    if name == "seg":
        np.savez(d / "seg.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
        np.savez(d / "seg_x.npz", x=x[64:])
    elif name == "sr":
        hr = rng.random((96, 1, 16, 16)).astype(np.float32)
        lr = hr.reshape(96, 1, 8, 2, 8, 2).mean((3, 5))
        np.savez(d / "sr.npz", x_train=lr[:64], y_train=hr[:64], x_test=lr[64:], y_test=hr[64:])
        np.savez(d / "sr_x.npz", x=lr[64:])
    else:
        boxes = np.full((96, 2, 5), -1.0, np.float32)
        for i in range(96):
            a = rng.uniform(0, 8, 2)
            boxes[i, 0] = [a[0], a[1], a[0] + 6, a[1] + 6, i % 2]
        np.savez(d / "det.npz", x_train=x[:64], y_train=boxes[:64], x_test=x[64:], y_test=boxes[64:])
        np.savez(d / "det_x.npz", x=x[64:])
    return d


def _bert(d: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    words = ["a", "great", "fun", "film", "dull", "boring", "mess", "number"] + [str(i) for i in range(120)]
    (d / "tok").mkdir()
    (d / "tok" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    tok = BertTokenizer(str(d / "tok" / "vocab.txt"))
    tok.save_pretrained(str(d / "tok"))
    with open(d / "texts.csv", "w") as f:
        f.write("review,sentiment\n")
        for i in range(120):
            good = i % 2 == 0
            f.write(f"\"{'a great fun film' if good else 'a dull boring mess'} number {i}\",{'pos' if good else 'neg'}\n")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)

    class Head(torch.nn.Module):
        def __init__(self, m, pooled):
            super().__init__()
            self.m, self.pooled = m, pooled

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            if not self.pooled:
                return out.logits
            m = attention_mask.unsqueeze(-1).float()
            return (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(5, len(tok), (2, 12))
    for file, model, out in (("bert_cls.onnx", Head(BertForSequenceClassification(cfg), False), "logits"),
                             ("bert_emb.onnx", Head(BertModel(cfg, add_pooling_layer=False), True),
                              "sentence_embedding")):
        torch.onnx.export(model.eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(d / file),
                          input_names=names, output_names=[out], dynamo=False, opset_version=17,
                          dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, out: {0: "batch"}})


def _env(made):
    return {"PYTHONPATH": str(made / "pkg")}


def _sweep(tmp, name, target, shape, backends="onnxruntime,pytorch,tflite", extra=()):
    """The net with labels on every backend, and without labels on onnxruntime. Each net's sweeps
    have a fixture of their own (no shared module fixture): xdist runs them on both workers."""
    made = _made(tmp, name)
    common = ["model=torch", f"model.target=tasknets.nets.{target}", f"model.checkpoint={made}/{name}.pt",
              f"model.input_shape={shape}", "data=npz", *QUICK, *extra]
    run_bsb(["-m", *common, f"data.path={made}/{name}.npz", "quant=fp32,dynamic,static", f"backend={backends}"],
            tmp, env_extra=_env(made), sweep="labelled")
    run_bsb(["-m", *common, f"data.path={made}/{name}_x.npz", "quant=fp32,static", "backend=onnxruntime"], tmp,
            env_extra=_env(made), sweep="unlabelled")
    _, runs = runs_of(tmp)
    return tmp, {(r.data.tags["quant"], r.data.tags["backend"], r.data.tags["labelled"]): r for r in runs}


def _common_checks(runs, task, quality):
    for key, r in runs.items():
        t, m = r.data.tags, r.data.metrics
        if t["status"] != "ok":
            continue
        assert t["task"] == task and t["task_inferred"], (key, t.get("task_inferred"))
        assert not set(CLASSIFIER_ONLY) & set(m), (key, sorted(set(CLASSIFIER_ONLY) & set(m)))
        assert any(k.startswith("fidelity/") for k in m) and "cosine_mean" in m, key
        want = quality if t["labelled"] == "true" else f"{quality}_vs_fp32"
        assert t["quality_metric"] == want, key
        if want in m:  # an fp32 cell's PSNR against itself is infinite: not logged
            assert m["quality"] == m[want], key
        if key[0] == "fp32":
            assert m["cosine_mean"] == pytest.approx(1.0) and m["size_ratio"] == 1.0
        assert m["stage_score_peak_rss_mb"] > 0


@pytest.fixture(scope="module")
def seg_runs(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("seg"), "seg", "Seg", "[3,16,16]")


def test_segmentation_on_every_backend_with_and_without_labels(seg_runs):
    _, seg_runs = seg_runs
    assert len(seg_runs) == 11
    _common_checks(seg_runs, "segmentation", "miou")
    for key, r in seg_runs.items():
        t, m = r.data.tags, r.data.metrics
        if key[0] == "dynamic" and key[1] in ("onnxruntime", "pytorch"):  # convolutions only: nothing to quantize
            assert t["status"] == "unsupported" and "quantized nothing" in t["reason"], key
            continue
        assert t["status"] == "ok", (key, t.get("reason"))
        assert 0.0 <= m["miou_vs_fp32"] <= 1.0 and 0.0 <= m["pixel_agreement"] <= 1.0
        if t["labelled"] == "true":
            assert {"miou", "fp32_miou", "pixel_accuracy", "miou_delta_pp"} <= set(m)
            assert "integer masks [16, 16]" in t["task_inferred"]
        else:
            assert "miou" not in m and "4 channels over a 16x16 grid" in t["task_inferred"]


def test_the_report_groups_a_task_by_its_own_quality_metric(seg_runs):
    """python -m bsb_hydra.report on the segmentation sweep's store: its groups are segmentation groups,
    the frontier and the tables use mIoU (with labels) or mIoU against fp32 (without), never accuracy."""
    import csv
    import subprocess

    from tests.conftest import PYTHON, ROOT

    tmp, _ = seg_runs
    uri = f"sqlite:///{tmp}/mlflow.db"
    proc = subprocess.run([PYTHON, "-m", "bsb_hydra.report", f"tracking_uri={uri}", f"out={tmp}/report"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp / "report" / "report.md").read_text()
    assert md.count("(segmentation)") >= 2 and "| miou |" in md and "| miou_vs_fp32 |" in md
    assert "best miou:" in md and "best miou_vs_fp32:" in md and "accuracy %" not in md
    rows = list(csv.DictReader((tmp / "report" / "rows.csv").open()))
    assert {r["task"] for r in rows} == {"segmentation"}
    assert {r["quality_metric"] for r in rows} == {"miou", "miou_vs_fp32"}
    assert all(r["accuracy"] == "" for r in rows) and all(r["quality"] for r in rows)
    assert len(list((tmp / "report").glob("*_tradeoff.png"))) == 2  # labelled and unlabelled: two groups


@pytest.fixture(scope="module")
def sr_runs(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("sr"), "sr", "SuperRes", "[1,8,8]")


def test_image_to_image_on_every_backend_with_and_without_labels(sr_runs):
    _, sr_runs = sr_runs
    _common_checks(sr_runs, "image_to_image", "psnr")
    ok = {k: r for k, r in sr_runs.items() if r.data.tags["status"] == "ok"}
    assert len(ok) == 9  # dynamic on onnxruntime and pytorch: no Linear, nothing quantized
    for key, r in ok.items():
        m = r.data.metrics
        assert m["image_data_range"] == 1.0 and "ssim_vs_fp32" in m and "mae_vs_fp32" in m
        if key[0] != "fp32":
            assert m["psnr_vs_fp32"] > 20 and 0 < m["ssim_vs_fp32"] <= 1
        if key[2] == "true":
            assert {"psnr", "fp32_psnr", "ssim", "psnr_delta_db"} <= set(m)
    assert "2x the input's size (super-resolution)" in sr_runs[("fp32", "onnxruntime", "false")].data.tags["task_inferred"]


@pytest.fixture(scope="module")
def det_runs(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("det"), "det", "Det", "[3,16,16]")


def test_detection_on_every_backend_with_and_without_labels(det_runs):
    _, det_runs = det_runs
    _common_checks(det_runs, "detection", "map")
    for key, r in det_runs.items():
        t, m = r.data.tags, r.data.metrics
        assert t["status"] == "ok", (key, t.get("reason"))
        assert "boxes 'output_0' float32[N, 6, 4]" in t["task_reads"] and "classes 'output_2' int64[N, 6]" in t["task_reads"]
        assert m["reference_detections"] > 0 and 0.0 <= m["map_vs_fp32"] <= 1.0 and "map50_vs_fp32" in m
        assert m["fidelity/output_2/agreement"] <= 1.0  # class ids: agreement, not an SQNR
        if key[0] == "fp32":
            assert m["map_vs_fp32"] == pytest.approx(1.0)
        if key[2] == "true":
            assert {"map", "fp32_map", "map50", "map_delta_pp"} <= set(m)


@pytest.fixture(scope="module")
def bert_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    made = tmp
    _bert(made)
    run_bsb(["-m", "model=onnx", f"model.path={made}/bert_cls.onnx,{made}/bert_emb.onnx", f"model.tokenizer={made}/tok",
             "data=text_csv", f"data.path={made}/texts.csv", "data.text_column=review", "data.label_column=sentiment",
             "data.seq_len=12", "quant=fp32,dynamic,static", "backend=onnxruntime,pytorch,tflite", *QUICK], tmp)
    run_bsb(["-m", "model=onnx", f"model.path={made}/bert_cls.onnx", "data=random", "data.samples=24",
             "data.shape=[12]", "task=classification", "quant=fp32,static", "backend=onnxruntime", *QUICK], tmp,
            sweep="random")
    _, runs = runs_of(tmp)
    return {(r.data.tags["model"], r.data.tags["data"], r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}


def test_three_input_bert_exports_classify_and_embed_on_onnxruntime(bert_runs):
    for (model, data, quant, backend), r in bert_runs.items():
        t, m = r.data.tags, r.data.metrics
        if backend != "onnxruntime":
            assert t["status"] == "unsupported" and "is an ONNX file" in t["reason"]
            continue
        assert t["status"] == "ok", (model, data, quant, t.get("reason"))
        assert t["input_shape"] == "input_ids:12,attention_mask:12,token_type_ids:12"
        if model == "bert_emb":
            assert t["task"] == "embedding" and "not one score per class" in t["task_inferred"]
            assert not set(CLASSIFIER_ONLY) & set(m) and 0.9 < m["embedding_cosine_mean"] <= 1.0 + 1e-9
            assert 0.0 <= m["neighbour_agreement_at_10"] <= 1.0
        elif data == "text_csv":
            assert t["task"] == "classification" and 0 <= m["accuracy"] <= 1 and m["test_samples"] == 24
        else:  # random ids within the model's 133-row embedding table, masks of ones, token types of zeros
            assert t["task"] == "classification" and "task_inferred" not in t and "accuracy" not in m
            assert "top1_agreement" in m and "by dtype" in t["data_source"]
        if quant == "static":
            assert m["size_ratio"] < 1.0
    static = bert_runs[("bert_cls", "text_csv", "static", "onnxruntime")].data.tags
    assert "transformer scope" in static["build.attention_scope"] and static["build.excluded_nodes"]


def test_a_torchscript_file_runs_every_scheme_it_can_and_names_why_not_the_rest(tmp_path):
    import torch

    made = _made(tmp_path, "det")
    net = _nets(tmp_path).Det().eval()
    net.load_state_dict(torch.load(made / "det.pt"))
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 16, 16)), tmp_path / "det_script.pt")
    run_bsb(["-m", "model=torch", f"model.checkpoint={tmp_path}/det_script.pt", "model.allow_pickle=true",
             "model.input_shape=[3,16,16]", "data=npz", f"data.path={made}/det.npz", "quant=fp32,dynamic,static",
             "backend=pytorch,onnxruntime,tflite", *QUICK], tmp_path)
    _, runs = runs_of(tmp_path)
    by = {(r.data.tags["quant"], r.data.tags["backend"]): r.data.tags for r in runs}
    assert by[("dynamic", "pytorch")]["status"] == "unsupported"
    assert "quantized nothing" in by[("dynamic", "pytorch")]["reason"]
    assert "TorchScript" in by[("static", "pytorch")]["reason"] and by[("static", "pytorch")]["status"] == "unsupported"
    for q in ("fp32", "dynamic", "static"):
        assert by[(q, "tflite")]["status"] == "unsupported" and "TorchScript" in by[(q, "tflite")]["reason"]
        assert by[(q, "onnxruntime")]["status"] == "ok", by[(q, "onnxruntime")].get("reason")
    assert by[("fp32", "pytorch")]["status"] == "ok"


def _rapidocr() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None, "make setup installs rapidocr-onnxruntime (--no-deps) for its .onnx files"
    return Path(spec.submodule_search_locations[0]) / "models"


def test_real_pretrained_onnx_models_from_a_package(tmp_path):
    """PaddleOCR's orientation classifier (ORT's symbolic shape inference asserts on its Concat: the
    pre-processing runs without it and says so; opset 11, so per-channel QDQ needs the opset-13 copy)
    and its text detector (a probability map: a binary mask). Started from a folder of its own: the
    shape inference's temporary files must land in the cell's folder, not there."""
    models = _rapidocr()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {}
    args = ["data=random", "data.samples=16", "quant=fp32,dynamic,static", "backend=onnxruntime", *QUICK]
    run_bsb(["-m", "model=onnx", f"model.path={models}/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "model.input_shape=[3,48,192]", "task=classification", *args], tmp_path, env_extra=env, cwd=cwd)
    run_bsb(["-m", "model=onnx", f"model.path={models}/ch_PP-OCRv4_det_infer.onnx", "model.input_shape=[3,64,64]",
             *args], tmp_path, sweep="det", env_extra=env, cwd=cwd)
    assert sorted(os.listdir(cwd)) == [], "quant_pre_process left files where the sweep was started"
    client, runs = runs_of(tmp_path)
    # a dot in the cell id (the file name), which MLflow refuses in a LoggedModel name, becomes "_"
    for r in (r for r in runs if r.data.tags["status"] == "ok"):
        lm = model_of(client, r)
        assert lm.name == r.data.tags["cell"].replace(".", "_") and lm.tags["cell"] == r.data.tags["cell"]
    by = {(r.data.tags["model"], r.data.tags["quant"]): r for r in runs}
    dyn = by[("ch_ppocr_mobile_v2.0_cls_infer", "dynamic")].data.tags
    assert dyn["status"] == "ok", dyn.get("reason")
    assert "without symbolic shape inference" in dyn["build.preprocess"] and "AssertionError" in dyn["build.preprocess"]
    assert "Concat" in dyn["build.preprocess"]
    static = by[("ch_ppocr_mobile_v2.0_cls_infer", "static")].data.tags
    assert static["status"] == "ok" and static["build.opset"].startswith("11 -> 13"), static.get("reason")
    det = by[("ch_PP-OCRv4_det_infer", "fp32")].data.tags
    assert det["task"] == "segmentation" and "probabilities in [0, 1]" in det["task_inferred"]
    assert det["quality_metric"] == "foreground_iou_vs_fp32"
    dd = by[("ch_PP-OCRv4_det_infer", "dynamic")].data.tags
    assert dd["status"] == "unsupported" and "quantized nothing" in dd["reason"] and "Conv" in dd["reason"]
    assert by[("ch_PP-OCRv4_det_infer", "static")].data.tags["status"] == "ok"


def test_a_model_whose_outputs_the_task_cannot_read_fails_before_any_quantization(tmp_path):
    made = _made(tmp_path, "seg")
    run_bsb(["model=torch", "model.target=tasknets.nets.Seg", f"model.checkpoint={made}/seg.pt",
             "model.input_shape=[3,16,16]", "data=npz", f"data.path={made}/seg.npz", "task=detection", "quant=static",
             "backend=onnxruntime", *QUICK], tmp_path, env_extra=_env(made), failed=True)
    _, runs = runs_of(tmp_path)
    t, m = runs[0].data.tags, runs[0].data.metrics
    assert t["status"] == "failed" and t["reason"].startswith("TaskError: task=detection: the model's outputs are "
                                                              "'logits' float32[N, 4, 16, 16]")
    assert "\n" not in t["reason"] and "stage_quantize_seconds" not in m and "quantize_seconds" not in m


def test_label_masks_and_coco_boxes_beside_image_files(tmp_path):
    """data=image_folder with a masks/ twin folder (segmentation labels) and data=coco (a COCO-style JSON
    of boxes): the labels follow the images to the model's 16x16 input, and the tasks score against them."""
    import json as js

    from PIL import Image

    made = _made(tmp_path, "seg")
    _made(tmp_path, "det")
    f = np.load(made / "seg.npz")
    for split, xs, ys in (("train", f["x_train"][:24], f["y_train"][:24]), ("test", f["x_test"][:12], f["y_test"][:12])):
        for i, (x, y) in enumerate(zip(xs, ys)):
            for sub, arr in (("images", (x.transpose(1, 2, 0) * 255).astype(np.uint8)), ("masks", y)):
                (tmp_path / "seg" / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.kron(arr, np.ones((2, 2) + (1,) * (arr.ndim - 2), np.uint8))).save(
                    tmp_path / "seg" / split / sub / f"{i}.png")  # stored at 32x32: fitted back to 16x16
    d = np.load(made / "det.npz")
    (tmp_path / "coco").mkdir()
    images, anns = [], []
    for i, (x, boxes) in enumerate(zip(d["x_test"][:12], d["y_test"][:12])):
        Image.fromarray((x.transpose(1, 2, 0) * 255).astype(np.uint8)).save(tmp_path / "coco" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 16, "height": 16})
        anns += [{"image_id": i, "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                  "category_id": int(b[4])} for b in boxes if b[4] >= 0]
    (tmp_path / "ann.json").write_text(js.dumps({"images": images, "annotations": anns, "categories": []}))
    common = ["model=torch", "model.input_shape=[3,16,16]", "quant=fp32,static", "backend=onnxruntime", *QUICK]
    run_bsb(["-m", *common, "model.target=tasknets.nets.Seg", f"model.checkpoint={made}/seg.pt", "data=image_folder",
             f"data.root={tmp_path}/seg"], tmp_path, env_extra=_env(made))
    run_bsb(["-m", *common, "model.target=tasknets.nets.Det", f"model.checkpoint={made}/det.pt", "data=coco",
             f"data.root={tmp_path}/coco", f"data.annotations={tmp_path}/ann.json"], tmp_path, env_extra=_env(made),
            sweep="coco")
    _, runs = runs_of(tmp_path)
    by = {(r.data.tags["data"], r.data.tags["quant"]): r for r in runs}
    for key, r in by.items():
        assert r.data.tags["status"] == "ok", (key, r.data.tags.get("reason"))
    seg = by[("image_folder", "static")]
    assert seg.data.tags["task"] == "segmentation" and "miou" in seg.data.metrics and seg.data.metrics["test_samples"] == 12
    assert "resize 16x16" in seg.data.tags["data_transform"]
    det = by[("coco", "fp32")]
    assert det.data.tags["task"] == "detection" and det.data.metrics["map"] == det.data.metrics["fp32_map"]
    assert "boxes [M, 5]" in det.data.tags["task_inferred"] and "COCO-style" in det.data.tags["data_source"]
