"""quant=int4_weight_only: the config, the 4-bit rounding and kernel of the pytorch path, ORT's
Gemm rewrite, and a smoke sweep on the three backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bsb_hydra.config import ConfigError, Int4WeightOnlyQuantConfig
from tests.conftest import SMOKE, run_bsb, runs_of


def test_int4_config_names_bad_values_and_the_valid_ones():
    q = Int4WeightOnlyQuantConfig()
    assert (q.bits, q.block_size, q.symmetric, q.accuracy_level) == (4, 32, False, 0)
    with pytest.raises(ConfigError, match=r"quant.bits=3 is not allowed.*valid values are 2, 4, 8"):
        Int4WeightOnlyQuantConfig(bits=3)
    with pytest.raises(ConfigError, match=r"quant.block_size=48 is not allowed: use a power of two >= 16"):
        Int4WeightOnlyQuantConfig(block_size=48)
    with pytest.raises(ConfigError, match=r"quant.accuracy_level=5 is not allowed"):
        Int4WeightOnlyQuantConfig(accuracy_level=5)


def test_int4_composes_through_hydra(compose_cfg):
    from bsb_hydra.config import validate

    raw = compose_cfg(["quant=int4_weight_only", "quant.block_size=64", "quant.symmetric=true"])
    raw.paths.root = "/tmp/project"
    cfg = validate(raw)
    assert cfg.quant.scheme.value == "int4_weight_only" and cfg.quant.block_size == 64 and cfg.quant.symmetric


def _dequant(codes, sz, group):
    """tinygemm's layout: w = (code - 8) * scale + zero, scales_and_zeros [K/group, N, 2]."""
    scale = sz[..., 0].T.repeat_interleave(group, dim=1)  # [N, K]
    zero = sz[..., 1].T.repeat_interleave(group, dim=1)
    return (codes.float() - 8) * scale + zero


def test_symmetric_4bit_rounding_exact_values():
    from bsb_hydra.backends.pytorch.int4_torch import quantize_groups

    # one group of 16: max |w| = 7 -> scale 1; integers are exact, halves round to even
    w = torch.tensor([[7.0, -7.0, 3.0, -3.0, 0.0, 1.0, 2.5, -2.5, 6.6, -6.6, 0.4, -0.4, 5.0, 4.0, -1.0, -7.0]])
    codes, sz = quantize_groups(w, 16, symmetric=True, dtype=torch.float32)
    assert sz[0, 0, 0].item() == pytest.approx(1.0) and sz[0, 0, 1].item() == 0.0
    assert codes.tolist()[0] == [15, 1, 11, 5, 8, 9, 10, 6, 15, 1, 8, 8, 13, 12, 7, 1]
    assert torch.allclose(_dequant(codes, sz, 16), torch.round(w).clamp(-8, 7))


def test_asymmetric_groups_have_their_own_scale_and_zero_and_round_to_within_half_a_step():
    from bsb_hydra.backends.pytorch.int4_torch import quantize_groups

    torch.manual_seed(0)
    w = torch.cat([torch.rand(4, 32) * 0.01, torch.rand(4, 32) * 10 + 5], dim=1)  # two groups, far apart
    codes, sz = quantize_groups(w, 32, symmetric=False, dtype=torch.float32)
    assert sz.shape == (2, 4, 2) and codes.min() >= 0 and codes.max() <= 15
    scale = sz[..., 0].T.repeat_interleave(32, dim=1)
    assert (sz[1, :, 0] > 100 * sz[0, :, 0]).all()  # per-group scales
    assert ((_dequant(codes, sz, 32) - w).abs() <= scale / 2 + 1e-5).all()


@pytest.mark.parametrize("k,n,group", [(64, 16, 32), (50, 10, 32), (300, 24, 128)])
def test_int4_linear_runs_torch_cpu_kernel_equal_to_its_dequantized_weights(k, n, group):
    """Padded K (50 -> 64) and N (10, 24 -> 16, 32) are sliced off; the kernel's result is the float matmul
    with the dequantized weights."""
    from bsb_hydra.backends.pytorch.int4_torch import Int4Linear, quantize_groups

    torch.manual_seed(1)
    lin = torch.nn.Linear(k, n)
    q = Int4Linear(lin, group, symmetric=False, compute=torch.float32)
    x = torch.randn(3, 5, k)
    kp = -(-k // max(group, 32)) * max(group, 32)
    w = torch.nn.functional.pad(lin.weight.detach(), (0, kp - k, 0, (-n) % 16))
    codes, sz = quantize_groups(w, group, False, torch.float32)
    ref = x @ _dequant(codes, sz, group)[:n, :k].T + lin.bias.detach()
    y = q(x)
    assert y.shape == (3, 5, n)
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4)
    scripted = torch.jit.freeze(torch.jit.trace(q.eval(), x))  # the artifact's form
    assert torch.allclose(scripted(x), y)


def test_gemm_rewritten_as_matmul_plus_add_computes_the_same(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from bsb_hydra.backends.onnxruntime.build import gemm_to_matmul

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert gemm_to_matmul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides,reason", [
    (["backend=pytorch", "quant.bits=2"], "quant.bits=2 on pytorch: torch's CPU low-bit matmul"),
    (["backend=pytorch", "quant.accuracy_level=4"], "valid here: 0, 1, 3"),
    (["backend=tflite"], "quant=int4_weight_only on tflite: the TFLite converter's options"),
])
def test_unsupported_int4_cells_say_why(compose_cfg, overrides, reason):
    from bsb_hydra.backends import get_backend
    from bsb_hydra.config import validate

    raw = compose_cfg(["quant=int4_weight_only", *overrides])
    raw.paths.root = "/tmp/project"
    obj = validate(raw)
    assert reason in (get_backend(obj.backend.name).unsupported_reason(obj) or "")


def test_int4_smoke_sweep_on_the_three_backends(tmp_path):
    run_bsb(["-m", "model=mlp", "data=digits", "quant=int4_weight_only", "backend=onnxruntime,pytorch,tflite",
             *SMOKE], tmp_path)
    _, runs = runs_of(tmp_path)
    by = {(r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}
    assert len(by) == 3
    tfl = by[("int4_weight_only", "tflite")].data.tags
    assert tfl["status"] == "unsupported" and "litert-quantizer" in tfl["reason"]
    for backend, kernel in (("onnxruntime", "MatMulNBits"), ("pytorch", "Int4Linear")):
        r = by[("int4_weight_only", backend)]
        tags, m = r.data.tags, r.data.metrics
        assert tags["status"] == "ok", tags.get("reason")
        assert kernel in tags.get("build.ops", "") + tags.get("build.layers", "")
        assert float(tags["build.low_bit_weight_fraction"]) == pytest.approx(1.0)  # an mlp: every weight
        if backend == "onnxruntime":
            assert tags["build.float_weight_ops"] == "none"
        # the digits mlp (64-256-128-10): 4-bit codes plus a scale (and zero) per 32 weights, and the
        # fp32 biases; int8's floor would be 0.25
        assert m["size_ratio"] < 0.25, m["size_ratio"]
        assert m["top1_agreement"] > 0.8 and "latency_p50_ms_b1" in m
