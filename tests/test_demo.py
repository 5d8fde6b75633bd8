"""The demo classifies one input with the fp32 model and a quantized variant, side by side."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _demo(args, tmp_path):
    env = dict(os.environ, BSB_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "bsb_hydra.demo", "train=smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _rows(out):
    return [line.split() for line in out.splitlines() if line.split() and line.split()[0] in
            ("fp32", "dynamic", "static")]


def test_text_demo_prints_fp32_and_int8_rows(tmp_path):
    out = _demo(["model=lstm", "backend=onnxruntime", "data.vocab_size=2000", "data.seq_len=16",
                 "a gorgeous, witty, seductive movie"], tmp_path)
    assert "'a gorgeous, witty, seductive movie'" in out
    rows = _rows(out)
    assert [r[0] for r in rows] == ["fp32", "dynamic"]
    for r in rows:
        assert r[1] in ("positive", "negative") and 0.5 <= float(r[2]) <= 1.0 and float(r[3]) > 0
    assert float(rows[1][4]) < float(rows[0][4])  # the int8 file is smaller


def test_transformer_demo_prints_fp32_and_int8_rows(tmp_path):
    # backend.flow=fx: torch.ao's quantize_dynamic (int8 Linear weights in TorchScript); PT2E's dynamic is an
    # AOTInductor package whose ~0.3 MB of compiled code outweighs this tiny model's weights
    out = _demo(["model=transformer_tiny", "backend=pytorch", "backend.flow=fx", "data.seq_len=16",
                 "flat, tedious and overlong"], tmp_path)
    assert "'flat, tedious and overlong'" in out and "seq_len 16" in out
    rows = _rows(out)
    assert [r[0] for r in rows] == ["fp32", "dynamic"]
    assert all(r[1] in ("positive", "negative") for r in rows)
    assert float(rows[1][4]) < float(rows[0][4])


def test_image_demo_picks_a_test_image(tmp_path):
    out = _demo(["model=mlp", "data=digits", "index=5"], tmp_path)
    assert "test image #5 of digits" in out
    assert [r[0] for r in _rows(out)] == ["fp32", "static"]


@pytest.mark.parametrize("args, needle", [
    (["model=mlp", "data=digits", "quant=auto"], "quant=auto is not shown by the demo: use one of fp32, fp16"),
    (["model=mlp", "data=digits", "index=abc"], "index='abc' is not allowed"),
    (["model=lstm", "   "], "give a text to classify"),
    (["model=cnnn"], "Could not find 'model/cnnn'"),
    (["model=lstm", "data=digits", "a witty movie"], "model=lstm reads text data, data=digits is not text data"),
])
def test_bad_demo_input_is_one_line_naming_it(tmp_path, args, needle):
    env = dict(os.environ, BSB_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "bsb_hydra.demo", "train=smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # refused before any training


def test_demo_arguments_are_overrides_only_when_their_key_is_a_config_key():
    from bsb_hydra.demo import split_args

    overrides, index, text = split_args(["model=lstm", "quant.method=minmax", "+experiment=x", "index=3",
                                         "x=y", "is", "a", "2+2=4", "movie"])
    assert overrides == ["model=lstm", "quant.method=minmax", "+experiment=x"]
    assert index == "3" and text == "x=y is a 2+2=4 movie"


def _user_onnx(path, out_features=10, seg=False):
    """A small untrained network taking 1x28x28 images, exported to ONNX: logits of 10 classes, or
    (seg) a per-pixel map of 3 classes, which is not a classifier's output."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if seg:
        net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    else:
        net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(8 * 14 * 14, out_features)).eval()
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["pixels"], output_names=["out"],
                      dynamic_axes={"pixels": {0: "n"}}, dynamo=False, opset_version=17)
    return path


def test_demo_prepares_the_cell_as_the_grid_does_a_user_onnx_file_on_resized_normalised_images(tmp_path):
    """model=onnx (which the demo could not build before it shared the grid's preparation) on 8x8
    digits, fitted to the file's 28x28 input with data.mean/std, as the grid's cells see them."""
    path = _user_onnx(tmp_path / "user.onnx")
    out = _demo(["model=onnx", f"model.path={path}", "data=digits", "data.mean=[0.5]", "data.std=[0.25]",
                 "backend=onnxruntime", "index=3"], tmp_path)
    assert "test image #3 of digits (true label: " in out
    rows = _rows(out)
    assert [r[0] for r in rows] == ["fp32", "static"]
    assert all(r[1] in [str(i) for i in range(10)] and float(r[3]) > 0 for r in rows)
    assert "task classification" in out  # probed as the grid probes it


def test_demo_refuses_a_model_whose_outputs_are_not_a_classifiers(tmp_path):
    path = _user_onnx(tmp_path / "seg.onnx", seg=True)
    env = dict(os.environ, BSB_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "bsb_hydra.demo", "model=onnx", f"model.path={path}", "data=random",
                           "task=segmentation", "backend=onnxruntime", "quant=fp32"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "outputs are task=segmentation" in proc.stderr and "measure this model in the grid" in proc.stderr
