"""PyTorch under backend.flow=pt2e (the default): torchao PT2E static and torchao int8 dynamic, each an
AOTInductor package with int8 kernels inside; backend.flow=fx for what PT2E cannot express; no
torch.ao deprecation warning in a default pytorch sweep."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bsb_hydra.backends.base import BuildContext
from bsb_hydra.backends.pytorch.build import PytorchBackend
from bsb_hydra.config import ConfigError, validate
from tests.conftest import TORCH_AO_SPY_LOG
from tests.test_config import _resolvable


class Block(nn.Module):
    """torchvision's BasicBlock in small: one ReLU module called twice (after conv1 and after the
    residual add), the shape that made prepare_pt2e raise "Input partition has more than one output
    node" after a non-strict export."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class Net(nn.Module):
    """A one-channel stem (computed over [x, 0] under PT2E), a residual block, a ReLU6 stage, a flatten over a
    7x7 map (the layout the package must get right) and two Linear layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block = Block(8)
        self.clip = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.clip(self.block(self.stem(x))))


def _net():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # trained-like batch-norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.2, 0.2)
    return model


def _ctx(compose_cfg, tmp_path, model, x, *overrides):
    cfg = validate(_resolvable(compose_cfg(["model=cnn", "backend=pytorch", *overrides])))
    return BuildContext(model, x[:1], x, cfg, "x86", "x86_64", "avx512_vnni", tmp_path)


def _kernels(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return "".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith("wrapper.cpp"))


@pytest.fixture(scope="module")
def images():
    """(N, 1, 28, 28) stored NHWC, as an image split is: torch.from_numpy gives strides (784, 1, 28, 1)."""
    rng = np.random.default_rng(0)
    return np.ascontiguousarray(rng.uniform(0, 1, (64, 28, 28, 1)).astype(np.float32)).transpose(0, 3, 1, 2)


def test_static_pt2e_is_an_int8_aoti_package_close_to_fp32(compose_cfg, tmp_path, images):
    """Strict export lets the X86 recipe take the shared ReLU and fuse the residual add into the conv;
    the one-channel stem runs over a zero-padded second channel; the package runs oneDNN int8
    conv/linear kernels and agrees with fp32 on an NHWC-stored split."""
    from bsb_hydra.backends.pytorch.runner import PytorchRunner

    model = _net()
    art = PytorchBackend().build_static(_ctx(compose_cfg, tmp_path, model, images, "quant=static",
                                             "benchmark.batch_sizes=[4]"), tmp_path / "static.pt")
    assert art.path.suffix == ".pt2" and art.info["flow"] == "pt2e" and art.info["export"] == "aoti"
    # backend.aoti_batch=static (the default): one package per batch size, the batch-1 one the artifact
    assert art.info["aoti_batch"] == "static (one package per batch size: 1, 4)"
    assert json.loads(Path(str(art.path) + ".batches.json").read_text()) == {"1": "static.pt2", "4": "static.b4.pt2"}
    assert (tmp_path / "static.b4.pt2").is_file() and art.size_bytes == art.path.stat().st_size
    assert art.info["zero_padded_input_convs"] == "stem.0"
    assert art.info["int8_weights"] == "6"  # stem.0, block.conv1, block.conv2, clip.0, two Linear
    code = _kernels(art.path)
    assert "qconv2d_pointwise_binary" in code and "qlinear_pointwise" in code  # add+ReLU fused into the conv
    assert art.metrics["aoti_compile_seconds"] > 0
    runner = PytorchRunner(str(art.path), 1, "float32", {})
    with torch.inference_mode():
        want = model(torch.from_numpy(np.ascontiguousarray(images))).numpy()
    got = runner.to_numpy(runner.run(runner.prepare(images[:63])))  # chunks of 4, the last one padded
    assert got.shape == (63, 10) and runner.batch == 4
    assert np.abs(got - want[:63]).max() < 0.05 * np.abs(want).max()
    assert (got.argmax(1) == want[:63].argmax(1)).mean() >= 0.9
    for b in (1, 4):  # a timed batch runs its own package, same outputs
        assert np.allclose(runner.to_numpy(runner.run(runner.prepare(images[:b]))), got[:b], atol=1e-4)
        assert runner.batch == b


def test_per_tensor_weights_keep_int8_kernels(compose_cfg, tmp_path, images):
    """quant.granularity=per_tensor: one scale per weight tensor, written in the per-channel form
    Inductor lowers (a per_tensor_symmetric spec compiles to fp32 convolutions)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from bsb_hydra.backends.pytorch import pt2e

    cfg = validate(_resolvable(compose_cfg(["model=cnn", "quant=static", "quant.granularity=per_tensor"])))
    model = _net()
    gm = pt2e.export_for_quantization(model, torch.from_numpy(images[:1].copy()), "static", "net")
    prepared = prepare_pt2e(gm, pt2e.make_quantizer("x86_64", pt2e.quantization_config(cfg.quant, "x86_64", False)))
    with torch.no_grad():
        prepared(torch.from_numpy(images.copy()))
    converted = convert_pt2e(prepared)
    scales = [n for n in converted.graph.nodes if n.op == "call_function"
              and str(n.target).startswith("quantized_decomposed.dequantize_per_channel")]
    assert scales
    for node in scales:
        s = getattr(converted, node.args[1].target)
        assert torch.all(s == s[0]), node
    art = PytorchBackend().build_static(_ctx(compose_cfg, tmp_path, model, images, "quant=static",
                                             "quant.granularity=per_tensor", "benchmark.batch_sizes=[1]"),
                                        tmp_path / "static.pt")
    calls = pt2e.compiled_kernels(art.path)  # every conv and both Linear: int8 kernels
    assert sum(v for k, v in calls.items() if k.startswith("qconv")) == 4, calls
    assert calls.get("qlinear_pointwise_tensor") == 2, calls


def test_dynamic_pt2e_is_torchao_int8_linear_in_a_package(compose_cfg, tmp_path, images):
    model = _net()
    ctx = _ctx(compose_cfg, tmp_path, model, images, "quant=dynamic", "backend.aoti_batch=dynamic")
    art = PytorchBackend().build_dynamic(ctx, tmp_path / "dynamic.pt")
    assert art.path.suffix == ".pt2" and art.info["int8_linears"] == "2" and "_int_mm" in _kernels(art.path)
    assert art.info["memory_format"] == "inductor"
    # backend.aoti_batch=dynamic: one package for every batch
    assert art.info["aoti_batch"].startswith("dynamic") and not Path(str(art.path) + ".batches.json").exists()
    from bsb_hydra.backends.pytorch.runner import PytorchRunner

    runner = PytorchRunner(str(art.path), 1, "float32", {})
    assert runner.files is None and runner.to_numpy(runner.run(runner.prepare(images[:5]))).shape == (5, 10)


@pytest.mark.parametrize("overrides,needle", [
    (["model=lstm", "quant=static"], "model=lstm, quant=static on pytorch needs backend.flow=fx"),
    (["model=lstm", "quant=qat"], "model=lstm, quant=qat on pytorch needs backend.flow=fx"),
    (["model=lstm", "quant=dynamic"], "model=lstm, quant=dynamic on pytorch needs backend.flow=fx"),
])
def test_what_pt2e_cannot_build_names_flow_fx(compose_cfg, overrides, needle):
    backend = PytorchBackend()
    cfg = validate(_resolvable(compose_cfg(["backend=pytorch", *overrides])))
    assert needle in (backend.unsupported_reason(cfg) or "")
    cfg = validate(_resolvable(compose_cfg(["backend=pytorch", "backend.flow=fx", *overrides])))
    assert backend.unsupported_reason(cfg) is None


def test_transformer_static_and_dynamic_run_on_pt2e(compose_cfg, tmp_path):
    """Strict export captures transformers' BertModel: static int8 Linear layers (qlinear kernels,
    the residual adds fused) and torchao's dynamic Linear, in packages."""
    from bsb_hydra.backends.pytorch import pt2e
    from bsb_hydra.models.transformer_tiny import TransformerTinyConfig, build_transformer_tiny

    torch.manual_seed(0)
    model = build_transformer_tiny(TransformerTinyConfig(vocab_size=500, max_positions=16), (16,), 2).eval()
    ids = np.random.default_rng(0).integers(1, 500, (32, 16))
    backend = PytorchBackend()
    for quant in ("static", "dynamic"):
        cfg = validate(_resolvable(compose_cfg(["model=transformer_tiny", "backend=pytorch", f"quant={quant}",
                                                "benchmark.batch_sizes=[1]"])))
        assert backend.unsupported_reason(cfg) is None
        ctx = BuildContext(model, ids[:1], ids, cfg, "x86", "x86_64", "avx512_vnni", tmp_path)
        art = getattr(backend, f"build_{quant}")(ctx, tmp_path / f"{quant}.pt")
        calls = pt2e.compiled_kernels(art.path)
        if quant == "static":
            assert art.info["int8_weights"] == "13" and calls.get("qlinear_pointwise_tensor"), calls
        else:
            assert art.info["int8_linears"] == "13" and calls.get("int_mm_out"), calls


def test_flow_is_validated(compose_cfg):
    with pytest.raises(ConfigError) as e:
        validate(_resolvable(compose_cfg(["backend=pytorch", "backend.flow=eager"])))
    assert "backend.flow='eager' is not allowed: use one of pt2e, fx" in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate(_resolvable(compose_cfg(["backend=pytorch", "backend.aoti_batch=fixed"])))
    assert "backend.aoti_batch='fixed' is not allowed: use one of static, dynamic" in str(e.value)


def test_flow_changes_only_the_hashes_of_the_schemes_it_builds(compose_cfg):
    """flow=fx is what every pytorch run before the key measured: such a cell keeps its hash; pt2e
    static/dynamic/qat/auto cells get new ones; fp32 cells are the same under either flow."""
    from bsb_hydra.cell import config_hash
    from tests.conftest import with_and_without

    for quant in ("fp32", "fp16"):
        cfg, before = with_and_without(compose_cfg, ["backend=pytorch", f"quant={quant}"], "flow")
        assert config_hash(cfg) == config_hash(before), quant
    for quant in ("static", "dynamic", "qat", "auto"):
        cfg, before = with_and_without(compose_cfg, ["backend=pytorch", f"quant={quant}"], "flow")
        assert config_hash(cfg) != config_hash(before), quant
        fx, _ = with_and_without(compose_cfg, ["backend=pytorch", f"quant={quant}", "backend.flow=fx"], "flow")
        assert config_hash(fx) == config_hash(before), quant


def test_aoti_batch_changes_only_the_hashes_of_aoti_packages(compose_cfg):
    """backend.aoti_batch (2026-12-06) is inert for TorchScript cells (fp32/fp16 by default, FX int8):
    they keep their hash and resume; PT2E int8 and backend.export=aoti cells are measured anew."""
    from bsb_hydra.cell import config_hash
    from tests.conftest import with_and_without

    kept = [["quant=fp32"], ["quant=fp16"], ["quant=static", "backend.flow=fx"], ["quant=int4_weight_only"]]
    for extra in kept:
        cfg, before = with_and_without(compose_cfg, ["backend=pytorch", *extra], "aoti_batch")
        assert config_hash(cfg) == config_hash(before), extra
    for extra in (["quant=static"], ["quant=dynamic"], ["quant=fp32", "backend.export=aoti"]):
        cfg, before = with_and_without(compose_cfg, ["backend=pytorch", *extra], "aoti_batch")
        assert config_hash(cfg) != config_hash(before), extra


def test_a_default_pytorch_sweep_calls_no_deprecated_torch_ao(sweep):
    """The shared sweep (mlp, cnn x fp32, dynamic, static on pytorch and onnxruntime, default
    settings, the machine-peak measurement included) under the torch.ao spy: every cell ok, the
    pytorch int8 ones built by PT2E / torchao, and no deprecated torch.ao function called in any of
    its processes."""
    tmp, proc, _, runs = sweep
    log = tmp / TORCH_AO_SPY_LOG
    assert (tmp / "spy" / "sitecustomize.py").is_file()
    assert not log.exists(), log.read_text()[:5000]
    assert "torch.ao.quantization is deprecated" not in proc.stderr
    by_quant = {r.data.params["quant.scheme"]: r for r in runs
                if r.data.tags.get("backend") == "pytorch" and r.data.tags.get("model") == "cnn"}
    assert set(by_quant) == {"fp32", "dynamic", "static"}
    for quant, r in by_quant.items():
        assert r.data.tags["status"] == "ok", (quant, r.data.tags.get("reason"))
    for quant in ("dynamic", "static"):
        tags, metrics = by_quant[quant].data.tags, by_quant[quant].data.metrics
        assert tags["build.flow"] == "pt2e" and tags["build.export"] == "aoti"
        assert tags["build.aoti_batch"] == "static (one package per batch size: 1, 8)"
        assert metrics["aoti_compile_seconds"] > 0
        assert abs(metrics["accuracy"] - by_quant["fp32"].data.metrics["accuracy"]) <= 0.02


def test_qat_fold_skips_only_conv_kinds_the_graph_does_not_hold(monkeypatch):
    """The QAT convert runs torchao's conv-bn fold pass only for the conv kinds in the graph; for an
    absent kind its clean-up alone gives the graph the full pass gives (which matches nothing there)."""
    import copy

    import torch.nn.functional as F
    from torchao.quantization.pt2e import qat_utils
    from torchao.quantization.pt2e.quantize_pt2e import _convert_to_reference_decomposed_fx, prepare_qat_pt2e

    from bsb_hydra.backends.pytorch.pt2e import _fold_only_present_convs, make_quantizer, quantization_config
    from bsb_hydra.config.quant import QatQuantConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(4, 3, 8, 8)
    q = QatQuantConfig()
    quantizer = make_quantizer("x86_64", quantization_config(q, "x86_64", False, qat=True))
    prepared = prepare_qat_pt2e(torch.export.export(model.train(), (x,), strict=True).module(), quantizer)
    prepared(x)
    reference = _convert_to_reference_decomposed_fx(prepared)  # the fold's input in convert_pt2e
    conv1d_inputs = (torch.randn(1, 1, 3), torch.randn(1, 1, 1)) + tuple(torch.randn(1) for _ in range(4))

    original = qat_utils._fold_conv_bn_qat_helper
    full = original(copy.deepcopy(reference), F.conv1d, conv1d_inputs, False)
    with _fold_only_present_convs():
        assert qat_utils._fold_conv_bn_qat_helper is not original
        skipped = qat_utils._fold_conv_bn_qat_helper(copy.deepcopy(reference), F.conv1d, conv1d_inputs, False)
    assert qat_utils._fold_conv_bn_qat_helper is original
    assert skipped.code == full.code
    assert any(str(n.target) == "aten.conv2d.default" for n in skipped.graph.nodes)
    with torch.no_grad():
        assert torch.equal(skipped(x), full(x))

    calls = []  # which kinds reach torchao's pass
    monkeypatch.setattr(qat_utils, "_fold_conv_bn_qat_helper", lambda m, fn, *a: calls.append(fn.__name__) or m)
    with _fold_only_present_convs():
        for fn in (F.conv1d, F.conv2d, F.conv_transpose1d, F.conv_transpose2d):
            qat_utils._fold_conv_bn_qat_helper(copy.deepcopy(reference), fn, conv1d_inputs, False)
    assert calls == ["conv2d"]
