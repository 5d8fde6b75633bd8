"""Hydra callback: after a multirun, a table of every cell it ran (read from each job's result.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def format_table(results) -> str:
    head = f"{'#':>3}  {'cell':<42} {'status':<11} {'size x':>7} {'acc %':>7} {'d pp':>7} {'agree %':>8} " \
           f"{'p50 b1 ms':>10} {'speedup':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        m = r.get("metrics") or {}
        def f(key, fmt, scale=1.0):
            return format(m[key] * scale, fmt) if key in m else "-"
        lines.append(f"{r.get('job_num', ''):>3}  {r['cell']:<42} {r['status']:<11} {f('size_ratio', '.3f'):>7} "
                     f"{f('accuracy', '.2f', 100):>7} {f('accuracy_delta_pp', '+.2f'):>7} "
                     f"{f('top1_agreement', '.2f', 100):>8} "
                     + (f"{'simulated':>10} {'-':>8}" if m.get("simulated") else  # fake_quant: never timed
                        f"{f('latency_p50_ms_b1', '.4f'):>10} {f('speedup_b1', '.2f'):>8}"))
        if r["status"] not in ("ok", "skipped") and r.get("reason"):
            lines.append(f"{'':>5}reason: {r['reason'].splitlines()[0][:150]}")
    return "\n".join(lines)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        results = []
        for p in sweep.glob("*/result.json"):
            results.append(json.loads(p.read_text()))
        results.sort(key=lambda r: int(r.get("job_num") or 0))
        counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "skipped", "unsupported", "failed")}
        print(f"\nSweep {sweep}: {len(results)} cells, " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        print(format_table(results), flush=True)
