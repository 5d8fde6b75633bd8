"""quant=fake_quant (simulated N-bit): the rounding's exact values, the packed-size formula, the
simulation (activation ranges, QAT), the config, and a smoke sweep over bits with its report section."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bsb_hydra.config import ConfigError, FakeQuantConfig
from bsb_hydra.fake_quant import fake_quantize_weight, packed_size, qrange, quantizable, simulate
from tests.conftest import SMOKE, run_bsb, runs_of


@pytest.mark.parametrize("bits,expected", [(2, (-1, 1)), (3, (-3, 3)), (4, (-7, 7)), (8, (-127, 127))])
def test_symmetric_restricted_ranges(bits, expected):
    assert qrange(bits) == expected


def test_rounding_exact_values_at_2_4_8_bits_per_tensor():
    # scale = max|w| / qmax; each chosen so that the scale is 1 and the rounding is visible
    w2 = torch.tensor([[1.0, -0.6, 0.4, -1.0], [0.5, -0.5, 0.0, 0.1]])
    assert fake_quantize_weight(w2, 2, per_channel=False).tolist() == [[1, -1, 0, -1], [0, 0, 0, 0]]  # ternary; halves to even
    w4 = torch.tensor([[7.0, -3.4, 2.5, 0.2], [-7.0, 6.6, 3.5, -0.5]])
    assert fake_quantize_weight(w4, 4, per_channel=False).tolist() == [[7, -3, 2, 0], [-7, 7, 4, 0]]
    w8 = torch.tensor([[127.0, -0.4, 63.5, -126.6]])
    assert fake_quantize_weight(w8, 8, per_channel=False).tolist() == [[127, 0, 64, -127]]


def test_per_channel_scales_are_per_output_channel():
    w = torch.tensor([[7.0, 3.4, -1.2], [0.7, 0.34, -0.12], [0.0, 0.0, 0.0]])
    q = fake_quantize_weight(w, 4, per_channel=True)
    assert torch.allclose(q, torch.tensor([[7.0, 3.0, -1.0], [0.7, 0.3, -0.1], [0.0, 0.0, 0.0]]), atol=1e-6)
    # per tensor the small row shares the big row's scale (1.0) and collapses to 1, 0, 0
    assert fake_quantize_weight(w, 4, per_channel=False)[1].tolist() == [1.0, 0.0, 0.0]
    conv = torch.randn(6, 3, 3, 3)
    qc = fake_quantize_weight(conv, 3, per_channel=True)
    for o in range(6):  # at most 2^3 - 1 levels per output channel, on that channel's own grid
        scale = conv[o].abs().max() / 3
        assert torch.allclose(qc[o] / scale, torch.round(qc[o] / scale), atol=1e-4)
        assert len(torch.unique(qc[o])) <= 7


def test_rounding_passes_gradients_straight_through():
    w = torch.tensor([[1.0, -0.3, 0.2]], requires_grad=True)
    fake_quantize_weight(w, 2, per_channel=True).sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0]]


def test_packed_size_formula():
    m = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 3))
    layers = quantizable(m)
    fp32 = 4 * (40 + 4 + 12 + 3)
    # 4 bits per channel: ceil(40*4/8) + 4 scales * 4 B, ceil(12*4/8) + 3 * 4 B, biases 7 * 4 B
    assert packed_size(m, layers, 4, per_channel=True) == (20 + 16 + 6 + 12 + 28, fp32)
    assert packed_size(m, layers, 4, per_channel=False) == (20 + 4 + 6 + 4 + 28, fp32)
    # 3 bits: 120 bits -> 15 B, 36 bits -> 4.5 -> 5 B; two activation quantizers add 8 B each
    assert packed_size(m, layers, 3, per_channel=True, activation_quantizers=2) == (15 + 16 + 5 + 12 + 28 + 16, fp32)


def test_packed_size_keeps_lstm_and_norms_at_32_bits():
    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 8)
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, 2)

    m = Text()
    lstm = sum(p.numel() for p in m.lstm.parameters())
    packed, fp32 = packed_size(m, quantizable(m), 8, per_channel=True)
    assert list(quantizable(m)) == ["emb", "head"]
    assert packed == 800 + 4 * 100 + 32 + 4 * 2 + 4 * (lstm + 32 + 2)
    assert fp32 == 4 * (800 + lstm + 32 + 32 + 2)


def _tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def test_simulate_rounds_weights_and_calibrates_activation_ranges():
    import numpy as np

    model = _tiny_mlp()
    calib = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32) * 3.0
    sim = simulate(model, 3, per_channel=True, activations=True, calibration=calib)
    assert sim.layers == ["0", "2"] and sim.activation_quantizers == 2
    assert (sim.packed_bytes, sim.fp32_bytes) == packed_size(model, quantizable(model), 3, True, 2)
    first = sim.model[0]
    assert isinstance(first, nn.Sequential) and set(dict(first.named_children())) == {"input_quant", "layer"}
    for o in range(16):  # the stored weight is on the 3-bit grid of its channel
        assert len(torch.unique(first.layer.weight[o])) <= 7
    fq = first.input_quant
    assert (fq.quant_min, fq.quant_max) == (0, 7)
    # the range is the calibration inputs' min..max (3-bit affine), and the observer is off
    lo, hi = float(calib.min()), float(calib.max())
    assert float(fq.scale) == pytest.approx((hi - lo) / 7, rel=1e-4)
    assert int(fq.observer_enabled[0]) == 0 and int(fq.fake_quant_enabled[0]) == 1
    assert torch.equal(model[0].weight, _tiny_mlp()[0].weight)  # the fp32 model is untouched
    x = torch.from_numpy(calib[:4])
    assert not torch.allclose(sim.model(x), model(x))


def test_simulate_with_qat_fine_tunes_at_n_bits():
    from types import SimpleNamespace

    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64)
    ds = SimpleNamespace(x_train=x, y_train=y)
    q = FakeQuantConfig(bits=2, qat=True, epochs=2, lr=1e-2, batch_size=32)
    model = _tiny_mlp()
    ptq = simulate(model, 2, True, False)
    qat = simulate(model, 2, True, False, qat_cfg=q, data=ds, seed=0)
    assert len(qat.losses) == 2 and qat.qat_seconds > 0 and ptq.losses == []
    assert not torch.equal(qat.model[0].weight, ptq.model[0].weight)  # fine-tuning moved the weights
    for o in range(16):  # and they are still ternary per channel
        assert len(torch.unique(qat.model[0].weight[o])) <= 3


def test_fake_quant_config_names_bad_values():
    with pytest.raises(ConfigError, match=r"quant.bits=9 is not allowed for fake_quant: valid values are 2..8"):
        FakeQuantConfig(bits=9)
    with pytest.raises(ConfigError, match=r"quant.bits=1 is not allowed"):
        FakeQuantConfig(bits=1)
    with pytest.raises(ConfigError, match=r"quant.epochs=0"):
        FakeQuantConfig(epochs=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "tflite"])
def test_fake_quant_elsewhere_than_pytorch_says_why(compose_cfg, backend):
    from bsb_hydra.backends import get_backend
    from bsb_hydra.config import validate

    raw = compose_cfg(["quant=fake_quant", "quant.bits=3", f"backend={backend}"])
    raw.paths.root = "/tmp/project"
    obj = validate(raw)
    assert obj.quant.bits == 3
    reason = get_backend(backend).unsupported_reason(obj) or ""
    assert reason.startswith(f"quant=fake_quant on {backend}:") and "backend=pytorch" in reason


def test_fake_quant_smoke_sweep_over_bits_and_its_report_section(tmp_path):
    """mlp on digits at 2 and 8 bits, weights and activations, without and with QAT: simulated cells with
    theoretical sizes, no latency, no memory; the report lists them apart and keeps them off every frontier."""
    import csv

    from omegaconf import OmegaConf

    from bsb_hydra.report.build import build_report

    # fp32 in the same sweep: the fake_quant keys do not apply to it (the sweeper leaves them out of its
    # jobs and runs it once, not four times)
    proc = run_bsb(["-m", "model=mlp", "data=digits", "quant=fp32,fake_quant", "quant.bits=2,8", "quant.qat=false,true",
                    "quant.activations=true", "backend=pytorch", *SMOKE], tmp_path)
    assert "[sweep] quant.activations does not apply to quant=fp32: left out of those jobs" in proc.stdout
    assert "3 job(s) that then repeated another were dropped: 5 jobs run" in proc.stdout
    _, runs = runs_of(tmp_path)
    fp32 = [r for r in runs if r.data.tags["quant"] == "fp32"]
    assert len(fp32) == 1 and "latency_p50_ms_b1" in fp32[0].data.metrics and fp32[0].data.tags["size_kind"] == "artifact"
    runs = [r for r in runs if r.data.tags["quant"] == "fake_quant"]
    sims = {(r.data.params["quant.bits"], r.data.params["quant.qat"]): r for r in runs}
    assert set(sims) == {("2", "False"), ("8", "False"), ("2", "True"), ("8", "True")}
    # the digits mlp (64-256-128-10); fp32 = 4 B per parameter
    weights = 64 * 256 + 256 * 128 + 128 * 10
    params = weights + 256 + 128 + 10
    for (bits, qat), r in sims.items():
        tags, m = r.data.tags, r.data.metrics
        assert tags["status"] == "ok", tags.get("reason")
        assert tags["size_kind"] == "theoretical" and tags["simulated"] == "true" and m["simulated"] == 1.0
        assert tags["cell"] == f"mlp-digits-fake_quant_w{bits}a{bits}{'_qat' if qat == 'True' else ''}-pytorch"
        assert not any(k.startswith(("latency_", "speedup_", "throughput_")) or k == "peak_rss_mb" for k in m), sorted(m)
        b = int(bits)
        # packed codes + a fp32 scale per output channel + fp32 biases + 3 activation quantizers (8 B each)
        expected = sum(math.ceil(n * b / 8) for n in (64 * 256, 256 * 128, 128 * 10)) + 4 * (256 + 128 + 10) \
            + 4 * (params - weights) + 3 * 8
        assert m["size_bytes"] == expected and m["fp32_size_bytes"] == 4 * params
        assert m["test_samples"] == 360 and ("qat_loss" in m) == (qat == "True")
    assert sims[("8", "False")].data.metrics["top1_agreement"] >= 0.95
    assert sims[("2", "False")].data.metrics["size_ratio"] < 0.1 < sims[("8", "False")].data.metrics["size_ratio"]

    out = tmp_path / "report"
    rep = build_report(OmegaConf.create({"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "bsb-hydra",
                                         "out": str(out), "arch": None, "budget_pp": 1.0, "tag_runs": True,
                                         "log_run": False}))
    assert len(rep.runs.simulated) == 4 and [c.quant for g in rep.groups for c in g.cells] == ["fp32"]
    md = (out / "report.md").read_text()
    assert "## Simulated low-bit accuracy (not deployable)" in md
    assert "weights+activations, per-channel, PTQ" in md and "weights+activations, per-channel, QAT" in md
    arch = rep.runs.simulated[0].tag("arch")
    assert (out / f"simulated_mlp_digits_{arch}.png").is_file() and f"(simulated_mlp_digits_{arch}.png)" in md
    assert [r["quant"] for r in csv.DictReader((out / "rows.csv").open())] == ["fp32"]
    sim_rows = list(csv.DictReader((out / "simulated.csv").open()))
    assert sorted((int(r["bits"]), r["qat"]) for r in sim_rows) == [(2, "false"), (2, "true"), (8, "false"), (8, "true")]
    assert {rep.tagged[r.info.run_id] for r in runs} == {"simulated"} and rep.tagged[fp32[0].info.run_id] == "true"
