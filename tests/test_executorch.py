"""backend=executorch (bsb_hydra/backends/executorch/): a real sweep of the cnn (fp32, fp16, dynamic, static),
the runner and its ETDump profile in-process on a logged .pte, the dynamic batch past torch's conv guard,
the machine-limit kernels (peak_artifacts), the runtime's stderr noise filter, and the reasons of what it
does not run."""
import os

import numpy as np
import pytest

from tests.conftest import SMOKE, TWO_BATCHES, model_files, model_folder, run_bsb, runs_of

pytest.importorskip("executorch", reason="executorch is not installed (make setup installs it --no-deps)")

CALIBRATION = "quant.samples=64"  # the cell's calibration samples: real training samples, fewer for speed


def _config(compose_cfg, overrides):
    from bsb_hydra.config import validate

    cfg = compose_cfg(list(overrides))
    cfg.paths.root = "/tmp/project"  # paths.root interpolates hydra:runtime.cwd, absent outside a Hydra run
    return validate(cfg)


@pytest.fixture(scope="module")
def et_sweep(tmp_path_factory):
    """model=cnn x fp32,fp16,dynamic,static on executorch, smoke-trained, on fashion_mnist."""
    tmp = tmp_path_factory.mktemp("et_sweep")
    run_bsb(["-m", "model=cnn", "quant=fp32,fp16,dynamic,static", "backend=executorch", CALIBRATION, *SMOKE,
             TWO_BATCHES], tmp)  # a dynamic batch (1..8)
    client, runs = runs_of(tmp)
    return tmp, client, {r.data.tags["quant"]: r for r in runs}


def test_every_cell_ok_one_pte_and_the_delegation_logged(et_sweep):
    _, client, cells = et_sweep
    assert set(cells) == {"fp32", "fp16", "dynamic", "static"}
    for quant, r in cells.items():
        t, m = r.data.tags, r.data.metrics
        assert t["status"] == "ok", (quant, t.get("reason"))
        files = model_files(client, r)  # the measured file, in the cell's LoggedModel
        assert files == {f"{quant}.pte": m["size_bytes"]}, files
        # the worker imported ExecuTorch's runtime (which brings torch), nothing of the build side or other runtimes
        assert t["worker_imports"] == "executorch,torch", t["worker_imports"]
        delegated, total = map(int, t["build.delegated_nodes"].split(" of "))
        assert 0 < delegated <= total
        assert float(t["build.delegated_share"]) == pytest.approx(delegated / total, abs=1e-3)
        # the dynamic batch leaves the flatten's reshape (a symbolic size) to the portable kernels
        assert t["build.not_delegated_ops"] == "aten_view_copy_default:1", t["build.not_delegated_ops"]
        assert t["build.batch"] == "dynamic 1..8" and t["build.executorch_version"] == "1.5.1"


def test_fp32_agrees_with_pytorch_and_int8_is_small(et_sweep):
    _, _, cells = et_sweep
    f = cells["fp32"].data.metrics
    assert f["fp32_vs_pytorch_agreement"] >= 0.998 and f["fp32_vs_pytorch_max_abs_logit_diff"] < 1e-3
    s = cells["static"].data
    assert s.metrics["size_ratio"] < 0.3 and s.metrics["top1_agreement"] > 0.9
    assert s.tags["build.activation_ranges"] == "minmax" and s.tags["build.calibration_samples"] == "64"
    assert s.tags["build.int8_weights"] == "conv2d:2,linear:2", s.tags["build.int8_weights"]
    d = cells["dynamic"].data
    assert d.metrics["size_ratio"] < 0.4 and d.metrics["top1_agreement"] > 0.9
    assert "linear:" in d.tags["build.int8_weights"]
    assert d.tags["build.weight_granularity"].startswith("per_channel (quant.granularity=per_tensor")
    h = cells["fp16"].data
    assert 0.45 < h.metrics["size_ratio"] < 0.6 and h.metrics["top1_agreement"] >= 0.99
    assert h.tags["input_dtype"] == "float16" and "F16" in h.tags["build.note"]
    assert h.tags["build.conv_weights_in_file"].startswith("fp32")  # the serializer's; the Linear halves the file


def test_runner_and_etdump_profile_on_the_logged_pte(et_sweep, tmp_path):
    """The logged static .pte in this process: batch 8 and 1, an evaluation batch above the bound (chunks),
    and ETDump naming XNNPACK's int8 kernels, the portable ops and the threadpool's size."""
    from bsb_hydra.backends.executorch.runner import ExecutorchRunner as RUNNER

    _, client, cells = et_sweep
    folder = model_folder(client, cells["static"], tmp_path)
    runner = RUNNER(str(folder / "static.pte"), 1, "float32", {})
    assert runner.max_batch == 8 and runner.threadpool_threads == 1
    x = np.random.default_rng(0).random((20, 1, 28, 28), dtype=np.float32)
    b8 = runner.outputs(runner.run(runner.prepare(x[:8])))
    b1 = runner.outputs(runner.run(runner.prepare(x[:1])))
    b20 = runner.outputs(runner.run(runner.prepare(x)))  # 8 + 8 + 4
    assert runner.output_names() == ["output_0"] and b8[0].shape == (8, 10) and b20[0].shape == (20, 10)
    np.testing.assert_allclose(b1[0][0], b8[0][0], atol=1e-5)
    np.testing.assert_allclose(b20[0][:8], b8[0], atol=1e-5)
    prof = runner.profile(runner.prepare(x[:1]), 3)
    assert prof["runtime"] == "executorch" and prof["runs"] == 3 and prof["threadpool_threads"] == 1
    ops = {r["op"]: r for r in prof["ops"]}
    assert any(op.startswith("Convolution (NHWC, QC8)") for op in ops), sorted(ops)
    assert any(op.startswith("Fully Connected (NC, QS8") for op in ops), sorted(ops)
    assert not prof["float_compute_ops"], prof["float_compute_ops"]
    assert "portable:executorch_prim::et_view" in ops and "executorch_prim::et_view" in prof["not_delegated"]
    assert abs(sum(r["share"] for r in prof["ops"]) - 1.0) < 1e-6


def test_a_batch_1_program_takes_a_one_channel_example_with_a_zero_stride(compose_cfg, tmp_path):
    """benchmark.batch_sizes=[1] exports batch 1 as it is (no dynamic batch). A one-channel example whose
    channel axis has stride 0 (numpy's x[:, None], as the data pipeline hands it over) was refused by the
    lowering ("0 in strides is not supported for ExecuTorch": every cell of model=cnn on fashion_mnist or
    digits at batch 1 only); the export now takes a contiguous copy."""
    import torch
    from torch import nn

    from bsb_hydra.backends import get_backend
    from bsb_hydra.backends.base import BuildContext
    from bsb_hydra.backends.executorch.runner import ExecutorchRunner as RUNNER

    cfg = _config(compose_cfg, ["model=cnn", "backend=executorch", "quant=fp32", "benchmark.batch_sizes=[1]"])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)[:, None]
    assert 0 in torch.from_numpy(x).stride()
    ctx = BuildContext(net, x, None, cfg, "x86", "x86_64", "", tmp_path)
    art = get_backend("executorch").build("fp32", ctx, tmp_path / "fp32.pte")
    assert art.info["batch"] == "static 1", art.info
    runner = RUNNER(str(art.path), 1, "float32", {})
    out = runner.outputs(runner.run(runner.prepare(np.ascontiguousarray(x))))[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(np.ascontiguousarray(x))).numpy(), atol=1e-5)


def test_the_dynamic_batch_runs_past_torchs_conv_guard(compose_cfg, tmp_path):
    """A 1x1 convolution makes torch's fake conv guard the batch below 16 while lowering; the .pte
    still takes the whole exported range (here 1..32), and the build says the range was put back."""
    import torch
    from torch import nn

    from bsb_hydra.backends import get_backend
    from bsb_hydra.backends.base import BuildContext
    from bsb_hydra.backends.executorch.runner import ExecutorchRunner as RUNNER

    cfg = _config(compose_cfg, ["model=cnn", "backend=executorch", "quant=fp32", "benchmark.batch_sizes=[1,32]"])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = np.random.default_rng(0).random((32, 3, 8, 8), dtype=np.float32)
    ctx = BuildContext(net, x[:1], None, cfg, "x86", "x86_64", "", tmp_path)
    art = get_backend("executorch").build("fp32", ctx, tmp_path / "fp32.pte")
    assert art.info["batch"] == "dynamic 1..32" and "-> VR[2, 32]" in art.info["batch_range_restored"], art.info
    runner = RUNNER(str(art.path), 1, "float32", {})
    assert runner.max_batch == 32
    out = runner.outputs(runner.run(runner.prepare(x)))[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_a_model_with_two_inputs_token_ids_among_them(compose_cfg, tmp_path):
    """Several named inputs (a Feeds), one of them int64 token ids: exported, statically quantized with
    Feeds calibration, and run by the runner from a Feeds, each input in the dtype the program declares."""
    import torch
    from torch import nn

    from bsb_hydra.backends import get_backend
    from bsb_hydra.backends.base import BuildContext
    from bsb_hydra.backends.executorch.runner import ExecutorchRunner as RUNNER
    from bsb_hydra.feeds import Feeds

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding, self.dense, self.head = nn.Embedding(50, 16), nn.Linear(5, 16), nn.Linear(16, 3)

        def forward(self, ids, x):
            return self.head(torch.relu(self.embedding(ids).mean(1) + self.dense(x)))

    cfg = _config(compose_cfg, ["model=cnn", "backend=executorch", "quant=static", "benchmark.batch_sizes=[1,4]"])
    torch.manual_seed(0)
    net = TwoInputs().eval()
    rng = np.random.default_rng(0)
    feeds = Feeds({"ids": rng.integers(0, 50, (16, 6)), "x": rng.standard_normal((16, 5)).astype(np.float32)})
    ctx = BuildContext(net, feeds[:1], feeds, cfg, "x86", "x86_64", "", tmp_path)
    art = get_backend("executorch").build("static", ctx, tmp_path / "static.pte")
    assert art.input_dtype == "int64" and art.info["int8_weights"] == "linear:2", art.info
    runner = RUNNER(str(art.path), 1, art.input_dtype, {})
    assert [np.dtype(d) for d in runner.dtypes] == [np.int64, np.float32]
    out = runner.outputs(runner.run(runner.prepare(feeds)))[0]  # 16 samples: chunks of 4
    with torch.no_grad():
        ref = net(*(torch.from_numpy(a) for a in feeds.values())).numpy()
    assert out.shape == (16, 3) and np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_a_model_torch_export_refuses_ends_unsupported_with_its_error(compose_cfg, tmp_path):
    import torch
    from torch import nn

    from bsb_hydra.backends import get_backend
    from bsb_hydra.backends.base import BuildContext, Unsupported

    class DataDependent(nn.Module):  # control flow on the values, as a detector's score threshold
        def forward(self, x):
            return x[x > 0.5].sum(0, keepdim=True) if bool(x.sum() > 0) else x

    cfg = _config(compose_cfg, ["model=cnn", "backend=executorch", "quant=fp32"])
    x = np.random.default_rng(0).random((1, 4), dtype=np.float32)
    with pytest.raises(Unsupported, match=r"torch.export cannot export model=cnn with a dynamic batch of 1\.\.32 "
                                          r"\(GuardOnDataDependentSymNode"):
        get_backend("executorch").build("fp32", BuildContext(DataDependent(), x, None, cfg, "x86", "x86_64", "",
                                                             tmp_path), tmp_path / "fp32.pte")


def test_peak_artifacts(tmp_path):
    """The machine-limit kernels: a size x size Linear without bias (fp32 and XNNPACK static int8, at
    batch size) and the 8 -> 8 floor at batch 1, as .pte programs the runner runs."""
    from bsb_hydra.backends.executorch.runner import ExecutorchRunner as RUNNER
    from bsb_hydra.backends.executorch.build import ExecutorchBackend

    assert isinstance(ExecutorchBackend.peak_kernels, str) and "QS8" in ExecutorchBackend.peak_kernels
    paths = ExecutorchBackend().peak_artifacts(tmp_path, 64, 8)
    assert set(paths) == {"fp32", "int8", "floor"} and all(p.suffix == ".pte" and p.is_file() for p in paths.values())
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    fp32, int8 = (RUNNER(str(paths[k]), 1, "float32", {}) for k in ("fp32", "int8"))
    a, b = (r.outputs(r.run(r.prepare(x)))[0] for r in (fp32, int8))
    assert a.shape == b.shape == (64, 64) and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert any(r["op"].startswith("Fully Connected (NC, QS8") for r in int8.profile(int8.prepare(x), 2)["ops"])
    floor = RUNNER(str(paths["floor"]), 1, "float32", {})
    assert floor.outputs(floor.run(floor.prepare(x[:1, :8])))[0].shape == (1, 8)


def test_the_runtimes_startup_lines_are_kept_out():
    """What ExecuTorch's runtime prints on file descriptor 2 when its threadpool starts (cpuinfo) is dropped;
    any other line is written to stderr again and handed back (a failing call's reason)."""
    from bsb_hydra.backends.executorch.runner import quiet_native_stderr

    with quiet_native_stderr() as kept:
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\n"
                    b"[threadpool.cpp:66] Resetting threadpool to 1 threads.\n"
                    b"[method.cpp:1243] Error resizing tensor at input 0\n")
    assert kept == ["[method.cpp:1243] Error resizing tensor at input 0"]


@pytest.mark.parametrize("overrides,words", [
    (["quant=qat"], ["prepare_qat_pt2e"]),
    (["quant=auto"], ["per-layer float fallback"]),
    (["quant=int4_weight_only"], ["8da4w"]),
    (["quant=fake_quant"], ["backend=pytorch"]),
    (["quant=static", "quant.method=entropy"], ["min/max", "histogram"]),
    (["quant=static", "quant.reduce_range=true"], ["int32"]),
    (["quant=fp32", "backend.max_batch=4", "benchmark.batch_sizes=[1,8]"], ["below", "largest, 8"]),
    (["model=onnx", "model.path=/tmp/x.onnx", "model.input_shape=[3,8,8]", "quant=fp32"], ["torch.export"]),
])
def test_what_executorch_does_not_run_says_why(compose_cfg, overrides, words):
    from bsb_hydra.backends import get_backend

    cfg = _config(compose_cfg, ["model=cnn", "backend=executorch", *overrides])
    reason = get_backend("executorch").unsupported_reason(cfg)
    assert reason and all(w in reason for w in words), reason


def test_a_missing_executorch_names_the_install_command(compose_cfg, monkeypatch):
    import importlib.util

    from bsb_hydra.backends import get_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    cfg = _config(compose_cfg, ["model=cnn", "backend=executorch", "quant=fp32"])
    reason = get_backend("executorch").unsupported_reason(cfg)
    assert "needs executorch" in reason and "make setup" in reason and "--no-deps" in reason


def test_the_schema_comes_from_the_package(compose_cfg):
    from bsb_hydra.backends.executorch.config import ExecutorchBackendConfig
    from bsb_hydra.config import ConfigError, schemas

    assert schemas("backend")["executorch"] is ExecutorchBackendConfig
    cfg = _config(compose_cfg, ["backend=executorch"])
    assert isinstance(cfg.backend, ExecutorchBackendConfig) and cfg.backend.max_batch is None
    with pytest.raises(ConfigError, match="backend.max_batch"):
        _config(compose_cfg, ["backend=executorch", "backend.max_batch=0"])
