"""PyTorch static int8 under backend.flow=fx (torch.ao FX): a ReLU6 clip's bounds become its input's
quantization range (backend.fold_relu6), as ORT and TFLite quantize it. PT2E (the default flow)
observes a conv's output after its fused ReLU6 and needs no fold: tests/test_pt2e.py."""
import numpy as np
import pytest
import torch
from torch import nn

from bsb_hydra.backends.base import BuildContext
from bsb_hydra.backends.pytorch.build import PytorchBackend
from bsb_hydra.config import validate
from tests.test_config import _resolvable


def _static(compose_cfg, tmp_path, model, example, calibration, fold):
    cfg = validate(_resolvable(compose_cfg(["model=mobilenet", "quant=static", "backend=pytorch", "backend.flow=fx",
                                            f"backend.fold_relu6={fold}"])))
    ctx = BuildContext(model, example, calibration, cfg, "x86", "x86_64", "avx512_vnni", tmp_path)
    art = PytorchBackend().build_static(ctx, tmp_path / f"static_{fold}.pt")
    return art, torch.jit.load(str(art.path))


class ConvClip(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.clip = nn.ReLU6()

    def forward(self, x):
        return self.clip(self.conv(x))


@pytest.mark.parametrize("fold", [True, False])
def test_a_conv_feeding_relu6_is_quantized_over_the_clip_range(compose_cfg, tmp_path, fold):
    """Conv outputs spread over [-25.6, 25.6]: folded, the int8 output steps are 6/255 and the result
    is ReLU6 of the conv to within half a step (0.012) plus the weights' rounding (a symmetric int8
    weight of one value per channel is off by 1/255 of it: up to 0.024 at 6); unfolded, the steps
    (0.2) are sized for the unclipped range. The input (integers -128..127) quantizes exactly."""
    torch.backends.quantized.engine = "x86"
    model = ConvClip().eval()
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([0.1, 0.2, -0.1, 0.05]).view(4, 1, 1, 1))
        model.conv.bias.zero_()
    x = np.resize(np.arange(-128, 128, dtype=np.float32), 4 * 32 * 32).reshape(4, 1, 32, 32)
    art, q = _static(compose_cfg, tmp_path, model, x[:1], x, fold)
    assert art.info["relu6_folded"] == ("1 (1 taken out as identities)" if fold else "off")
    assert ("hardtanh" in str(q.graph)) is not fold  # the folded clip is the identity: gone from the graph
    with torch.inference_mode():
        want, got = model(torch.from_numpy(x)).numpy(), q(torch.from_numpy(x)).numpy()
    err = np.abs(got - want).max()
    if fold:
        assert err < 0.04, err
    else:
        assert err > 0.05, err


def test_fold_brings_mobilenet_closer_to_fp32(compose_cfg, tmp_path):
    """The built-in mobilenet (every conv+bn feeds a ReLU6): all of them folded, and the int8 logits
    closer to fp32 than with torch.ao's own ranges."""
    from bsb_hydra.models import build_model

    torch.manual_seed(0)
    cfg = validate(_resolvable(compose_cfg(["model=mobilenet"])))
    model = build_model(cfg.model, (1, 28, 28), 10).eval()
    with torch.no_grad():  # trained-like batch-norm statistics, so activations spread past 6
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.05, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
    rng = np.random.default_rng(0)
    calib, test = (rng.normal(0, 1, (n, 1, 28, 28)).astype(np.float32) for n in (64, 64))
    with torch.inference_mode():
        want = model(torch.from_numpy(test)).numpy()
    errors = {}
    for fold in (True, False):
        art, q = _static(compose_cfg, tmp_path, model, calib[:1], calib, fold)
        with torch.inference_mode():
            errors[fold] = float(np.mean((q(torch.from_numpy(test)).numpy() - want) ** 2))
        if fold:
            n = sum(isinstance(m, nn.ReLU6) for m in model.modules())
            assert art.info["relu6_folded"] == f"{n} ({n} taken out as identities)"
    assert errors[True] < errors[False], errors


def test_fold_relu6_key_changes_only_pytorch_fx_static_hashes(compose_cfg):
    """backend.fold_relu6 changes only PyTorch's FX static and auto builds: the other PyTorch cells
    (the PT2E ones too) keep their config_hash and params; static cells measured before it read as
    fold_relu6=false."""
    from bsb_hydra.cell import config_hash
    from bsb_hydra.tracking import resolved_params
    from tests.conftest import with_and_without

    pair = lambda *o: with_and_without(compose_cfg, ["backend=pytorch", "backend.flow=fx", *o],  # noqa: E731
                                       "fold_relu6")
    for quant in ("static", "auto"):  # PT2E: fold_relu6 is inert
        cfg, before = with_and_without(compose_cfg, ["backend=pytorch", "model=mobilenet", f"quant={quant}"],
                                       "fold_relu6")
        assert config_hash(cfg) == config_hash(before) and "backend.fold_relu6" not in resolved_params(cfg)

    for overrides in (["model=mobilenet", "quant=dynamic"], ["model=mobilenet", "quant=fp32"],
                      ["model=lstm", "quant=static"], ["model=transformer_tiny", "quant=static"]):
        cfg, before = pair(*overrides)
        assert config_hash(cfg) == config_hash(before), overrides
        assert "backend.fold_relu6" not in resolved_params(cfg), overrides
    for quant in ("static", "auto"):
        cfg, before = pair("model=mobilenet", f"quant={quant}")
        assert config_hash(cfg) != config_hash(before) and resolved_params(cfg)["backend.fold_relu6"] == "True"
        off, _ = pair("model=mobilenet", f"quant={quant}", "backend.fold_relu6=false")
        assert config_hash(off) == config_hash(before)
