"""The cross-run report: the frontier's properties (Hypothesis), the grouping and baseline rules on
a store filled with hand-made runs, and the real CLI on a real sweep, rendered in headless Chromium
and read back through a real `mlflow server`."""
import csv
import json
import math
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bsb_hydra.metric_names import flat, flat_runs, mlflow_key
from bsb_hydra.report import pareto
from bsb_hydra.report.build import ReportError, build_report
from tests.conftest import PYTHON, ROOT, MlflowServer

SENSES = [pareto.MIN, pareto.MIN, pareto.MAX]  # size, latency, accuracy

# ----------------------------------------------------------------------------- frontier properties
value = st.one_of(st.integers(0, 4).map(float), st.integers(0, 4).map(float), st.none(), st.just(math.nan))
points = st.lists(st.tuples(value, value, value), max_size=30)


@settings(max_examples=300, deadline=None)
@given(points)
def test_frontier_properties(pts):
    flags = pareto.frontier(pts, SENSES)
    complete = [i for i, p in enumerate(pts) if pareto.complete(p)]
    front = [i for i in complete if flags[i]]
    for i, p in enumerate(pts):
        assert (flags[i] is None) == (i not in complete)  # missing metrics: n/a, never on the frontier
    for i in front:  # no frontier point is dominated
        assert not any(pareto.dominates(pts[j], pts[i], SENSES) for j in complete)
    for i in complete:  # every other point is dominated by a frontier point
        if not flags[i]:
            assert any(pareto.dominates(pts[j], pts[i], SENSES) for j in front)
    for i in complete:  # ties: equal points share their fate
        for j in complete:
            if pts[i] == pts[j]:
                assert flags[i] == flags[j]
    assert bool(front) == bool(complete)


def test_dominance_directions():
    assert pareto.dominates((1, 1, 0.9), (2, 1, 0.9), SENSES)  # smaller
    assert pareto.dominates((1, 1, 0.9), (1, 1, 0.8), SENSES)  # more accurate
    assert not pareto.dominates((1, 1, 0.9), (1, 1, 0.9), SENSES)  # a tie dominates nothing
    assert not pareto.dominates((1, 2, 0.9), (2, 1, 0.9), SENSES)  # a trade-off
    assert pareto.frontier([(1, 1, 0.9), (1, 1, 0.9), (2, 2, 0.8)], SENSES) == [True, True, False]


# ------------------------------------------------------------------------ a store of hand-made runs
class Store:
    """A sqlite MLflow store with runs written the way the pipeline writes them (tags, metrics)."""

    def __init__(self, tmp: Path):
        from mlflow import MlflowClient

        self.tmp = tmp
        self.uri = f"sqlite:///{tmp}/mlflow.db"
        self.client = MlflowClient(self.uri)
        self.exp = self.client.create_experiment("exp", artifact_location=(tmp / "artifacts").as_uri())
        self.t = 1_700_000_000_000

    def add(self, model="cnn", quant="fp32", backend="pytorch", arch="x86_64", cpu="CPU A", emulated=False,
            threads=1, size=400_000.0, acc=0.90, p50=2.0, ci=0.02, status="ok", reason="", mlflow_status="FINISHED",
            config=None, fp32_key="k1", params=None, batch_sizes=(1,), paired=None, correct=None, digest="d1",
            p_value=None, extra_tags=None, extra_metrics=None, grouped=False):
        """paired: (fp32 p50, its CI half-width) as the cell's own job measured its fp32 reference.
        correct: per-sample results (logged as correct.npy); p_value: the job's McNemar test vs fp32.
        The metrics are logged by hand under their flat names (as runs before the metric groups were),
        or with ``grouped`` through the cell's own RunLog (under their groups, as the pipeline logs now)."""
        from mlflow.entities import Metric, Param

        self.t += 1000
        tags = {"status": status, "reason": reason, "model": model, "data": "fashion_mnist", "quant": quant,
                "backend": backend, "arch": arch, "cpu": cpu, "isa": "avx2", "emulated": str(emulated).lower(),
                "threads": str(threads), "fp32_key": fp32_key, "os": "Linux",
                "cell": f"{model}-fashion_mnist-{quant}-{backend}", "test_set_digest": digest,
                "config_hash": config or f"{model}-{quant}-{backend}-{threads}-{json.dumps(params)}",
                **(extra_tags or {})}
        run = self.client.create_run(self.exp, start_time=self.t, tags=tags, run_name=tags["cell"])
        rid = run.info.run_id
        metrics = {}
        if status == "ok":
            metrics = {"size_bytes": size, "accuracy": acc, "top1_agreement": 0.99, "peak_rss_mb": 300.0,
                       "accuracy_delta_pp": 0.0}
            if acc is None:  # unlabelled inputs: no accuracy metrics at all
                metrics = {k: v for k, v in metrics.items() if not k.startswith("accuracy")}
            for b in batch_sizes:
                metrics.update({f"latency_p50_ms_b{b}": p50 * b, f"latency_p50_ci_low_ms_b{b}": (p50 - ci) * b,
                                f"latency_p50_ci_high_ms_b{b}": (p50 + ci) * b})
                if paired is not None or quant == "fp32":
                    ref, half = paired if paired is not None else (p50, ci)
                    metrics.update({f"speedup_b{b}": ref / p50, f"fp32_latency_p50_ci_low_ms_b{b}": (ref - half) * b,
                                    f"fp32_latency_p50_ci_high_ms_b{b}": (ref + half) * b})
            metrics.update(extra_metrics or {})
        p = {"model.name": model, "quant.scheme": quant, "backend.name": backend, "device.threads": str(threads),
             "mlflow.tracking_uri": self.uri, **(params or {})}
        if grouped:
            from bsb_hydra.cell import RunLog

            RunLog(None, self.client, rid).metrics(metrics)
            self.client.log_batch(rid, params=[Param(k, v) for k, v in p.items()])
        else:
            self.client.log_batch(rid, metrics=[Metric(k, v, self.t, 0) for k, v in metrics.items()],
                                  params=[Param(k, v) for k, v in p.items()])
        if p_value is not None:
            self.client.log_metric(rid, mlflow_key("accuracy_delta_p_value") if grouped else "accuracy_delta_p_value",
                                   p_value)
        if correct is not None:
            path = self.tmp / "correct.npy"
            np.save(path, np.asarray(correct, dtype=bool))
            self.client.log_artifact(rid, str(path))
        if mlflow_status != "RUNNING":
            self.client.set_terminated(rid, status=mlflow_status)
        return rid

    def report(self, **kw):
        cfg = dict(tracking_uri=self.uri, experiment="exp", arch=None, budget_pp=1.0, out=str(self.tmp / "out"),
                   tag_runs=True, log_run=True)
        cfg.update(kw)
        return build_report(SimpleNamespace(**cfg))


def cell(report, arch, quant, backend="pytorch", emulated=False, threads="1"):
    found = [c for g in report.groups for c in g.cells if g.arch == arch and g.emulated == emulated
             and c.quant == quant and c.backend == backend and c.threads == threads]
    assert len(found) == 1, (arch, quant, backend, emulated, found)
    return found[0]


@pytest.fixture
def mixed(tmp_path):
    s = Store(tmp_path)
    ids = {
        "x86_fp32": s.add(),
        "x86_static": s.add(quant="static", size=100_000, acc=0.895, p50=1.0, paired=(1.9, 0.02)),
        # overlaps the fp32 cell, and its own job's fp32 reference
        "x86_dynamic": s.add(quant="dynamic", size=110_000, acc=0.90, p50=1.99, ci=0.05, paired=(2.01, 0.05)),
        "x86_tflite_static": s.add(quant="static", backend="tflite", size=105_000, acc=0.89, p50=0.9),  # no fp32
        "x86_static_2t": s.add(quant="static", threads=2, size=100_000, acc=0.895, p50=0.6),  # fp32 is 1 thread
        "arm_fp32": s.add(arch="aarch64", cpu="Neoverse-N1", p50=4.0),
        "arm_static": s.add(arch="aarch64", cpu="Neoverse-N1", quant="static", size=100_000, acc=0.89, p50=1.0,
                            paired=(3.8, 0.05)),
        "emu_fp32": s.add(arch="aarch64", cpu="AMD EPYC", emulated=True, p50=400.0),
        "emu_static": s.add(arch="aarch64", cpu="AMD EPYC", emulated=True, quant="static", size=100_000, acc=0.88,
                            p50=100.0, paired=(390.0, 5.0)),
    }
    return s, ids, s.report()


def test_groups_keep_archs_and_emulation_apart(mixed):
    _, _, rep = mixed
    keys = [(g.arch, g.cpu, g.emulated) for g in rep.groups]
    assert sorted(keys) == [("aarch64", "AMD EPYC", True), ("aarch64", "Neoverse-N1", False),
                            ("x86_64", "CPU A", False)]
    # each quantized cell is compared with the fp32 cell of its own arch
    assert cell(rep, "x86_64", "static").derived["cell_speedup_b1"] == pytest.approx(2.0)
    assert cell(rep, "aarch64", "static").derived["cell_speedup_b1"] == pytest.approx(4.0)
    assert cell(rep, "aarch64", "static").derived["delta_pp"] == pytest.approx(-1.0)
    # and the paired speedup is the one its own job measured
    assert cell(rep, "x86_64", "static").derived["speedup_b1"] == pytest.approx(1.9)
    assert cell(rep, "aarch64", "static").derived["speedup_b1"] == pytest.approx(3.8)
    emu = cell(rep, "aarch64", "static", emulated=True)
    assert emu.derived["speedup_b1"] is None and emu.derived["cell_speedup_b1"] is None  # emulation: no timings
    assert emu.derived["size_ratio"] == pytest.approx(0.25) and emu.derived["delta_pp"] == pytest.approx(-2.0)
    emu_group = next(g for g in rep.groups if g.emulated)
    assert emu_group.objectives == ["size_bytes", "accuracy"]
    assert [p.cell for p in emu_group.picks if p.name.startswith("fastest")] == [None, None]


def test_missing_baseline_is_shown_missing_not_invented(mixed):
    s, _, rep = mixed
    tfl = cell(rep, "x86_64", "static", backend="tflite")
    two = cell(rep, "x86_64", "static", threads="2")
    for c in (tfl, two):
        assert c.derived["baseline_run_id"] is None
        assert c.derived["size_ratio"] is None and c.derived["delta_pp"] is None
        assert c.derived["cell_speedup_b1"] is None and c.derived["speedup_b1"] is None  # nor a paired one here
    md = (s.tmp / "out" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| static / tflite"))
    assert row.count("–") >= 4  # ratio, both speedups, delta
    rows = list(csv.DictReader((s.tmp / "out" / "rows.csv").open()))
    assert len(rows) == 9
    r = next(r for r in rows if r["backend"] == "tflite")
    assert r["size_ratio"] == "" and r["delta_pp"] == "" and r["baseline_run_id"] == ""


def test_overlapping_intervals_are_not_significant(mixed):
    s, _, rep = mixed
    for kind in ("", "cell_"):  # paired, and against the fp32 cell
        assert cell(rep, "x86_64", "dynamic").derived[f"{kind}significant_b1"] is False
        assert cell(rep, "x86_64", "static").derived[f"{kind}significant_b1"] is True
    md = (s.tmp / "out" / "report.md").read_text()
    assert next(line for line in md.splitlines() if line.startswith("| dynamic / pytorch")).count("(n.s.)") == 2
    # a pick that is not significantly faster than another candidate says so
    x86 = next(g for g in rep.groups if g.arch == "x86_64")
    assert next(p for p in x86.picks if p.name == "fastest").note == ""


def test_frontier_picks_and_tags(mixed):
    s, ids, rep = mixed
    x86 = next(g for g in rep.groups if g.arch == "x86_64")
    picks = {p.name: p.cell for p in x86.picks}
    assert picks["smallest"].run_id in (ids["x86_static"], ids["x86_static_2t"])  # equal size; tie -> more accurate
    assert picks["fastest"].run_id == ids["x86_static_2t"]
    assert picks["most accurate"].run_id in (ids["x86_fp32"], ids["x86_dynamic"])
    # within 1 pp: the 2-thread cell has no baseline, tflite none either: the pytorch static cell
    assert picks["fastest within 1 pp"].run_id == ids["x86_static"]
    on = {c.run_id for c in x86.cells if c.derived["pareto"]}
    assert ids["x86_static_2t"] in on and ids["x86_fp32"] not in on  # dynamic: as accurate, smaller, faster
    tags = {rid: s.client.get_run(rid).data.tags["pareto_optimal"] for rid in ids.values()}
    assert {k for k, v in tags.items() if v == "true"} >= on
    assert all(v in ("true", "false") for v in tags.values())
    # the report run: artifacts and a tag the cells' search skips
    rr = s.client.get_run(rep.report_run_id)
    assert rr.data.tags["kind"] == "report"
    names = {a.path for a in s.client.list_artifacts(rep.report_run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/rows.csv"} <= names
    assert any(n.endswith("_tradeoff.png") for n in names) and "report/archs_cnn_fashion_mnist.png" in names
    again = s.report(budget_pp=5.0)
    assert len(again.runs.cells) == 9  # the first report run is not a cell
    x86 = next(g for g in again.groups if g.arch == "x86_64")
    # budget 5 pp: the tflite and 2-thread cells still have no baseline: not eligible
    assert next(p for p in x86.picks if p.name == "fastest within 5 pp").cell.run_id == ids["x86_static"]


def test_runs_with_flat_and_grouped_metric_names_read_the_same(tmp_path):
    """A store holding runs logged before the metric groups (flat names) and after (<group>/<name>,
    bsb_hydra/metric_names.py): the report reads both by their flat names, in one group."""
    s = Store(tmp_path)
    old = s.add(size=400_000.0, acc=0.90, p50=2.0, batch_sizes=(1, 8))
    new = s.add(quant="static", size=100_000.0, acc=0.89, p50=1.0, paired=(2.0, 0.02), batch_sizes=(1, 8),
                grouped=True)
    stored = {rid: set(s.client.get_run(rid).data.metrics) for rid in (old, new)}
    assert {"size_bytes", "latency_p50_ms_b8"} <= stored[old] and "size/size_bytes" not in stored[old]
    assert {"size/size_bytes", "latency/latency_p50_ms_b8", "quality/accuracy", "speedup/speedup_b8",
            "latency_p50_ms_b1", "accuracy_delta_pp"} <= stored[new]  # the headline ones as they are
    rep = s.report()
    (g,) = rep.groups
    fp32, static = cell(rep, "x86_64", "fp32"), cell(rep, "x86_64", "static")
    assert set(fp32.metrics) == set(static.metrics)  # one set of names, however each run stored them
    for c, size, acc, p50 in ((fp32, 400_000, 0.90, 2.0), (static, 100_000, 0.89, 1.0)):
        assert (c.metric("size_bytes"), c.metric("accuracy"), c.metric("latency_p50_ms_b8")) == (size, acc, 8 * p50)
        assert c.batch_sizes() == [1, 8]
    assert static.derived["size_ratio"] == pytest.approx(0.25)  # against the old run, its fp32 baseline
    assert static.derived["cell_speedup_b8"] == pytest.approx(2.0)
    rows = {r["run_id"]: r for r in csv.DictReader((tmp_path / "out" / "rows.csv").open())}
    assert float(rows[old]["p50_ms_b8"]) == 16.0 and float(rows[new]["p50_ms_b8"]) == 8.0
    # the report run's own counts are grouped too
    assert s.client.get_run(rep.report_run_id).data.metrics["report/cells"] == 2


def test_duplicates_newest_wins_and_count_is_shown(tmp_path):
    s = Store(tmp_path)
    s.add()
    old = s.add(quant="static", size=100_000, acc=0.85, p50=1.0, config="same")
    new = s.add(quant="static", size=100_000, acc=0.89, p50=1.0, config="same")
    rep = s.report()
    c = cell(rep, "x86_64", "static")
    assert c.run_id == new and c.duplicates == 2 and rep.runs.superseded == [old]
    assert s.client.get_run(old).data.tags["pareto_optimal"] == "superseded"
    assert "| 2 |" in next(line for line in (tmp_path / "out" / "report.md").read_text().splitlines()
                           if line.startswith("| static / pytorch"))



def test_runs_from_before_and_after_a_schema_addition_are_one_cell(tmp_path):
    """An older run without device.core_pinning / expected_isa / force, a newer one that logged
    them at their defaults and a static run with its analysis (different config_hash tags) are the
    same cell: the newest supersedes the others, and no variant label appears. A pinned run is a
    cell of its own."""
    s = Store(tmp_path)
    s.add()
    old = s.add(quant="static", size=100_000, p50=1.0, config="before")
    new = s.add(quant="static", size=100_000, p50=1.0, config="after",
                params={"device.core_pinning": "None", "device.expected_isa": "[]", "force": "False"})
    pinned = s.add(quant="static", size=100_000, p50=1.0, config="pinned", params={"device.core_pinning": "[1]"})
    # a static cell that also logged its sensitivity analysis measured the same plain static artifact
    analyzed = s.add(quant="static", size=100_000, p50=1.0, config="analyzed",
                     params={"quant.analyze": "True", "quant.eval_samples": "1000"})
    rep = s.report()
    statics = [c for g in rep.groups for c in g.cells if c.quant == "static"]
    assert sorted(c.run_id for c in statics) == sorted([analyzed, pinned])
    assert sorted(rep.runs.superseded) == sorted([old, new])
    assert {c.label for c in statics} == {"static / pytorch [device.core_pinning=-]",
                                          "static / pytorch [device.core_pinning=[1]]"}


def test_a_pick_within_the_noise_says_so(tmp_path):
    s = Store(tmp_path)
    s.add(backend="onnxruntime", p50=1.00, ci=0.05)
    s.add(backend="onnxruntime", quant="static", size=100_000, p50=0.98, ci=0.05, paired=(1.0, 0.05))
    rep = s.report()
    fastest = next(p for p in rep.groups[0].picks if p.name == "fastest")
    assert fastest.cell.quant == "static" and fastest.note == "not significantly faster than fp32 / onnxruntime"
    assert "not significantly faster than fp32 / onnxruntime" in (tmp_path / "out" / "report.md").read_text()


def test_variants_are_told_apart(tmp_path):
    s = Store(tmp_path)
    s.add()
    s.add(quant="static", params={"quant.granularity": "per_channel"}, size=100_000, p50=1.0)
    s.add(quant="static", params={"quant.granularity": "per_tensor"}, size=99_000, p50=0.9, acc=0.8)
    rep = s.report()
    labels = sorted(c.label for g in rep.groups for c in g.cells)
    assert labels == ["fp32 / pytorch", "static / pytorch [quant.granularity=per_channel]",
                      "static / pytorch [quant.granularity=per_tensor]"]


def _results(right: int, n: int = 1000, start: int = 0) -> np.ndarray:
    out = np.zeros(n, bool)
    out[start:start + right] = True
    return out


def test_qat_and_auto_are_paired_with_static_per_sample(tmp_path):
    """Static right on samples 0-799. QAT right on 15-824: 25 gained, 15 lost, n.s.; QAT on another
    backend right on 0-899: 100 gained, 0 lost, significant. auto has no per-sample results; a
    per-tensor static cell pairs with nothing; a QAT cell scored on other samples is not paired."""
    s = Store(tmp_path)
    pc, pt = {"quant.granularity": "per_channel"}, {"quant.granularity": "per_tensor"}
    for backend in ("pytorch", "onnxruntime"):
        s.add(quant="fp32", backend=backend, acc=0.80, correct=_results(800))
        s.add(quant="static", backend=backend, acc=0.80, params=pc, correct=_results(800), p_value=1.0)
    s.add(quant="qat", acc=0.81, params=pc, correct=_results(810, start=15), p_value=0.2)
    s.add(quant="qat", backend="onnxruntime", acc=0.90, params=pc, correct=_results(900), p_value=1e-6)
    s.add(quant="auto", acc=0.80, params=pc, p_value=1.0)
    s.add(quant="static", acc=0.79, params=pt, correct=_results(790), p_value=0.03)
    s.add(model="mlp", quant="fp32")
    s.add(model="mlp", quant="static", params=pc, correct=_results(800))
    s.add(model="mlp", quant="qat", params=pc, correct=_results(800), digest="d2")
    rep = s.report()
    by = {(p.cell.model, p.cell.quant, p.cell.backend): p for p in rep.pairs}
    assert sorted(by) == [("cnn", "auto", "pytorch"), ("cnn", "qat", "onnxruntime"), ("cnn", "qat", "pytorch"),
                          ("mlp", "qat", "pytorch")]
    assert all(p.base.quant == "static" and p.base.params["quant.granularity"] == "per_channel" for p in rep.pairs)
    qat = by[("cnn", "qat", "pytorch")].paired
    assert (qat["gained"], qat["lost"], qat["delta_pp"]) == (25, 15, pytest.approx(1.0))
    assert qat["p_value"] > 0.05 and by[("cnn", "qat", "pytorch")].verdict == "no significant difference"
    assert by[("cnn", "qat", "onnxruntime")].paired["lost"] == 0
    assert by[("cnn", "qat", "onnxruntime")].verdict.startswith("qat more accurate")
    assert "no per-sample results" in by[("cnn", "auto", "pytorch")].verdict
    assert "different test samples" in by[("mlp", "qat", "pytorch")].verdict
    # the accuracy delta of each cell carries its job's McNemar call
    assert by[("cnn", "qat", "pytorch")].base.derived["delta_significant"] is False  # per-channel static, p = 1
    assert by[("cnn", "qat", "onnxruntime")].cell.derived["delta_significant"] is True
    assert all(c.derived["delta_significant"] is None for g in rep.groups for c in g.cells if c.quant == "fp32")
    md = (rep.out / "report.md").read_text()
    assert "## QAT and auto against static PTQ (paired, same test samples)" in md
    assert "+1.00 | " in md and "25 / 15 | no significant difference" in md
    assert "| -1.00 |" in md and "+0.00 (n.s.)" in md  # per-tensor static: p 0.03 is significant, no mark
    rows = list(csv.DictReader((rep.out / "comparisons.csv").open()))
    assert len(rows) == 4 and {r["verdict"] for r in rows} >= {"no significant difference"}
    row = next(r for r in rows if r["quant"] == "qat" and r["backend"] == "onnxruntime")
    assert (row["gained"], row["lost"], row["n"]) == ("100", "0", "1000") and float(row["p_value"]) < 1e-20



def test_the_bench_pairs_qat_with_static_as_the_report_does(tmp_path, monkeypatch):
    """scripts/bench.py's QAT-vs-PTQ rows use the report's per-sample pairing, same figures and reasons."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    s = Store(tmp_path)
    pc = {"quant.granularity": "per_channel"}
    s.add(quant="fp32", acc=0.80, correct=_results(800))
    base = s.add(quant="static", acc=0.80, params=pc, correct=_results(800))
    qat = s.add(quant="qat", acc=0.81, params=pc, correct=_results(810, start=15))
    other = s.add(quant="qat", acc=0.80, params=pc, correct=_results(800), digest="d2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s.uri)
    run = s.client.get_run
    assert bench.paired_text(run(qat), run(base)) == (
        "paired: +1.00 pp (95% CI -0.24 to +2.24), 25 gained / 15 lost, McNemar p 0.154")  # scipy binomtest(15, 40): 0.1539
    assert bench.paired_text(run(other), run(base)) == (
        "not paired: scored on different test samples (tag test_set_digest)")


def test_real_size_shapes_and_unlabelled_groups(tmp_path):
    """A model at two input sizes is two groups; a group measured on unlabelled inputs has no accuracy
    axis (its frontier is over size and latency) and the report says "no labels"."""
    s = Store(tmp_path)
    r18 = {"input_shape": "3x224x224", "model_source": "torchvision", "model_ref": "torchvision resnet18",
           "data_source": "debian:dataset-fashion-mnist", "test_split": "t10k; a seeded subset of 2000"}
    s.add(model="resnet18", extra_tags=r18)
    s.add(model="resnet18", quant="static", size=100_000, acc=0.89, p50=1.0, paired=(2.0, 0.02), extra_tags=r18)
    s.add(model="resnet18", extra_tags={**r18, "input_shape": "3x160x160"})
    tiny = {"input_shape": "3x16x16", "model_source": "onnx", "model_ref": "tiny.onnx sha256 ab", "labelled": "false",
            "data_source": "random float32 inputs, seed 0", "test_split": "48 random inputs, unlabelled"}
    s.add(model="tiny", acc=None, extra_tags=tiny)
    s.add(model="tiny", quant="static", size=1000, acc=None, p50=1.0, paired=(2.0, 0.02), extra_tags=tiny)
    r = s.report()
    titles = sorted(g.title for g in r.groups)
    assert titles == ["resnet18 on fashion_mnist at 3x160x160: x86_64, CPU A, native",
                      "resnet18 on fashion_mnist at 3x224x224: x86_64, CPU A, native",
                      "tiny on fashion_mnist at 3x16x16: x86_64, CPU A, native"]
    g = next(g for g in r.groups if g.model == "tiny")
    assert g.objectives == ["size_bytes", "latency_p50_ms_b1"] and not g.labelled
    assert [c.derived["pareto"] for c in g.cells] == [False, True]  # the static cell: smaller and faster
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Model: torchvision torchvision resnet18" in md and "scored on t10k; a seeded subset of 2000" in md
    assert "NO LABELS: agreement with fp32 only" in md and "| no labels | no labels |" in md
    with open(tmp_path / "out" / "rows.csv") as f:
        rows = {(row["model"], row["quant"], row["input_shape"]): row for row in csv.DictReader(f)}
    assert rows[("tiny", "static", "3x16x16")]["labelled"] == "false"
    assert rows[("resnet18", "static", "3x224x224")]["model_source"] == "torchvision"


def test_cells_of_a_constant_fp32_model_say_their_quality_says_nothing(tmp_path):
    """A run tagged quality_warning (its fp32 reference answers one class: bsb_hydra/tasks/classification.py)
    is named on the group's model line, its delta is marked and rows.csv carries the warning; the sweep's
    table and the cell's printed line say it too."""
    from bsb_hydra.cell import summary_line
    from bsb_hydra.summary import format_table

    s = Store(tmp_path)
    meta = {"input_shape": "3x224x224", "model_source": "torchvision", "model_ref": "torchvision shufflenet",
            "data_source": "debian:dataset-fashion-mnist", "test_split": "t10k"}
    warning = ("the fp32 model answers class 3 (type: dress) for all 200 test samples: accuracy deltas and top-1 "
               "agreement cannot show what quantization costs here")  # a class name with a ':' in it
    s.add(model="shufflenet", acc=0.065, extra_tags={**meta, "quality_warning": warning})
    s.add(model="shufflenet", quant="static", acc=0.065, p50=1.0, paired=(2.0, 0.02),
          extra_tags={**meta, "quality_warning": warning})
    s.add(model="cnn", acc=0.9)
    s.report()
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("QUALITY SAYS NOTHING in 2 of 2 cells: the fp32 model answers class 3 (type: dress) for all 200 test samples. "
            "Their accuracy deltas and agreement are those of a constant") in md
    assert md.count("QUALITY SAYS NOTHING") == 1 and "+0.00 (constant fp32)" in md
    picks = [line for line in md.splitlines() if line.startswith("- fastest within 1 pp: ")]
    assert any(line.endswith("; its accuracy says nothing (constant fp32: see Model)") for line in picks), picks
    with open(tmp_path / "out" / "rows.csv") as f:
        rows = {row["model"] + "/" + row["quant"]: row for row in csv.DictReader(f)}
    assert rows["shufflenet/static"]["quality_warning"] == warning and rows["cnn/fp32"]["quality_warning"] == ""

    result = {"cell": "shufflenet-fashion_mnist-static-onnxruntime", "status": "ok", "job_num": 0,
              "quality_warning": warning,
              "metrics": {"size_bytes": 2048.0, "size_ratio": 0.44, "accuracy": 0.065, "accuracy_delta_pp": 0.0,
                          "top1_agreement": 1.0, "latency_p50_ms_b1": 0.8, "speedup_b1": 0.92, "peak_rss_mb": 66.0}}
    assert summary_line(result).endswith("\n  quality says nothing: " + warning)
    assert format_table([result]).splitlines()[-1].strip() == (
        "quality says nothing: the fp32 model answers class 3 (type: dress) for all 200 test samples")


def test_speedup_against_the_best_fp32_and_the_machine_limit(tmp_path):
    """The report leads with the speedup against the fastest fp32 cell of any backend (naming it), shows
    the job's speedup_vs_peak and the overhead-bound batch sizes, and the machine's measured limit; a
    kind=peak run is not a cell."""
    s = Store(tmp_path)
    limit = {"gflops_fp32": 90.0, "gops_int8": 180.0, "int8_peak_ratio": 2.0, "mem_bandwidth_gbs": 30.0}
    s.add(backend="onnxruntime", p50=1.0, batch_sizes=(1, 8), extra_metrics={**limit, "call_floor_ms": 0.01})
    s.add(p50=2.0, batch_sizes=(1, 8), extra_metrics={**limit, "call_floor_ms": 0.02})
    s.add(quant="static", size=100_000, acc=0.89, p50=0.5, paired=(2.0, 0.02), batch_sizes=(1, 8),
          extra_metrics={**limit, "call_floor_ms": 0.02, "speedup_vs_peak_b1": 2.0, "speedup_vs_peak_b8": 2.0,
                         "overhead_bound_b1": 1.0, "overhead_bound_b8": 0.0})
    s.client.set_terminated(s.client.create_run(s.exp, tags={"kind": "peak", "arch": "x86_64"}).info.run_id)
    r = s.report()
    assert not r.runs.others  # the peak run is neither a cell nor a failed one
    static, fp32_pt = cell(r, "x86_64", "static"), cell(r, "x86_64", "fp32")
    assert static.derived["vs_best_fp32_b1"] == pytest.approx(2.0)  # ORT fp32 1.0 ms / 0.5 ms
    assert static.derived["best_fp32_backend_b8"] == "onnxruntime"
    assert fp32_pt.derived["vs_best_fp32_b1"] == pytest.approx(0.5)
    assert cell(r, "x86_64", "fp32", "onnxruntime").derived["vs_best_fp32_b1"] == pytest.approx(1.0)
    assert static.derived["vs_peak_b1"] == 2.0 and static.derived["overhead_bound_b1"] is True
    md = (tmp_path / "out" / "report.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| cell |"))
    assert head.index("vs best fp32 b1") < head.index("speedup b1")  # it leads
    assert "vs peak b1" in head and "overhead-bound" in head
    row = next(line for line in md.splitlines() if line.startswith("| static / pytorch"))
    assert "2.00x (onnxruntime)" in row and "| b1 |" in row
    assert "int8_peak_ratio 2.00" in md and "empty-call floor onnxruntime 0.0100 ms, pytorch 0.0200 ms" in md
    with open(tmp_path / "out" / "rows.csv") as f:
        rows = {(row["quant"], row["backend"]): row for row in csv.DictReader(f)}
    assert float(rows[("static", "pytorch")]["vs_best_fp32_b8"]) == pytest.approx(2.0)
    assert rows[("static", "pytorch")]["overhead_bound_b8"] == "False"


def test_runs_that_are_not_cells_are_listed_with_reasons(tmp_path):
    s = Store(tmp_path)
    s.add()
    s.add(quant="static", backend="tflite", status="unsupported", reason="per_tensor: the converter cannot")
    s.add(quant="static", status="failed", reason="InjectedFault: boom", mlflow_status="FAILED")
    s.add(quant="dynamic", status="running", mlflow_status="RUNNING")
    s.add(quant="dynamic", backend="onnxruntime", status="running", mlflow_status="KILLED")
    rep = s.report()
    st_ = sorted((o.status, o.reason.split(":")[0]) for o in rep.runs.others)
    assert [x[0] for x in st_] == ["failed", "killed", "running", "unsupported"]
    md = (tmp_path / "out" / "report.md").read_text()
    others = md.split("## Runs that are not measured cells")[1]
    for text in ("the converter cannot", "InjectedFault: boom", "was killed without closing", "the job was killed"):
        assert text in others, text
    assert len(rep.runs.cells) == 1


def test_bad_input_is_refused_with_the_valid_values(tmp_path):
    s = Store(tmp_path)
    s.add()
    with pytest.raises(ReportError, match=r"arch='arm'.*x86_64, aarch64"):
        s.report(arch="arm")
    with pytest.raises(ReportError, match=r"budget_pp=-1.*>= 0"):
        s.report(budget_pp=-1)
    with pytest.raises(ReportError, match=r"experiment='nope'.*experiments there: Default, exp"):
        s.report(experiment="nope")
    with pytest.raises(ReportError, match=r"with arch=aarch64: archs found there: x86_64"):
        s.report(arch="aarch64")


def test_arch_filter_keeps_one_arch(mixed):
    s, _, _ = mixed
    rep = s.report(arch="aarch64", out=str(s.tmp / "arm"))
    assert {g.arch for g in rep.groups} == {"aarch64"} and len(rep.groups) == 2


# ----------------------------------------------------------------------- the real CLI on a real sweep
@pytest.fixture(scope="module")
def real_report(sweep, tmp_path_factory):
    """python -m bsb_hydra.report on a copy of the shared sweep's store."""
    src, _, _, _ = sweep
    tmp = tmp_path_factory.mktemp("report")
    shutil.copy(src / "mlflow.db", tmp / "mlflow.db")
    uri = f"sqlite:///{tmp}/mlflow.db"
    proc = subprocess.run([PYTHON, "-m", "bsb_hydra.report", f"tracking_uri={uri}", f"out={tmp}/out"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp, uri, proc


def test_cli_report_on_a_real_sweep(real_report):
    from mlflow import MlflowClient

    tmp, uri, proc = real_report
    out = tmp / "out"
    assert {"report.md", "report.html", "rows.csv"} <= {p.name for p in out.iterdir()}
    assert len(list(out.glob("*.png"))) >= 6  # per model: trade-off, size, speedup
    assert "fastest within 1 pp:" in proc.stdout and str(out / "report.md") in proc.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bsb-hydra")
    cells = [r for r in client.search_runs([exp.experiment_id], max_results=1000) if r.data.tags.get("kind") != "report"]
    ok = {r.info.run_id: r for r in flat_runs(cells) if r.data.tags["status"] == "ok"}
    rows = list(csv.DictReader((out / "rows.csv").open()))
    assert {r["run_id"] for r in rows} == set(ok)
    for row in rows:
        run = ok[row["run_id"]]
        assert run.data.tags["pareto_optimal"] == {"yes": "true", "no": "false", "n/a": "n/a"}[row["pareto"]]
        assert row["speedup_b1"] and float(row["speedup_b1"]) == pytest.approx(run.data.metrics["speedup_b1"])
        assert row["speedup_significant_b1"] in (("True", "False") if row["quant"] != "fp32" else ("",))
        # the report's ratios against the fp32 cell agree with the job's own paired fp32 reference
        # (same weights, same backend): sizes to a few bytes (a re-saved archive is not byte-identical),
        # accuracy to rounding
        assert float(row["size_ratio"]) == pytest.approx(run.data.metrics["size_ratio"], rel=1e-3)
        assert float(row["delta_pp"]) == pytest.approx(run.data.metrics["accuracy_delta_pp"], abs=1e-6)
    assert sum(r["pareto"] == "yes" for r in rows) >= 2  # at least one per model
    md = (out / "report.md").read_text()
    assert md.count("## mlp on fashion_mnist") == 1 and md.count("## cnn on fashion_mnist") == 1


def test_cli_refuses_an_unknown_experiment_naming_the_ones_there(real_report, tmp_path):
    _, uri, _ = real_report
    proc = subprocess.run([PYTHON, "-m", "bsb_hydra.report", f"tracking_uri={uri}", "experiment=nope",
                           f"out={tmp_path}/out"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "experiment='nope' is not in the store" in proc.stderr and "bsb-hydra" in proc.stderr
    bad = subprocess.run([PYTHON, "-m", "bsb_hydra.report", f"tracking_uri={uri}", "budget_pp=lots"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "budget_pp" in bad.stderr and "lots" in bad.stderr



def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_store_the_report_cannot_read_is_named_at_once_and_nothing_is_created(tmp_path):
    """The report only reads: a mistyped sqlite path is not turned into a new empty store, a file
    that is not a database, an unknown scheme and a server that is not there each get one line
    naming the URI and the forms allowed (no MLflow retries for minutes, no stack trace)."""
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"\x80\x02 not a database")
    cases = [(f"sqlite:///{tmp_path}/typo/mlflow.db", "there is no MLflow store at"),
             (f"sqlite:///{garbage}", "is not an SQLite database"),
             ("foo://bar", "cannot read an MLflow store there"),
             (f"http://127.0.0.1:{_free_port()}", "does not answer")]
    for uri, needle in cases:
        cfg = SimpleNamespace(tracking_uri=uri, experiment="exp", arch=None, budget_pp=1.0, out=str(tmp_path / "out"),
                              tag_runs=False, log_run=False)
        with pytest.raises(ReportError, match=needle) as e:
            build_report(cfg)
        assert f"tracking_uri={uri}" in str(e.value) and "sqlite:///PATH" in str(e.value)
    assert not (tmp_path / "typo").exists()


def test_cli_out_that_is_a_file_is_the_reports_own_error(tmp_path):
    (tmp_path / "afile").write_text("")
    proc = subprocess.run([PYTHON, "-m", "bsb_hydra.report", f"out={tmp_path}/afile"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const p = document.createElement('pre'); p.id = 'probe';
  p.textContent = JSON.stringify({images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: document.querySelectorAll('table').length, rows: document.querySelectorAll('tbody tr').length});
  document.body.appendChild(p);
});</script>"""


def chromium() -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is missing: `make test` installs it (apt-get install -y chromium)"
    return exe


def test_html_report_renders_in_headless_chromium(real_report, tmp_path):
    from PIL import Image

    tmp, _, _ = real_report
    page = tmp / "out" / "report.html"
    # DOM: a copy of the page with a probe that counts tables and decoded images after load
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}/profile",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180, env=env)
    assert '<pre id="probe">' in dom.stdout, dom.stderr[-2000:]
    found = json.loads(dom.stdout.split('<pre id="probe">')[1].split("</pre>")[0].replace("&quot;", '"'))
    n_png = len(list((tmp / "out").glob("*.png")))
    assert found["images"] == n_png and found["loaded"] == n_png, found
    assert found["tables"] >= 2 and found["rows"] >= 12, found
    # a screenshot of the page itself: not blank, and the plots' colours are on it
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}/profile2", "--window-size=1400,2600",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180, env=env, check=True)
    img = Image.open(shot).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200, "the screenshot is (nearly) blank"
    white = max(count for count, rgb in colors if rgb == (255, 255, 255)) if any(
        rgb == (255, 255, 255) for _, rgb in colors) else 0
    assert white < 0.97 * img.width * img.height


def _rest(base: str, path: str, body=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def _ui_checks(base: str, exp_id: str, tmp_path: Path) -> None:
    """What `mlflow ui` serves for the sweep: over its REST API, every ok cell's LoggedModel with the
    cell's metrics and the run's datasets; in headless Chromium, the runs page in the headline view."""
    from PIL import Image

    from bsb_hydra.tracking import HEADLINE_METRICS, ui_url

    runs = _rest(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 1000,
                                                       "filter": "tags.status = 'ok'"})["runs"]
    cells = [r for r in runs if not any(t["key"] == "kind" for t in r["data"].get("tags", []))]
    assert len(cells) == 12
    models = _rest(base, "/api/2.0/mlflow/logged-models/search", {"experiment_ids": [exp_id], "max_results": 100})
    by_run = {m["info"]["source_run_id"]: m for m in models["models"]}
    for r in cells:
        run_id, name = r["info"]["run_id"], r["info"]["run_name"]
        m = by_run[run_id]  # its LoggedModel: READY, the cell's name, the run's metrics
        assert m["info"]["status"] == "LOGGED_MODEL_READY" and m["info"]["name"] == name, m["info"]
        linked = flat({x["key"]: x["value"] for x in m["data"]["metrics"]})  # by flat name, as the run's
        run_metrics = flat({x["key"]: x["value"] for x in r["data"]["metrics"]})
        assert set(linked) == set(run_metrics) - {"train_loss"}, name  # all but the fp32 training curve
        assert all(linked[k] == pytest.approx(run_metrics[k]) for k in ("size_ratio", "latency_p50_ms_b1"))
        got = _rest(base, f"/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
        names = {d["dataset"]["name"] for d in got["inputs"]["dataset_inputs"]}
        assert "fashion_mnist-test" in names, names
        assert [o["model_id"] for o in got["outputs"]["model_outputs"]] == [m["info"]["model_id"]]
    # the UI: the experiment's runs (not the GenAI overview) in the headline view, a column per headline
    url = ui_url(base, exp_id)
    env = {**os.environ, "HOME": str(tmp_path)}
    # wide enough for every column: the table renders only the columns in view
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}/ui_profile", "--window-size=3600,1000",
                          "--virtual-time-budget=20000", "--dump-dom", url], capture_output=True, text=True,
                         timeout=180, env=env).stdout
    assert "Headline metrics" in dom and "shared view" in dom, dom[-2000:]
    for key in HEADLINE_METRICS:
        assert f">{key}<" in dom, key
    assert all(r["info"]["run_name"] in dom for r in cells)
    shot = tmp_path / "mlflow_ui.png"
    subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}/ui_profile2", "--window-size=1600,1000",
                    "--virtual-time-budget=20000", f"--screenshot={shot}", url], capture_output=True, timeout=180,
                   env=env, check=True)
    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot of the runs page is (nearly) blank"


def test_report_through_a_real_mlflow_ui_and_the_runs_page(real_report, tmp_path):
    """The report reads and tags through `mlflow ui` (what users start); over its REST API every ok cell
    has its LoggedModel and datasets, and headless Chromium finds the runs page with the headline
    columns (tests/test_sweep.py checks the same in the store itself)."""
    tmp, uri, _ = real_report
    server = MlflowServer(uri, tmp_path / "server.log", command="ui")
    base = server.start()
    try:
        # the report itself, reading and tagging through the server
        proc = subprocess.run([PYTHON, "-m", "bsb_hydra.report", f"tracking_uri={base}", f"out={tmp_path}/out",
                               "budget_pp=0.5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        rows = list(csv.DictReader((tmp_path / "out" / "rows.csv").open()))
        exp = _rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=bsb-hydra")["experiment"]
        found = _rest(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                           "filter": "tags.pareto_optimal = 'true'",
                                                           "max_results": 1000})
        ids = {r["info"]["run_id"] for r in found.get("runs", [])}
        assert ids and ids == {r["run_id"] for r in rows if r["pareto"] == "yes"}
        reports = _rest(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                             "filter": "tags.kind = 'report'"})
        assert len(reports["runs"]) == 2  # the sqlite one and this one
        _ui_checks(base, exp["experiment_id"], tmp_path)
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "/health", timeout=5)


def test_the_bench_prints_each_cells_stage_times():
    """scripts/bench.py's stage table: one row per cell in start order, '-' for a stage a cell did not
    log (a cell that failed early, or a run from before the stages were logged)."""
    import importlib.util
    from types import SimpleNamespace as NS

    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    full = {f"stage_{s}_seconds": float(i) for i, s in enumerate(bench.STAGES)}
    runs = [NS(info=NS(start_time=2, run_name="b"), data=NS(tags={"cell": "b", "status": "failed"},
                                                             metrics={"stage_data_seconds": 0.25, "cell_seconds": 3.0})),
            NS(info=NS(start_time=1, run_name="a"), data=NS(tags={"cell": "a", "status": "ok"},
                                                             metrics={**full, "cell_seconds": 30.0}))]
    rows = bench.stage_table(runs).splitlines()
    assert rows[2] == ("| cell | status | data | fp32 | peak | convert | quantize | measure | profile | score | log "
                       "| total |")
    assert rows[4] == "| a | ok | 0.0 | 1.0 | 2.0 | 3.0 | 4.0 | 5.0 | 6.0 | 7.0 | 8.0 | 30.0 |"
    assert rows[5] == "| b | failed | 0.2 | - | - | - | - | - | - | - | - | 3.0 |"


def test_a_quantized_cell_is_paired_only_with_an_fp32_cell_of_the_same_form():
    """An aoti or NCHW PyTorch fp32 cell (same weights, newer) is not the baseline of a channels_last
    TorchScript int8 cell; the fp32 cell built as its job's reference is. Old runs (no form params)
    pair with each other."""
    from bsb_hydra.report.analysis import baseline_of
    from bsb_hydra.report.runs import Cell

    def cell(i, quant, **params):
        tags = {"model": "cnn", "quant": quant, "backend": "pytorch", "threads": "2", "fp32_key": "k"}
        return Cell(f"r{i}", i, tags, {f"backend.{k}": v for k, v in params.items()}, {})

    ts = cell(1, "fp32", channels_last="True")
    static = cell(2, "static", channels_last="True")
    aoti = cell(3, "fp32", channels_last="True", export="aoti")
    nchw = cell(4, "fp32")  # channels_last=false is dropped as the inert value of older runs
    assert baseline_of(static, [ts, static, aoti, nchw]) is ts
    old_static = cell(5, "static")
    assert baseline_of(old_static, [ts, static, aoti, nchw, old_static]) is nchw
    assert baseline_of(static, [static, aoti, nchw]) is None


def test_the_limit_bench_checks_each_target_against_the_best_fp32_of_any_form():
    """scripts/bench.py --suite limit: speedup_vs_peak per static cell, best int8 against the best
    fp32 over every runtime and PyTorch form (here the aoti one), TFLite int8 against TFLite fp32,
    MiniLM ORT dynamic; a cell that did not end ok fails its target rather than vanishing."""
    import importlib.util
    from types import SimpleNamespace as NS

    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def run(i, model, quant, backend, p50, status="ok", params=None, **metrics):
        tags = {"model": model, "quant": quant, "backend": backend, "status": status, "build.ops": ""}
        m = {"latency_p50_ms_b1": p50, "accuracy": 0.7, "accuracy_delta_pp": 0.0, **metrics}
        return NS(info=NS(start_time=i, run_name=str(i)), data=NS(tags=tags, metrics=m, params=params or {}))

    runs = [run(1, "resnet18", "fp32", "pytorch", 30.0, params={"backend.channels_last": "True"}),
            run(2, "resnet18", "fp32", "pytorch", 20.0, params={"backend.export": "aoti"}),
            run(3, "resnet18", "fp32", "onnxruntime", 21.0),
            run(4, "resnet18", "fp32", "tflite", 25.0),
            run(5, "resnet18", "static", "pytorch", 4.0, speedup_b1=7.5, speedup_vs_peak_b1=1.2),
            run(6, "resnet18", "static", "onnxruntime", 7.0, speedup_b1=3.0, speedup_vs_peak_b1=0.5),
            run(7, "resnet18", "static", "tflite", 6.0, speedup_b1=4.2),
            run(8, "resnet18", "dynamic", "tflite", 30.0, speedup_b1=0.83),
            run(9, "transformer", "fp32", "onnxruntime", 40.0),
            run(10, "transformer", "dynamic", "onnxruntime", 20.0, status="failed")]
    c = bench.Checks()
    bench.limit_checks(c, runs)
    rows = {r.split(" | ")[0].lstrip("| "): r for r in c.rows}
    assert rows["resnet18 static pytorch b1: speedup_vs_peak"].endswith("| PASS |")
    assert rows["resnet18 static onnxruntime b1: speedup_vs_peak"].endswith("| FAIL |")
    best = rows["resnet18 b1: best int8 vs best fp32"]
    assert "5.00x (static / pytorch 4.00 ms vs fp32, aoti / pytorch 20.00 ms)" in best and best.endswith("PASS |")
    assert rows["resnet18 TFLite static b1: not slower than TFLite fp32"].endswith("| PASS |")
    assert rows["resnet18 TFLite dynamic b1: not slower than TFLite fp32"].endswith("| FAIL |")
    assert "0.67x the best fp32" in rows["(info) resnet18 b1: PyTorch fp32"]
    assert rows["MiniLM (seq 128) ORT dynamic b1: speedup_vs_peak"] == \
        "| MiniLM (seq 128) ORT dynamic b1: speedup_vs_peak | not ok | >= 0.6 | FAIL |"
    table = c.limit.splitlines()
    assert len(table) == 2 + len(runs) and any("| transformer | dynamic / onnxruntime | failed" in t for t in table)
    # the report says how MiniLM was trained, from its newest run (an unconverged one makes its accuracy moot)
    assert bench.minilm_training(runs) == "No MiniLM cell."
    older = run(11, "transformer", "dynamic", "onnxruntime", 9.0, fp32_accuracy=0.5038,
                params={"train.epochs": "1", "train.lr": "0.002", "train.limit_samples": "2048"})
    newer = run(12, "transformer", "dynamic", "onnxruntime", 8.0, fp32_accuracy=0.8557,
                params={"train.epochs": "3", "train.lr": "5e-05", "train.limit_samples": "None"})
    for r in (older, newer):
        r.data.tags["data"] = "rt_snippets"
    assert bench.minilm_training([newer, older]) == (
        "MiniLM: fine-tuned for 3 epoch(s) at lr 5e-05 over all training sentences; its fp32 scores 85.57% on "
        "rt_snippets's test split.")


def test_bench_runtimes_names_the_ops_that_gain_least_against_their_fp32_twins():
    """scripts/bench_runtimes.py's target row: an int8 op meets its fp32 twin by name without its
    precision (XNNPACK's and OpenVINO's spellings); ops under the target gain holding >= 10% of the int8
    time are named, ops without a twin (ORT's QLinearConv) are not compared."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_runtimes", ROOT / "scripts" / "bench_runtimes.py")
    br = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(br)
    assert br.op_family("Convolution (NHWC, QC8) DWConv #3") == br.op_family("Convolution (NHWC, F32) DWConv")
    assert br.op_family("GroupConvolution[I8]") == "GroupConvolution" == br.op_family("GroupConvolution[F32]")
    assert br.op_family("QLinearConv[uint8]") != br.op_family("Conv[float]")

    def ops(*pairs):
        return {"ops": [{"op": o, "ms_per_run": ms} for o, ms in pairs]}

    profile = {"ref": ops(("Fully Connected (NC, F32) GEMM", 2.52), ("Convolution (NHWC, F32) DWConv", 0.63),
                          ("Add (ND)", 0.02)),
               "cell": ops(("Fully Connected (NC, QS8, QC8W) GEMM", 0.85), ("Convolution (NHWC, QC8) DWConv", 0.60),
                           ("Add (ND)", 0.02), ("Convert (NC)", 0.02))}
    gains = br.op_gains(profile)
    assert gains[0] == ("Fully Connected GEMM", 2.52, 0.85) and gains[1] == ("Convolution DWConv", 0.63, 0.60)
    assert ("Convert", None, 0.02) in gains  # int8 only: no twin
    assert br.op_gains({"cell": profile["cell"]}) == []  # no fp32 reference profiled: nothing to compare

    class Run:
        def __init__(self, rid, status="ok"):
            self.info = type("I", (), {"run_id": rid})()
            self.data = type("D", (), {"tags": {"status": status}})()

    class Client:
        def download_artifacts(self, rid, path, dst):
            if rid == "none":
                raise OSError("no profile.json")
            out = Path(dst) / path
            out.write_text(json.dumps(profile))
            return str(out)

    latest = {("mobilenet_v2", "static", "executorch", ""): Run("et"), ("mobilenet_v2", "static", "tflite", ""): Run("none"),
              ("mobilenet_v2", "fp32", "executorch", ""): Run("fp32"), ("resnet18", "static", "executorch", ""): Run("r")}
    named = br.stoppers(Client(), latest, "mobilenet_v2")
    # 0.60 of 1.49 ms (40%) at 1.05x is named; the GEMM (2.96x) and the 1% ops are not
    assert named == ["executorch: Convolution DWConv 0.63 -> 0.60 ms (1.05x, 40% of int8)"]
