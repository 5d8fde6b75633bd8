"""A real multirun through `python -m bsb_hydra -m ...` into a temporary MLflow store."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bsb_hydra.metric_names import flat_key
from tests.conftest import SMOKE, TWO_BATCHES, model_folder, model_of, run_bsb, runs_of

LATENCY_METRICS = [f"latency_{k}_ms_b{b}" for k in ("mean", "p50", "p90", "p95", "p99", "std") for b in (1, 8)]
SCHEMA_METRICS = ["size_bytes", "size_ratio", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                  "accuracy_delta_pp", "top1_agreement", "confidence_drift", "kl_div", "latency_cv_b1",
                  "throughput_sps_b1", "speedup_b1", "speedup_b8", "load_ms", "first_inference_ms", "peak_rss_mb",
                  "rss_delta_mb", "model_params", "model_macs", *LATENCY_METRICS]
SCHEMA_TAGS = ["status", "model", "data", "quant", "backend", "device", "arch", "cpu", "isa", "emulated",
               "os", "python", "version_torch", "version_onnxruntime", "git_sha", "config_hash", "sweep_dir",
               "job_num", "model_source", "model_ref", "input_shape", "data_source", "test_split", "labelled"]


def by_cell(runs):
    return {(r.data.tags["model"], r.data.tags["quant"], r.data.tags["backend"]): r for r in runs}


def test_every_cell_has_a_run_with_status(sweep):
    _, proc, _, runs = sweep
    cells = by_cell(runs)
    assert len(runs) == 12 and len(cells) == 12
    for key, r in cells.items():
        status = r.data.tags["status"]
        assert status in ("ok", "unsupported"), (key, status, r.data.tags.get("reason"))
        if status == "unsupported":
            assert r.data.tags["reason"]
    # the summary table at the end of the sweep lists every cell
    assert "12 cells" in proc.stdout and proc.stdout.count("-fashion_mnist-") >= 24


def test_mlflow_schema(sweep):
    _, _, _, runs = sweep
    for r in runs:
        if r.data.tags["status"] != "ok":
            continue
        missing_m = [k for k in SCHEMA_METRICS if k not in r.data.metrics]
        missing_t = [k for k in SCHEMA_TAGS if k not in r.data.tags]
        assert not missing_m and not missing_t, (r.info.run_name, missing_m, missing_t)
        # tags that do not apply are absent, not '': no reason on an ok cell, no seq_len on images,
        # no cpus_pinned unpinned, no torch_engine off pytorch
        assert not {"reason", "seq_len", "cpus_pinned"} & set(r.data.tags)
        assert ("torch_engine" in r.data.tags) == (r.data.tags["backend"] == "pytorch")
        assert r.data.tags["arch"] in ("x86_64", "aarch64") and r.data.tags["emulated"] in ("true", "false")
        assert r.data.params["quant.scheme"] == r.data.tags["quant"]
        assert r.data.params["train.name"] == "smoke" and r.data.params["device.threads"] == "1"
        assert r.data.metrics["accuracy_ci_low"] <= r.data.metrics["accuracy"] <= r.data.metrics["accuracy_ci_high"]
        # where the cell's time went: every stage, each within the cell's wall time
        stages = {s: r.data.metrics.get(f"stage_{s}_seconds") for s in
                  ("data", "fp32", "peak", "convert", "quantize", "measure", "profile", "score", "log")}
        assert all(v is not None and v >= 0 for v in stages.values()), (r.info.run_name, stages)
        assert stages["measure"] > 0 and sum(stages.values()) <= r.data.metrics["cell_seconds"], stages
        if r.data.tags["quant"] == "static":  # the 7-bit choice is recorded, and follows the CPU's VNNI
            vnni = "vnni" in r.data.tags["isa"]
            expected = str(r.data.tags["arch"] == "x86_64" and not vnni).lower()
            assert r.data.tags["build.reduce_range"] == expected, r.info.run_name


def test_the_experiment_opens_on_its_runs_and_each_run_says_what_it_measured(sweep, tmp_path):
    """MLflow 3's UI opens an experiment by its kind (model development: the runs; none: the GenAI
    overview). Each run's description is its summary line. An experiment made before the tag, or by
    a merge, gets it; a kind somebody set stays."""
    import subprocess

    from mlflow import MlflowClient

    from tests.conftest import PYTHON, ROOT

    _, proc, client, runs = sweep
    assert client.get_experiment_by_name("bsb-hydra").tags["mlflow.experimentKind"] == "custom_model_development"
    for r in runs:
        t = r.data.tags
        note = t["mlflow.note.content"]
        assert note.startswith(f"[{t['status']}] {t['cell']}") and note in proc.stdout, note
        if t["status"] == "ok":
            assert "size " in note and "p50@b1 " in note and "speedup" in note, note
    uri = f"sqlite:///{tmp_path}/old.db"
    old = MlflowClient(uri)
    old.create_experiment("before")
    old.set_experiment_tag(old.create_experiment("chosen"), "mlflow.experimentKind", "genai_development")
    # in a process of its own: tracking.setup sets MLflow's process-wide tracking URI (and the
    # MLFLOW_TRACKING_URI variable), which the other tests of this worker must not inherit
    script = ("import sys\nfrom omegaconf import OmegaConf\nfrom bsb_hydra import tracking\n"
              "for name in ('before', 'chosen', 'new'):\n"
              "    tracking.setup(OmegaConf.create({'mlflow': {'tracking_uri': sys.argv[1], 'experiment': name,"
              " 'artifact_root': sys.argv[2]}}))\n")
    done = subprocess.run([PYTHON, "-c", script, uri, str(tmp_path / "artifacts")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    kinds = {n: old.get_experiment_by_name(n).tags.get("mlflow.experimentKind") for n in ("before", "chosen", "new")}
    assert kinds == {"before": "custom_model_development", "chosen": "genai_development",
                     "new": "custom_model_development"}


def test_artifacts_logged(sweep):
    _, _, client, runs = sweep
    r = by_cell(runs)[("cnn", "static", "onnxruntime")]
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.json", "per_class_accuracy.json", "latency_samples.json", "predictions.npy",
            "correct.npy"} <= names
    assert "model" not in names  # the measured file is the cell's LoggedModel's, not a run artifact


def test_metrics_are_stored_under_their_groups(sweep):
    """As MLflow stores them: the headline metrics by their names (first in the runs table), every other
    one as <group>/<name> with a group of bsb_hydra/metric_names.py (MLflow's UI makes each group a
    section of charts), none in the fallback group; histories (train_loss) under the same key."""
    from bsb_hydra.metric_names import GROUPS, OTHER, flat_key, mlflow_key
    from bsb_hydra.tracking import HEADLINE_METRICS

    tmp, _, client, flat_runs = sweep
    _, runs = runs_of(tmp, stored=True)
    groups = {g for g, _ in GROUPS}
    seen = set()
    for r in runs:
        keys = set(r.data.metrics)
        assert keys, r.info.run_name
        flat = {flat_key(k) for k in keys}
        assert flat == set(next(x for x in flat_runs if x.info.run_id == r.info.run_id).data.metrics)
        for k in keys:
            group, _, name = k.partition("/")
            if k in HEADLINE_METRICS:
                continue
            assert group in groups and group != OTHER and mlflow_key(flat_key(k)) == k, k
            seen.add(group)
        if r.data.tags["status"] == "ok":
            assert set(HEADLINE_METRICS) - {"quality_delta"} <= keys, r.info.run_name
            assert client.get_metric_history(r.info.run_id, mlflow_key("train_loss"))
    assert {"latency", "speedup", "limit", "size", "memory", "stage", "quality", "fidelity", "calibration",
            "train"} <= seen, seen


def test_each_cell_is_a_logged_model_carrying_its_metrics_and_its_datasets(sweep, tmp_path):
    """Every ok cell's measured artifact is an MLflow LoggedModel (READY, named after the cell, output
    of its run) whose linked metrics are the run's own; ONNX ones in the onnx flavor (loadable by
    mlflow.onnx, the same bytes as measured), the PyTorch package as the measured file with an MLmodel.
    The test split and the calibration samples are the run's datasets; the quality metrics name the
    test split."""
    import mlflow.onnx
    import yaml
    from mlflow.entities import LoggedModelStatus

    _, _, client, runs = sweep
    for (model, quant, backend), r in by_cell(runs).items():
        m, t = r.data.metrics, r.data.tags
        lm = model_of(client, r)
        assert lm.status == LoggedModelStatus.READY and lm.name == t["cell"] and lm.source_run_id == r.info.run_id
        linked = {flat_key(x.key): x for x in lm.metrics}  # stored under their groups, as the run's
        # every metric of the run but the fp32 model's training curve (train_loss, one point per epoch)
        assert set(linked) == set(m) - {"train_loss"}, sorted(set(m) ^ set(linked))
        for key in ("size_ratio", "accuracy_delta_pp", "latency_p50_ms_b1", "speedup_vs_best_fp32_b1"):
            assert linked[key].value == pytest.approx(m[key]), key
        assert linked["accuracy"].dataset_name == f"{t['data']}-test" and linked["size_ratio"].dataset_name is None
        assert lm.tags["backend"] == backend and lm.tags["quant"] == quant and lm.tags["same_bytes_as_measured"] == "true"
        assert int(lm.tags["size_bytes"]) == m["size_bytes"]
        inputs = {d.dataset.name: d for d in client.get_run(r.info.run_id).inputs.dataset_inputs}
        assert set(inputs) == {f"{t['data']}-test"} | ({f"{t['data']}-calibration"} if quant == "static" else set())
        test = inputs[f"{t['data']}-test"]
        assert test.dataset.digest == t["test_set_digest"] and [x.value for x in test.tags] == ["testing"]
        assert json.loads(test.dataset.profile) == {"num_rows": 1000} and "fashion" in test.dataset.source
        assert linked["accuracy"].dataset_digest == test.dataset.digest
        folder = model_folder(client, r, tmp_path / t["cell"])
        if backend == "onnxruntime":
            mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
            assert {"onnx", "python_function"} <= set(mlmodel["flavors"]) and mlmodel["model_id"] == lm.model_id
            assert (folder / "model.onnx").stat().st_size == m["size_bytes"]
            assert len(mlflow.onnx.load_model(str(folder)).graph.node) > 0
        else:
            mlmodel = yaml.safe_load((folder.parent / "MLmodel").read_text())
            flavor = mlmodel["flavors"]["bsb_hydra"]
            assert flavor["format"] == lm.model_type and flavor["runtime"] == "pytorch"
            assert [(folder / Path(f).name).stat().st_size for f in flavor["files"]] == [m["size_bytes"]]


def test_static_int8_is_at_most_30_percent_of_fp32(sweep):
    """The int8 weights: the whole file on onnxruntime; on pytorch (PT2E, an AOTInductor package) the
    constants compiled into it, since the package also carries ~0.3 MB of code, more than these
    small models' int8 weights (the file is still smaller than the fp32 one)."""
    _, _, _, runs = sweep
    cells = by_cell(runs)
    for model in ("mlp", "cnn"):
        for backend in ("pytorch", "onnxruntime"):
            s, f = cells[(model, "static", backend)], cells[(model, "fp32", backend)]
            assert s.data.tags["status"] == "ok"
            fp32 = f.data.metrics["size_bytes"]
            if backend == "pytorch":
                assert s.data.metrics["aoti_constants_bytes"] <= 0.30 * fp32, model
                assert s.data.metrics["size_ratio"] < 1.0, model
            else:
                assert s.data.metrics["size_bytes"] <= 0.30 * fp32, (model, backend)
                assert s.data.metrics["size_ratio"] <= 0.30


def test_fp32_pytorch_and_onnxruntime_agree(sweep):
    tmp, _, client, runs = sweep
    cells = by_cell(runs)
    for model in ("mlp", "cnn"):
        preds = []
        for backend in ("pytorch", "onnxruntime"):
            run_id = cells[(model, "fp32", backend)].info.run_id
            path = client.download_artifacts(run_id, "predictions.npy", str(tmp / f"dl-{model}-{backend}"))
            preds.append(np.load(path))
        assert len(preds[0]) == 1000
        assert (preds[0] == preds[1]).mean() >= 0.999, model
    # every ORT cell compared its fp32 reference with the PyTorch model's test logits, computed once
    # per model (weights, test set) and reused by the model's other ORT cells
    for model in ("mlp", "cnn"):
        for quant in ("fp32", "dynamic", "static"):
            assert cells[(model, quant, "onnxruntime")].data.metrics["fp32_vs_pytorch_agreement"] >= 0.999
    cached = sorted((tmp / "cache" / "logits").glob("*.npy"))
    assert len(cached) == 2 and {np.load(p).shape for p in cached} == {(1000, 10)}


def test_fp32_model_trained_once_per_model(sweep):
    _, _, _, runs = sweep
    for model in ("mlp", "cnn"):
        sources = [r.data.tags["fp32_source"] for r in runs if r.data.tags["model"] == model]
        assert sources.count("trained") == 1 and sources.count("cache") == 5, (model, sources)
        keys = {r.data.tags["fp32_key"] for r in runs if r.data.tags["model"] == model}
        assert len(keys) == 1



def test_fp32_artifact_converted_once_per_model_and_backend(sweep):
    """The fp32 cell converts and files its artifact; the dynamic and static cells of the same model
    and backend copy it (bsb_hydra/artifact_cache.py), and time and score the same bytes."""
    tmp, _, client, runs = sweep
    cells = by_cell(runs)
    for model in ("mlp", "cnn"):
        for backend in ("pytorch", "onnxruntime"):
            tags = {q: cells[(model, q, backend)].data.tags for q in ("fp32", "dynamic", "static")}
            assert [tags[q]["fp32_artifact_cache"] for q in tags] == ["stored", "hit", "hit"], (model, backend)
            assert len({t["fp32_artifact_key"] for t in tags.values()}) == 1
            sizes = {cells[(model, q, backend)].data.metrics["fp32_size_bytes"] for q in tags}
            refs = {cells[(model, q, backend)].data.metrics["fp32_accuracy"] for q in tags}
            assert len(sizes) == 1 and len(refs) == 1, (model, backend, sizes, refs)
    entries = sorted((tmp / "cache" / "artifacts").glob("*/meta.json"))
    assert len(entries) == 4

def test_quantized_cells_compare_with_their_backends_fp32(sweep):
    _, _, _, runs = sweep
    cells = by_cell(runs)
    for (model, quant, backend), r in cells.items():
        fp32 = cells[(model, "fp32", backend)].data.metrics
        m = r.data.metrics
        assert m["fp32_accuracy"] == pytest.approx(fp32["accuracy"]), (model, quant, backend)
        assert m["accuracy_delta_pp"] == pytest.approx(100 * (m["accuracy"] - fp32["accuracy"]), abs=1e-9)
        if quant != "fp32":
            assert m["speedup_b1"] == pytest.approx(m["fp32_latency_p50_ms_b1"] / m["latency_p50_ms_b1"])


def test_benchmark_worker_imports_only_its_runtime(sweep):
    _, _, _, runs = sweep
    for r in runs:
        expected = {"pytorch": "torch", "onnxruntime": "onnxruntime"}[r.data.tags["backend"]]
        assert r.data.tags["worker_imports"] == expected, (r.info.run_name, r.data.tags["worker_imports"])


def test_one_failing_cell_leaves_the_others_intact(tmp_path):
    proc = run_bsb(["-m", "model=mlp", "data=digits", "quant=fp32,static", "backend=onnxruntime",
                    "debug.fail_stage=quantize,worker_crash", "debug.fail_cell=static", "force=true", *SMOKE],
                   tmp_path, failed=True)  # force: the two fp32 cells differ only in debug settings, not in config_hash
    _, runs = runs_of(tmp_path)
    assert len(runs) == 4
    status = sorted((r.data.tags["quant"], r.data.params["debug.fail_stage"], r.data.tags["status"]) for r in runs)
    assert status == [("fp32", "quantize", "ok"), ("fp32", "worker_crash", "ok"),
                      ("static", "quantize", "failed"), ("static", "worker_crash", "failed")]
    reasons = {r.data.params["debug.fail_stage"]: r.data.tags["reason"] for r in runs
               if r.data.tags["status"] == "failed"}
    assert "InjectedFault" in reasons["quantize"]
    assert "SIGSEGV" in reasons["worker_crash"]
    failed = [r for r in runs if r.data.tags["status"] == "failed"]
    assert all(r.info.status == "FAILED" for r in failed)
    # a failed cell still says where its time went, up to the stage that failed
    by_stage = {r.data.params["debug.fail_stage"]: r.data.metrics for r in failed}
    assert "stage_fp32_seconds" in by_stage["quantize"] and "stage_measure_seconds" not in by_stage["quantize"]
    assert "stage_quantize_seconds" in by_stage["worker_crash"] and "stage_measure_seconds" in by_stage["worker_crash"]
    assert "2 ok, 0 skipped, 0 unsupported, 2 failed" in proc.stdout


def test_unsupported_cell_is_logged_with_reason(tmp_path):
    run_bsb(["model=mlp", "data=digits", "quant=static", "quant.method=entropy", "backend=pytorch", *SMOKE],
            tmp_path)
    _, runs = runs_of(tmp_path)
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["status"] == "unsupported" and "entropy" in tags["reason"] and "onnxruntime" in tags["reason"]
    assert "fp32_source" not in tags  # refused before any training


def test_checkpoint_with_wrong_shapes_fails_naming_the_file(tmp_path):
    import torch

    bad = tmp_path / "bad.pt"
    torch.save({"0.weight": torch.zeros(3, 3)}, bad)
    run_bsb(["model=mlp", "data=digits", f"model.checkpoint={bad}", *SMOKE], tmp_path, failed=True)
    _, runs = runs_of(tmp_path)
    tags = runs[0].data.tags
    assert tags["status"] == "failed" and str(bad) in tags["reason"]


def test_checkpoint_that_is_not_a_state_dict_says_what_it_holds(tmp_path):
    import torch

    saved = tmp_path / "training_state.pt"
    torch.save({"epoch": 3, "model": {"0.weight": torch.zeros(2)}}, saved)
    run_bsb(["model=mlp", "data=digits", f"model.checkpoint={saved}", *SMOKE], tmp_path, failed=True)
    _, runs = runs_of(tmp_path)
    reason = runs[0].data.tags["reason"]
    assert runs[0].data.tags["status"] == "failed" and str(saved) in reason
    assert "holds a dict with keys epoch, model, not a state_dict" in reason and "model.state_dict()" in reason


def test_out_of_range_value_stops_the_sweep_before_any_job(tmp_path):
    proc = run_bsb(["-m", "model=mlp,cnn", "train.epochs=1,0", *SMOKE], tmp_path, check=False)
    assert proc.returncode != 0
    assert "train.epochs=0 is not allowed" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout  # the message, not Hydra's stack around it
    assert not (tmp_path / "mlflow.db").exists()  # no job ran, not even the valid ones
    assert not list((tmp_path / "sweep").glob("*/result.json"))


@pytest.mark.parametrize("args, needle", [
    (["model=mlp", "train.epochs=0"], "train.epochs=0 is not allowed"),
    # a text model on image data: refused by name, before its ${data.vocab_size} is resolved
    (["model=lstm", "data=digits"], "model=lstm reads text data, data=digits is not text data"),
])
def test_a_single_cell_with_a_bad_value_exits_non_zero_and_logs_nothing(tmp_path, args, needle):
    proc = run_bsb([*args, *SMOKE], tmp_path, check=False)
    assert proc.returncode == 1 and f"Error in the config: {needle}" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_a_key_of_one_swept_option_is_left_out_of_the_others_and_repeats_run_once():
    from hydra_plugins.bsb_hydra_sweeper.validating_sweeper import drop_inapplicable

    has = {("quant=fp32", "quant.bits"): False, ("quant=fake_quant", "quant.bits"): True,
           ("quant=fp32", "quant.qat"): False, ("quant=fake_quant", "quant.qat"): True}
    probe = lambda choices, key: has[(next(c for c in choices if c.startswith("quant=")), key)]  # noqa: E731
    jobs = [[q, f"quant.bits={b}", "quant.qat=true", "train=smoke"] for q in ("quant=fp32", "quant=fake_quant")
            for b in (2, 8)]
    out, notes = drop_inapplicable(jobs, probe)
    assert out == [["quant=fp32", "train=smoke"], ["quant=fake_quant", "quant.bits=2", "quant.qat=true", "train=smoke"],
                   ["quant=fake_quant", "quant.bits=8", "quant.qat=true", "train=smoke"]]
    assert notes == ["quant.bits does not apply to quant=fp32: left out of those jobs",
                     "quant.qat does not apply to quant=fp32: left out of those jobs",
                     "1 job(s) that then repeated another were dropped: 3 jobs run"]
    # a key no job's option has is kept: Hydra's own error names it
    typo = [["quant=fp32", "quant.bitz=2"], ["quant=fake_quant", "quant.bitz=2"]]
    assert drop_inapplicable(typo, lambda c, k: False) == (typo, [])


def test_multirun_group_keys_become_one_value_sweeps():
    from bsb_hydra.config import defer_group_keys

    argv = ["-m", "quant=fp32,fake_quant", "quant.bits=4", "model.hidden=[64,32]", "quant.qat=false,true",
            "+quant.extra=1", "train=smoke", "benchmark.repeats=1", "seed=3"]
    assert defer_group_keys(argv) == ["-m", "quant=fp32,fake_quant", "quant.bits=choice(4)",
                                      "model.hidden=choice([64,32])", "quant.qat=false,true", "+quant.extra=1",
                                      "train=smoke", "benchmark.repeats=1", "seed=3"]
    assert defer_group_keys(["quant.bits=4"]) == ["quant.bits=4"]  # a single run composes it directly


def test_a_misspelt_key_in_a_sweep_still_stops_it_naming_the_key(tmp_path):
    proc = run_bsb(["-m", "model=mlp", "quant=fp32,static", "quant.granularty=per_tensor", *SMOKE], tmp_path,
                   check=False)
    assert proc.returncode != 0
    assert "granularty" in proc.stderr + proc.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_option_in_a_sweep_lists_the_valid_ones(tmp_path):
    proc = run_bsb(["-m", "model=mlp,cnnn"], tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "cnnn" in err and "mobilenet" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_repeats_time_the_cell_and_its_fp32_reference_in_fresh_processes_in_alternating_order(tmp_path):
    import json

    run_bsb(["model=mlp", "data=digits", "quant=dynamic", "backend=onnxruntime", *SMOKE, TWO_BATCHES, "benchmark.repeats=2"],
            tmp_path)
    client, runs = runs_of(tmp_path)
    r = runs[0]
    assert r.data.tags["status"] == "ok", r.data.tags.get("reason")
    m = r.data.metrics
    for b in (1, 8):
        assert m[f"latency_processes_b{b}"] == 2 and m[f"latency_process_p50_spread_b{b}"] >= 1.0
        assert m[f"fp32_latency_p50_ci_low_ms_b{b}"] <= m[f"fp32_latency_p50_ms_b{b}"] <= \
            m[f"fp32_latency_p50_ci_high_ms_b{b}"]
    samples = json.loads(open(client.download_artifacts(r.info.run_id, "latency_samples.json", str(tmp_path))).read())
    assert len(samples["samples_ms"]) == 2 and len(samples["fp32_reference_samples_ms"]) == 2
    assert m["latency_count_b1"] == sum(len(p["1"]) for p in samples["samples_ms"])
    # two processes: the cell first (its memory is its own, both evaluated), then the fp32 reference first
    bench = tmp_path / "run" / "artifacts" / "bench"
    results = [json.loads((bench / f"r{i}_result.json").read_text()) for i in range(2)]
    assert [[it["tag"] for it in res["items"]] for res in results] == [["dynamic", "fp32_reference"],
                                                                        ["fp32_reference", "dynamic"]]
    first = results[0]["items"]
    assert "peak_rss_mb" in first[0] and "peak_rss_mb" not in first[1]
    # process 0 wrote both artifacts' outputs over the test split (scored, then their chunks removed)
    assert sorted(p.parent.name for p in bench.glob("*_outputs/manifest.json")) == ["r0_dynamic_outputs",
                                                                                   "r0_fp32_reference_outputs"]
    assert not list(bench.glob("*_outputs/*.npz"))
    assert m["peak_rss_mb"] == first[0]["peak_rss_mb"]


def test_accuracy_delta_is_tested_on_the_same_samples(sweep):
    """The per-sample results each cell logs add up to its accuracy, and its McNemar counts against
    the fp32 reference are the fp32 cell's per-sample results compared with its own."""
    tmp, _, client, runs = sweep
    cells = by_cell(runs)
    for model in ("mlp", "cnn"):
        for backend in ("pytorch", "onnxruntime"):
            q, f = cells[(model, "static", backend)], cells[(model, "fp32", backend)]
            got = [np.load(client.download_artifacts(r.info.run_id, "correct.npy", str(tmp / f"c-{r.info.run_id}")))
                   for r in (q, f)]
            assert got[0].dtype == bool and got[0].shape == got[1].shape == (1000,)
            m = q.data.metrics
            assert got[0].mean() == pytest.approx(m["accuracy"]) and got[1].mean() == pytest.approx(m["fp32_accuracy"])
            assert m["gained_vs_fp32"] == (got[0] & ~got[1]).sum() and m["lost_vs_fp32"] == (~got[0] & got[1]).sum()
            assert m["accuracy_delta_ci_low_pp"] <= m["accuracy_delta_pp"] <= m["accuracy_delta_ci_high_pp"]
            assert 0.0 <= m["accuracy_delta_p_value"] <= 1.0
            assert q.data.tags["test_set_digest"] == f.data.tags["test_set_digest"] != ""


def test_ort_dynamic_leaves_convolutions_fp32_by_default(sweep):
    """quant.convolutions=null on onnxruntime: MatMul/Gemm become MatMulInteger, the convs stay fp32
    Conv (ConvInteger is slower than ORT's fp32 Conv); the build tags say which ops still read fp32
    weights. The mlp has no conv: all its Linear layers are int8."""
    _, _, _, runs = sweep
    cells = by_cell(runs)
    t = cells[("cnn", "dynamic", "onnxruntime")].data.tags
    assert t["build.convolutions"] == "false" and "Conv" not in t["build.quantized_op_types"].split(",")
    assert "ConvInteger" not in t["build.ops"] and "MatMulInteger" in t["build.ops"]
    assert t["build.float_weight_ops"].startswith("Conv:"), t["build.float_weight_ops"]
    m = cells[("mlp", "dynamic", "onnxruntime")]
    assert m.data.tags["build.float_weight_ops"] == "none" and m.data.metrics["size_ratio"] <= 0.3


def test_ort_dynamic_convolutions_true_is_conv_integer(tmp_path):
    run_bsb(["model=cnn", "quant=dynamic", "quant.convolutions=true", "backend=onnxruntime", *SMOKE], tmp_path)
    _, runs = runs_of(tmp_path)
    (r,) = runs
    assert r.data.tags["status"] == "ok", r.data.tags.get("reason")
    assert r.data.tags["build.convolutions"] == "true" and "ConvInteger" in r.data.tags["build.ops"]
    assert r.data.tags["build.float_weight_ops"] == "none" and r.data.metrics["size_ratio"] <= 0.3


def test_pytorch_float_artifacts_are_channels_last_and_aoti_is_a_compiled_package(sweep, tmp_path):
    """backend.export=aoti: the fp32 cell is an AOTInductor .pt2 (compiled code inside), measured
    and scored like the TorchScript one, on the same trained model. The TorchScript fp32 cell runs
    channels_last; the aoti one of this one-channel model does not (Inductor miscompiled the wrapper's
    (N, 1, H, W) reorder with a dynamic batch). The PT2E int8 cells are AOTInductor packages whose
    layouts Inductor picks (dynamic) or whose kernels reorder themselves (static: no tag)."""
    import zipfile

    _, _, _, shared = sweep
    cells = by_cell(shared)
    assert cells[("cnn", "fp32", "pytorch")].data.tags["build.memory_format"] == "channels_last"
    assert cells[("cnn", "fp32", "pytorch")].data.tags["build.export"] == "torchscript"
    assert cells[("cnn", "dynamic", "pytorch")].data.tags["build.memory_format"] == "inductor"
    for scheme in ("dynamic", "static"):
        assert cells[("cnn", scheme, "pytorch")].data.tags["build.export"] == "aoti"
    assert cells[("mlp", "fp32", "pytorch")].data.tags["build.memory_format"] == "contiguous"  # no conv
    assert "build.memory_format" not in cells[("cnn", "static", "pytorch")].data.tags
    run_bsb(["-m", "model=cnn", "quant=fp32", "backend=pytorch", "backend.export=aoti,torchscript",
             *SMOKE, TWO_BATCHES], tmp_path)
    _, runs = runs_of(tmp_path)
    by_export = {r.data.params.get("backend.export", "torchscript"): r for r in runs}  # the default is not logged
    aoti, ts = by_export["aoti"], by_export["torchscript"]
    assert aoti.data.tags["status"] == "ok", aoti.data.tags.get("reason")
    assert aoti.data.tags["build.export"] == "aoti" and aoti.data.tags["build.memory_format"] == "contiguous"
    (package,) = (tmp_path / "sweep").glob("*/artifacts/fp32.pt2")
    assert any(n.endswith(".so") for n in zipfile.ZipFile(package).namelist())
    assert aoti.data.metrics["size_bytes"] == package.stat().st_size
    assert aoti.data.tags["fp32_key"] == ts.data.tags["fp32_key"]  # one trained model
    assert abs(aoti.data.metrics["accuracy"] - ts.data.metrics["accuracy"]) <= 0.002
    assert aoti.data.metrics["latency_p50_ms_b8"] > 0


def test_a_sweep_reads_its_config_as_it_was_when_it_started(sweep):
    """The jobs compose from a copy of conf/ taken at the start (an edit of conf/ mid-sweep used to
    reach the later jobs, or end the sweep), and the copy is gone when the sweep has ended."""
    import yaml

    tmp, _, _, _ = sweep
    hydra_files = sorted((tmp / "sweep").glob("*/.hydra/hydra.yaml"))
    assert len(hydra_files) == 12
    mains = {next(s["path"] for s in yaml.safe_load(f.read_text())["hydra"]["runtime"]["config_sources"]
                  if s["provider"] == "main") for f in hydra_files}
    (main,) = mains  # one copy for the whole sweep
    assert "bsb_hydra_conf_" in main
    from pathlib import Path

    assert not Path(main.removeprefix("file://")).exists()


def test_summary_prints_several_sweeps_in_the_order_given(tmp_path, capsys):
    """python -m bsb_hydra.summary DIR...: what `make run` prints last, the real-size sweep's table
    first; exit 1 when a cell of any sweep failed."""
    from bsb_hydra import summary

    def write(sweep, job, cell, status, **metrics):
        d = tmp_path / sweep / str(job)
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"cell": cell, "status": status, "reason": "" if status == "ok" else
                                                   "why", "metrics": metrics, "job_num": str(job)}))
    write("first_look", 1, "efficientnet_lite0-fashion_mnist-static-openvino", "ok", size_ratio=0.27)
    write("first_look", 0, "efficientnet_lite0-fashion_mnist-fp32-openvino", "ok", size_ratio=1.0)
    write("default_grid", 0, "mlp-fashion_mnist-fp32-pytorch", "ok", size_ratio=1.0)
    assert summary.main([str(tmp_path / "first_look"), str(tmp_path / "default_grid")]) == 0
    out = capsys.readouterr().out
    order = [out.index(c) for c in ("efficientnet_lite0-fashion_mnist-fp32-openvino",
                                    "efficientnet_lite0-fashion_mnist-static-openvino", "mlp-fashion_mnist-fp32-pytorch")]
    assert order == sorted(order) and "2 cells, 2 ok" in out
    write("default_grid", 1, "mlp-fashion_mnist-static-pytorch", "failed")
    assert summary.main([str(tmp_path / "first_look"), str(tmp_path / "default_grid")]) == 1
