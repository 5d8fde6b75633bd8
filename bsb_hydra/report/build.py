"""The report's steps in order: store -> runs -> groups and frontier -> files -> MLflow tags and a
``report`` run -> the picks printed."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bsb_hydra import tracking
from bsb_hydra.metric_names import mlflow_key
from bsb_hydra.report import analysis, plots, render, runs as runs_mod

ARCHS = ("x86_64", "aarch64")
# What a report writes into `out` (and deletes there first, so a stale plot never ships).
OWN_FILES = ("report.md", "report.html", "rows.csv", "simulated.csv", "comparisons.csv", "*.png")
# Written into every report folder: outside the project, a folder holding report-like files is
# cleaned only if it has this marker (so out=~/Pictures never loses a PNG).
MARKER = ".bsb_hydra_report"


class ReportError(ValueError):
    """Bad report input: the message names the value and what is allowed."""


@dataclass
class Report:
    out: Path
    groups: List[analysis.Group]
    runs: runs_mod.Runs
    report_run_id: str
    tagged: Dict[str, str]  # run id -> pareto_optimal value set
    pairs: List[analysis.SchemePair]  # QAT / auto against static PTQ, paired per sample


def _check(cfg) -> None:
    if cfg.arch is not None and cfg.arch not in ARCHS:
        raise ReportError(f"arch={cfg.arch!r} is not allowed: use one of {', '.join(ARCHS)} (or leave it unset for every arch)")
    if cfg.budget_pp is None or cfg.budget_pp < 0:
        raise ReportError(f"budget_pp={cfg.budget_pp!r} is not allowed: it must be a number of percentage points >= 0")
    if not str(cfg.out).strip():
        raise ReportError("out='' is not allowed: give a folder for the report")
    out = Path(cfg.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ReportError(f"out={cfg.out!r} is a file, not a folder")
    project = Path.cwd().resolve()
    doomed = [p for pattern in OWN_FILES for p in out.glob(pattern)] if out.is_dir() else []
    if doomed and not (out == project or project in out.parents) and not (out / MARKER).is_file():
        raise ReportError(f"out={cfg.out!r} ({out}) is outside the project ({project}) and holds files a report "
                          f"replaces (e.g. {doomed[0].name}) that no earlier report wrote (no {MARKER} there): "
                          f"give a new or empty folder, a report folder, or one inside the project")


STORE_FORMS = "sqlite:///PATH of an existing store, or http(s)://HOST:PORT of a tracking server"


def _open_store(cfg):
    """The store's client and the experiment (or None). The report only reads: a sqlite file that
    does not exist is an error (MLflow would create an empty store there), and any store MLflow
    cannot open is named in one line."""
    from mlflow import MlflowClient

    uri = str(cfg.tracking_uri)
    shown = tracking.mask_text(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ReportError(f"tracking_uri={shown}: there is no MLflow store at {path} "
                              f"(run a sweep first, or give {STORE_FORMS})")
        with path.open("rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise ReportError(f"tracking_uri={shown}: {path} is not an SQLite database (give {STORE_FORMS})")
    try:
        tracking.check_server(uri)
        client = MlflowClient(uri)
        return client, client.get_experiment_by_name(cfg.experiment)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ReportError(f"tracking_uri={shown}: cannot read an MLflow store there ({type(e).__name__}: "
                          f"{tracking.mask_text(first)}); use {STORE_FORMS}") from None


class PerSample:
    """Runs' per-sample results (the correct.npy each cell logs), each downloaded once into ``tmp``;
    ``pair`` runs the paired accuracy test of one run against another. The report's QAT/auto pairs
    and the bench's QAT-vs-PTQ rows both use it."""

    def __init__(self, client, tmp: str):
        self.client, self.tmp, self._loaded = client, tmp, {}

    def correct(self, run_id: str):
        """The run's correct.npy, or None for a run logged before correct.npy existed."""
        import numpy as np

        if run_id not in self._loaded:
            has = any(a.path == "correct.npy" for a in self.client.list_artifacts(run_id))
            self._loaded[run_id] = (np.load(self.client.download_artifacts(run_id, "correct.npy", f"{self.tmp}/{run_id}"))
                                    if has else None)
        return self._loaded[run_id]

    def pair(self, run_id: str, digest, base_id: str, base_digest) -> Tuple[Optional[Dict[str, float]], str]:
        """(stats.paired_accuracy of run against base, "") or (None, why they cannot be paired).
        ``digest``: each run's test_set_digest tag; runs scored on different samples are not paired."""
        from bsb_hydra.bench.stats import paired_accuracy

        if digest != base_digest:
            return None, "scored on different test samples (tag test_set_digest)"
        a, b = self.correct(run_id), self.correct(base_id)
        if a is None or b is None:
            return None, "a run has no per-sample results (correct.npy): measured before they were logged"
        if a.shape != b.shape:
            return None, f"per-sample results of different lengths ({len(a)} vs {len(b)})"
        return paired_accuracy(a, b), ""


def pair_up(client, pairs: List[analysis.SchemePair]) -> None:
    """Each pair's paired accuracy test, from the per-sample results (correct.npy) both runs logged.
    Cells scored on different test samples (tag test_set_digest) are not paired."""
    with tempfile.TemporaryDirectory() as tmp:
        samples = PerSample(client, tmp)
        for p in pairs:
            p.paired, p.note = samples.pair(p.cell.run_id, p.cell.tag("test_set_digest"),
                                            p.base.run_id, p.base.tag("test_set_digest"))


def build_report(cfg) -> Report:
    from mlflow import MlflowClient

    _check(cfg)
    client, exp = _open_store(cfg)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"experiment={cfg.experiment!r} is not in the store {tracking.mask_text(cfg.tracking_uri)}: "
                          f"experiments there: {', '.join(names) or 'none (run a sweep first)'}")
    runs = runs_mod.load(client, exp.experiment_id, cfg.arch)
    if not runs.cells and not runs.others and not runs.simulated:
        found = sorted({r.data.tags.get("arch", "?") for r in tracking.search_all(client, exp.experiment_id)
                        if r.data.tags.get("kind") not in ("report", "peak")})
        raise ReportError(f"no runs in experiment {cfg.experiment!r}" + (f" with arch={cfg.arch}" if cfg.arch else "")
                          + (f": archs found there: {', '.join(found)}" if found else ": run a sweep first"))
    groups = analysis.analyze(runs.cells, float(cfg.budget_pp))
    simulated = analysis.simulated_groups(runs.simulated)
    pairs = analysis.scheme_pairs(groups)
    pair_up(client, pairs)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for pattern in OWN_FILES:
        for p in out.glob(pattern):
            p.unlink()
    made = plots.draw_all(groups, out, simulated)
    meta = {"experiment": cfg.experiment, "store": tracking.mask_text(cfg.tracking_uri), "arch": cfg.arch or "",
            "budget_pp": f"{float(cfg.budget_pp):g}",
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    (out / MARKER).write_text("written by python -m bsb_hydra.report; its files are replaced by the next report\n")
    (out / "report.md").write_text(render.markdown(meta, groups, runs, made, simulated, pairs))
    (out / "report.html").write_text(render.html_page(meta, groups, runs, made, out, simulated, pairs))
    render.write_csv(groups, out / "rows.csv")
    if pairs:
        render.write_pairs_csv(pairs, out / "comparisons.csv")
    if simulated:
        render.write_simulated_csv(simulated, out / "simulated.csv")

    tagged: Dict[str, str] = {}
    if cfg.tag_runs:
        for g in groups:
            for c in g.cells:
                tagged[c.run_id] = {True: "true", False: "false", None: "n/a"}[c.derived.get("pareto")]
        tagged.update({c.run_id: "simulated" for c in runs.simulated})  # never on a frontier
        tagged.update({rid: "superseded" for rid in runs.superseded})
        for rid, v in tagged.items():
            client.set_tag(rid, "pareto_optimal", v)
    run_id = ""
    if cfg.log_run:
        run = client.create_run(exp.experiment_id, run_name="report",
                                tags={"kind": "report", "arch": cfg.arch or "all", "status": "report"})
        run_id = run.info.run_id
        client.log_param(run_id, "budget_pp", meta["budget_pp"])
        client.log_param(run_id, "arch", cfg.arch or "all")
        counts = {"cells": len(runs.cells), "groups": len(groups), "other_runs": len(runs.others),
                  "simulated_cells": len(runs.simulated), "pareto_cells": sum(v == "true" for v in tagged.values())}
        for k, v in counts.items():
            client.log_metric(run_id, mlflow_key(k), v)
        client.log_artifacts(run_id, str(out), "report")
        client.set_terminated(run_id)

    print(f"Report of experiment {cfg.experiment!r}: {len(runs.cells)} cells in {len(groups)} groups, "
          f"{len(runs.others)} other runs (unsupported, failed or interrupted; listed in the report)"
          + (f", {len(runs.simulated)} simulated cells (accuracy vs bits, off every frontier)" if runs.simulated else ""))
    for g in groups:
        print(f"\n{g.title}")
        for line in render.pick_lines(g):
            print(f"  {line}")
    if pairs:
        print("\nQAT and auto against static PTQ (paired on the same test samples):")
        for line in render.pair_lines(pairs):
            print(f"  {line}")
    for g in simulated:
        print(f"\nSIMULATED accuracy vs bits, {g.title}")
        for label, cells in g.series().items():
            print(f"  {label}: " + ", ".join(f"{analysis.bits_of(c)}b {100 * c.metric('accuracy'):.2f}% "
                                             f"({c.metric('accuracy_delta_pp'):+.2f} pp)" for c in cells))
    print(f"\nReport: {(out / 'report.md').resolve()}\n        {(out / 'report.html').resolve()}"
          + (f"\nMLflow run: report ({run_id})" if run_id else ""), flush=True)
    return Report(out, groups, runs, run_id, tagged, pairs)
