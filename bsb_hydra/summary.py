"""Hydra callback: after a multirun, a table of every cell it ran (read from each job's result.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def _quality(r) -> tuple:
    """(what, value, delta) of a cell's task: accuracy % for a labelled classifier, top-1 agreement %
    without labels, else the task's own quality metric (quality_metric tag) and its delta to fp32."""
    m = r.get("metrics") or {}
    if "accuracy" in m:
        return "acc %", f"{100 * m['accuracy']:.2f}", f"{m.get('accuracy_delta_pp', float('nan')):+.2f}"
    if "top1_agreement" in m:
        return "agree %", f"{100 * m['top1_agreement']:.2f}", "-"
    if "quality" in m:
        d = f"{m['quality_delta']:+.4g}" if "quality_delta" in m else "-"
        return r.get("quality_metric", "quality"), f"{m['quality']:.4g}", d
    return "-", "-", "-"


def format_table(results) -> str:
    w = max([42] + [len(r["cell"]) for r in results])  # the cell column fits the longest id
    head = f"{'#':>3}  {'cell':<{w}} {'status':<11} {'size x':>7} {'task':<15} {'quality':<22} {'delta':>8} " \
           f"{'cosine':>8} {'p50 b1 ms':>10} {'speedup':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        m = r.get("metrics") or {}

        def f(key, fmt, scale=1.0):
            return format(m[key] * scale, fmt) if key in m else "-"
        what, value, delta = _quality(r)
        quality = f"{what} {value}" if value != "-" else "-"
        lines.append(f"{r.get('job_num', ''):>3}  {r['cell']:<{w}} {r['status']:<11} {f('size_ratio', '.3f'):>7} "
                     f"{r.get('task', '-'):<15} {quality:<22} {delta:>8} {f('cosine_mean', '.6f'):>8} "
                     + (f"{'simulated':>10} {'-':>8}" if m.get("simulated") else  # fake_quant: never timed
                        f"{f('latency_p50_ms_b1', '.4f'):>10} {f('speedup_b1', '.2f'):>8}"))
        if (r["status"] not in ("ok", "skipped") or r.get("claimed_by")) and r.get("reason"):
            lines.append(f"{'':>5}reason: {r['reason'].splitlines()[0][:150]}")
        if r.get("quality_warning"):  # a constant fp32 reference (bsb_hydra/tasks/classification.py)
            from bsb_hydra.tasks.classification import warning_headline

            lines.append(f"{'':>5}quality says nothing: {warning_headline(r['quality_warning'])[:150]}")
    return "\n".join(lines)


# Failed cells seen by this process (a single run's, or a sweep's count after its table): the exit
# status of python -m bsb_hydra is 1 when any (bsb_hydra/__main__.py).
FAILED: list = []


def sweep_results(sweep: Path) -> list:
    """The cells of a sweep folder (each job's result.json), in job order."""
    results = [json.loads(p.read_text()) for p in Path(sweep).glob("*/result.json")]
    return sorted(results, key=lambda r: int(r.get("job_num") or 0))


def sweep_table(sweep: Path, results: list) -> str:
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "skipped", "unsupported", "failed")}
    return f"\nSweep {sweep}: {len(results)} cells, " + ", ".join(f"{v} {k}" for k, v in counts.items()) + \
        "\n" + format_table(results)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        results = sweep_results(sweep)
        counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "skipped", "unsupported", "failed")}
        print(sweep_table(sweep, results), flush=True)
        FAILED.extend(r["cell"] for r in results if r["status"] in ("failed", "killed"))
        if counts["failed"]:
            print(f"{counts['failed']} cell(s) failed: exit status 1", flush=True)


def main(argv=None) -> int:
    """``python -m bsb_hydra.summary SWEEP_DIR...``: the tables of finished sweeps, in the order
    given (``make run`` prints its real-size sweep's first). Exit 1 when a cell of any failed."""
    import sys

    dirs = list(sys.argv[1:] if argv is None else argv)
    failed = 0
    for d in dirs:
        results = sweep_results(Path(d))
        print(sweep_table(Path(d), results), flush=True)
        failed += sum(r["status"] in ("failed", "killed") for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
