"""quant=auto (bsb_hydra/mixed.py): the measures, the search's stopping rule, and end to end on a
model with one deliberately fragile layer: the analysis ranks it first and auto keeps it float."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bsb_hydra import mixed
from bsb_hydra.config import AutoQuantConfig, ConfigError
from tests.conftest import SMOKE, model_folder, run_bsb, runs_of

DIGITS = ["data=digits", *(o if not o.startswith("benchmark.batch_sizes=") else "benchmark.batch_sizes=[1]"
                           for o in SMOKE)]


def test_the_chosen_trial_is_copied_with_its_other_batch_files(tmp_path):
    """quant=auto copies the chosen trial's file to the cell's artifact (backends.base.copy_artifact):
    with one file per batch size (a PT2E package per batch, benchmark.batch_sizes=[1,8]) the others go
    along under the new name, with a manifest naming them; a single file is copied alone. (The end-to-end
    tests below run at batch 1 only; a copy without its batch-8 file once fed 180 samples to the batch-1
    package.)"""
    from bsb_hydra.backends.base import copy_artifact

    trials = tmp_path / "trials"
    trials.mkdir()
    (trials / "k2.pt2").write_bytes(b"b1")
    (trials / "k2.b8.pt2").write_bytes(b"b8")
    (trials / "k2.pt2.batches.json").write_text(json.dumps({"1": "k2.pt2", "8": "k2.b8.pt2"}))
    copy_artifact(trials / "k2.pt2", tmp_path / "auto.pt2")
    assert json.loads((tmp_path / "auto.pt2.batches.json").read_text()) == {"1": "auto.pt2", "8": "auto.b8.pt2"}
    assert (tmp_path / "auto.pt2").read_bytes() == b"b1" and (tmp_path / "auto.b8.pt2").read_bytes() == b"b8"
    (trials / "k0.onnx").write_bytes(b"onnx")
    copy_artifact(trials / "k0.onnx", tmp_path / "auto.onnx")
    assert (tmp_path / "auto.onnx").read_bytes() == b"onnx" and not (tmp_path / "auto.onnx.batches.json").exists()


def test_sqnr_db_exact():
    x = np.array([3.0, 4.0])  # |x| = 5
    assert mixed.sqnr_db(x, x) == math.inf
    assert mixed.sqnr_db(x, x + np.array([0.0, 0.5])) == pytest.approx(20 * math.log10(5 / 0.5))
    assert mixed.sqnr_db(x, np.zeros(2)) == pytest.approx(0.0)


def test_int8_round_trip_per_channel_and_per_tensor():
    w = np.array([[1.0, -0.5, 0.25], [100.0, 1.0, -1.0]])
    pc = mixed.int8_round_trip(w, per_channel=True, axis=0)
    assert pc[0, 0] == pytest.approx(1.0) and pc[0, 1] == pytest.approx(-round(63.5) / 127)  # scale 1/127
    assert pc[1, 0] == pytest.approx(100.0) and pc[1, 1] == pytest.approx(100.0 / 127)
    pt = mixed.int8_round_trip(w, per_channel=False)  # one scale, 100/127: the small row collapses
    assert pt[0, 2] == 0.0 and pt[0, 0] == pytest.approx(100.0 / 127)
    assert mixed.sqnr_db(w[0], pc[0]) > mixed.sqnr_db(w[0], pt[0])


def test_selection_subset_never_uses_calibration_samples():
    calib = np.arange(0, 500, 2)
    sel = mixed.selection_indices(600, 300, 0, calib)
    assert len(sel) == 300 and not set(sel) & set(calib)
    assert np.array_equal(sel, mixed.selection_indices(600, 300, 0, calib))  # seeded
    assert len(mixed.selection_indices(600, 10_000, 0, calib)) == 600 - len(calib)


def test_budget_config():
    assert AutoQuantConfig(budget_pp=1.0).budget_for(0.9) == pytest.approx(0.01)
    assert AutoQuantConfig(budget_rel=0.02).budget_for(0.5) == pytest.approx(0.01)  # takes precedence
    with pytest.raises(ConfigError, match="budget_pp and quant.budget_rel are both null"):
        AutoQuantConfig(budget_pp=None)
    with pytest.raises(ConfigError, match="quant.budget_pp=-1.0 is negative"):
        AutoQuantConfig(budget_pp=-1.0)
    with pytest.raises(ConfigError, match="quant.budget_rel=1.5"):
        AutoQuantConfig(budget_rel=1.5)


class _FakeBackend:
    """Accuracy rises with the number of float layers: k float layers -> 0.80 + 0.02 * k."""
    suffix = ".bin"

    def build_mixed(self, ctx, out, float_layers):
        out.write_bytes(b"x" * (100 + 10 * len(float_layers)))
        return mixed.Artifact(out, "float32", {"k": str(len(float_layers))})


class _FakeEval:
    y = np.zeros(100, dtype=int)

    def logits(self, art):
        k = int(art.info["k"]) if art.info else 10
        correct = min(100, 80 + 2 * k)
        out = np.zeros((100, 2), np.float32)
        out[:correct, 0] = 1.0
        out[correct:, 1] = 1.0
        return out

    def p50_ms_b1(self, art):
        return 0.1


def _search(tmp_path, budget_pp, max_trials):
    class Ctx:
        class cfg:
            quant = AutoQuantConfig(budget_pp=budget_pp, max_trials=max_trials)

    table = {"fp32": {"accuracy": 1.0}, "layers": [{"layer": f"L{i}"} for i in range(10)]}
    fp32 = mixed.Artifact(tmp_path / "fp32.bin", "float32", {})
    return mixed.search(_FakeBackend(), Ctx, _FakeEval(), table, fp32, tmp_path)


def test_search_doubles_then_bisects_to_the_smallest_float_set(tmp_path):
    r = _search(tmp_path, budget_pp=10.0, max_trials=8)  # needs k >= 5 (0.80 + 0.02 * 5 = 0.90)
    assert [t["k"] for t in r["trials"]] == [0, 1, 2, 4, 8, 6, 5]
    assert r["budget_met"] and r["chosen"]["k"] == 5 and r["chosen"]["float_layers"] == ["L0", "L1", "L2", "L3", "L4"]


def test_search_stops_at_the_budget_and_at_max_trials(tmp_path):
    r = _search(tmp_path, budget_pp=20.0, max_trials=8)  # the full int8 model (k=0) is within budget
    assert [t["k"] for t in r["trials"]] == [0] and r["budget_met"] and r["chosen"]["k"] == 0
    r = _search(tmp_path, budget_pp=10.0, max_trials=3)  # out of trials before k=5: said, best kept
    assert [t["k"] for t in r["trials"]] == [0, 1, 2] and not r["budget_met"] and r["chosen"]["k"] == 2


# ------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def fragile_checkpoint(tmp_path_factory):
    """The smoke-trained digits mlp with an outlier in its first layer's weights on input pixel 0,
    which is 0 in every digits image: the fp32 function is unchanged, but one int8 scale now spans
    the outlier, and every other weight of that layer rounds to zero."""
    tmp = tmp_path_factory.mktemp("fragile")
    run_bsb(["model=mlp", "quant=fp32", "backend=onnxruntime", *DIGITS], tmp)
    (cached,) = (tmp / "cache" / "models").glob("mlp-*.pt")
    sd = torch.load(cached, weights_only=True)
    w = sd["1.weight"]
    w[:, 0] = 1000.0 * w.abs().max()  # every other weight of a row rounds to 0 in int8
    path = tmp / "fragile.pt"
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("backend,first_layer,fallback", [
    ("onnxruntime", "/1/Gemm", "fp16"), ("pytorch", "1", "fp32"),
    ("tflite", "mlp_twin/t_1/MatMul;mlp_twin/t_2/Relu;mlp_twin/t_1/BiasAdd", "fp32")])  # the converter's node name
def test_auto_ranks_the_fragile_layer_first_and_keeps_it_float(fragile_checkpoint, tmp_path, backend, first_layer,
                                                               fallback):
    run_bsb(["model=mlp", f"model.checkpoint={fragile_checkpoint}", "quant=auto", f"backend={backend}",
             "quant.budget_pp=2.0", f"quant.fallback={fallback}", *DIGITS], tmp_path)
    client, runs = runs_of(tmp_path)
    (run,) = runs
    tags, m = run.data.tags, run.data.metrics
    assert tags["status"] == "ok", tags.get("reason")
    assert tags["build.auto.fallback"] == fallback
    if fallback == "fp16":  # the kept layer's weights are stored in fp16, each behind a Cast to fp32
        assert tags["build.fallback"] == "fp16 weights, fp32 compute" and tags["build.fp16_nodes"] == first_layer
        import onnx

        g = onnx.load(str(model_folder(client, run, tmp_path) / "model.onnx")).graph  # its LoggedModel's onnx flavor
        layer = next(n for n in g.node if n.name == first_layer)
        cast = next(n for n in g.node if n.output[0] == layer.input[1])
        half = next(i for i in g.initializer if i.name == cast.input[0])
        assert cast.op_type == "Cast" and half.data_type == onnx.TensorProto.FLOAT16
        # every other tensor is untouched: no fp16 anywhere else
        assert [i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT16] == \
            [i for i in (cast.input[0], f"{layer.input[2]}_fp16") if i in {x.name for x in g.initializer}]
    if backend == "tflite":  # the deny list kept that one FULLY_CONNECTED float, between (de)quantize ops
        assert tags["build.float_nodes"] == first_layer and tags["build.float_ops"] == "FULLY_CONNECTED:1"
        assert "DEQUANTIZE:2" in tags["build.ops"] and "QUANTIZE:2" in tags["build.ops"]
    assert tags["build.auto.ranking"].split(",")[0] == first_layer
    assert tags["build.auto.float_layers"] == first_layer and tags["build.auto.budget_met"] == "true"
    # full int8 breaks (trial 1), the top-ranked layer in float meets the budget (trial 2): stop
    assert m["auto_trials"] == 2 and m["auto_float_layers"] == 1
    assert m["auto_selection_int8_accuracy"] < m["auto_selection_fp32_accuracy"] - 0.1
    assert m["accuracy_delta_pp"] >= -2.0 and m["auto_budget_met_test"] == 1.0
    if backend == "pytorch":  # a PT2E AOTInductor package: its ~0.3 MB of compiled code outweighs this mlp's weights
        assert tags["build.int8_weights"] == "2", tags  # the other two Linear layers are int8
    else:
        assert m["size_ratio"] < 0.9  # the other layers are int8
    files = {a.path for a in client.list_artifacts(run.info.run_id, "analysis")}
    assert files == {f"analysis/{f}" for f in ("sensitivity.json", "trials.json", "sensitivity.md", "sensitivity.png")}
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "analysis/sensitivity.json", str(tmp_path)))
                       .read_text())
    top = table["layers"][0]
    assert top["layer"] == first_layer and top["rank"] == 1
    # PT2E: the analysis's variants are converted modules run in the cell's process, no package compiled
    # for them (Backend.mixed_logits); the trials above and the chosen artifact are compiled packages
    assert table["scored_on"] == ("pytorch's reference module, in process (Backend.mixed_logits)"
                                  if backend == "pytorch" else f"{backend}'s artifacts, run by its runtime")
    # the table's full-int8 row against the search's first trial (the full int8 model as a built artifact,
    # compiled on pytorch), on the same selection samples: the eager reference must score what the
    # package scores
    trials = json.loads(Path(client.download_artifacts(run.info.run_id, "analysis/trials.json", str(tmp_path)))
                        .read_text())
    k0 = next(t for t in (trials["trials"] if isinstance(trials, dict) else trials) if t["k"] == 0)
    assert abs(k0["accuracy"] - table["int8"]["accuracy"]) <= 0.02, (k0["accuracy"], table["int8"]["accuracy"])
    assert top["only_int8_accuracy_delta_pp"] < -10
    # int8 wipes out its weights (the outlier itself is exact and dominates |w|: SQNR barely sees it)
    assert top["weight_zeroed_fraction"] > 0.9
    assert all(r["weight_zeroed_fraction"] < 0.2 for r in table["layers"][1:])


@pytest.mark.parametrize("overrides,reason", [
    (["quant=auto", "backend=tflite", "model=lstm"], "model=lstm, quant=auto on tflite: the LSTM's twin is unrolled"),
    (["quant=auto", "backend=tflite", "quant.fallback=fp16"], "fp16 weights are a whole-model converter option"),
    (["quant=auto", "backend=tflite", "quant.method=histogram"], "quant.method=histogram: the TFLite converter"),
    (["quant=auto", "backend=onnxruntime", "model=lstm"], "ORT cannot apply to an LSTM"),
    (["quant=auto", "backend=pytorch", "model=transformer_tiny"], "built in eager mode here"),
    (["quant=static", "quant.analyze=true", "backend=pytorch", "model=lstm"], "quant.analyze=true, model=lstm"),
    (["quant=auto", "backend=pytorch", "quant.fallback=fp16"], "quant.fallback=fp16 on pytorch: torch.ao's x86"),
    (["quant=auto", "backend=pytorch", "quant.fallback=fp16"], "(valid here: fp32)"),
])
def test_unsupported_auto_and_analyze_cells_say_why(compose_cfg, overrides, reason):
    """The support check (before any work; the sweep reports the cell unsupported with this text)."""
    from bsb_hydra.backends import get_backend
    from bsb_hydra.config import validate

    cfg = compose_cfg(overrides)
    cfg.paths.root = "/tmp/project"
    obj = validate(cfg)
    assert reason in (get_backend(obj.backend.name).unsupported_reason(obj) or "")


def test_static_hash_ignores_the_inert_analysis_keys(compose_cfg):
    """quant.analyze / quant.eval_samples were added after static runs were stored: with analyze
    off they leave config_hash as it was (resume keeps skipping those runs); analyze=true is a new cell."""
    from omegaconf import open_dict

    from bsb_hydra.cell import config_hash

    cfg = compose_cfg(["quant=static"])
    cfg.paths.root = "/tmp/project"
    before = cfg.copy()
    with open_dict(before):
        del before.quant.analyze
        del before.quant.eval_samples
    assert config_hash(cfg) == config_hash(before)
    from bsb_hydra.tracking import resolved_params

    assert "quant.analyze" not in resolved_params(cfg) and "quant.eval_samples" not in resolved_params(cfg)
    cfg.quant.analyze = True
    assert resolved_params(cfg)["quant.analyze"] in (True, "True", "true")
    assert config_hash(cfg) != config_hash(before)


def test_static_cell_with_analyze_logs_the_table_beside_the_plain_static_artifact(fragile_checkpoint, tmp_path):
    run_bsb(["model=mlp", f"model.checkpoint={fragile_checkpoint}", "quant=static", "quant.analyze=true",
             "backend=onnxruntime", *DIGITS], tmp_path)
    client, (run,) = runs_of(tmp_path)
    tags, m = run.data.tags, run.data.metrics
    assert tags["status"] == "ok", tags.get("reason")
    assert tags["build.sensitivity.ranking"].split(",")[0] == "/1/Gemm"
    assert m["sensitivity_layers"] == 3 and m["sensitivity_selection_samples"] > 0
    # the measured artifact is the plain static model: the fragile layer is int8 and the accuracy falls
    assert m["accuracy_delta_pp"] < -10 and "auto_trials" not in m
    files = {a.path for a in client.list_artifacts(run.info.run_id, "analysis")}
    assert files == {f"analysis/{f}" for f in ("sensitivity.json", "sensitivity.md", "sensitivity.png")}
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "analysis/sensitivity.json", str(tmp_path)))
                       .read_text())
    by = {r["layer"]: r for r in table["layers"]}
    assert set(by) == {"/1/Gemm", "/4/Gemm", "/7/Gemm"}
    # ORT exposes the activations (qdq_loss_debug): the fragile layer's output in the all-int8 model
    # is wrecked by its weights, while its activation's own int8 grid loses little
    first = by["/1/Gemm"]
    assert first["output_sqnr_db"] < 10 and first["activation_sqnr_db"] > 25
    assert all(math.isfinite(r["activation_sqnr_db"]) and math.isfinite(r["output_sqnr_db"]) for r in by.values())
    md = Path(client.download_artifacts(run.info.run_id, "analysis/sensitivity.md", str(tmp_path))).read_text()
    assert "| activation SQNR | output in int8 model SQNR |" in md
