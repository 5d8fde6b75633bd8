"""Write the report: report.md, report.html (self-contained: CSS inline, plots as data URIs) and
rows.csv, from one table model so the three always say the same thing."""
from __future__ import annotations

import base64
import csv
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bsb_hydra.report.analysis import ALPHA, Group, SchemePair, SimulatedGroup, bits_of, series_label
from bsb_hydra.report.runs import Cell, Other, Runs

NA = "–"  # a value that is missing (no baseline, no measurement): shown, never invented


def _f(v: Optional[float], fmt: str) -> str:
    return NA if v is None else format(v, fmt)


def ms(v: Optional[float]) -> str:
    """A latency with 3 significant digits, trailing zeros kept (0.0320, 2.00, 40.3, 1234)."""
    return NA if v is None else (f"{v:.0f}" if v >= 100 else f"{v:#.3g}")


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def speedup_text(c: Cell, b: int, kind: str = "") -> str:
    """kind "" is the paired speedup (measured in the cell's job), "cell_" the one against the fp32 cell."""
    s = c.derived.get(f"{kind}speedup_b{b}")
    if s is None:
        return NA
    if c.quant == "fp32":
        return f"{s:.2f}x"
    return f"{s:.2f}x" + (" (n.s.)" if c.derived.get(f"{kind}significant_b{b}") is False else "")


def vs_best_text(c: Cell, b: int) -> str:
    """Against the fastest fp32 cell of the group at batch b; names its backend when it is another one."""
    v = c.derived.get(f"vs_best_fp32_b{b}")
    if v is None:
        return NA
    other = c.derived.get(f"best_fp32_backend_b{b}")
    return f"{v:.2f}x" + (f" ({other})" if other and other != c.backend else "")


def overhead_text(c: Cell, batch_sizes: List[int]) -> str:
    """The batch sizes whose p50 is within 2x of the backend's empty-call floor ('–': no floor logged)."""
    flags = {b: c.derived.get(f"overhead_bound_b{b}") for b in batch_sizes}
    if all(v is None for v in flags.values()):
        return NA
    bound = [f"b{b}" for b, v in flags.items() if v]
    return ", ".join(bound) if bound else "no"


def delta_text(c: Cell) -> str:
    d = c.derived.get("delta_pp")
    if d is None:
        return NA
    return (f"{d:+.2f}" + (" (n.s.)" if c.derived.get("delta_significant") is False else "")
            + (" (constant fp32)" if c.tag("quality_warning") else ""))


def not_significant(c: Cell) -> bool:
    """The job's McNemar test against its fp32 reference found no difference (runs without it: False)."""
    p = c.metric("accuracy_delta_p_value")
    return p is not None and p >= ALPHA


def pareto_text(c: Cell) -> str:
    return {True: "yes", False: "", None: "n/a"}[c.derived.get("pareto")]


def table(g: Group) -> Tuple[List[str], List[List[str]]]:
    head = ["cell", "threads", "size KiB", "size x fp32"]
    head += [f"p50 b{b} ms" for b in g.batch_sizes]
    if not g.emulated:
        head += [f"vs best fp32 b{b}" for b in g.batch_sizes]
        head += [f"speedup b{b}" for b in g.batch_sizes] + ["vs fp32 cell b1", "vs peak b1", "overhead-bound"]
    if g.classifier:
        head += ["accuracy %", "delta pp", "agreement %"]
    else:  # the task's own metric (against labels, or against fp32's outputs without them)
        head += [g.quality_key, "delta", "cosine to fp32"]
    head += ["peak MB", "runs", "pareto"]
    rows = []
    for c in g.cells:
        size = c.metric("size_bytes")
        shared = c.concurrent_jobs
        label = c.label + (f" [timed beside {shared - 1} other job{'s' if shared > 2 else ''}]" if shared > 1 else "")
        r = [label, c.threads, _f(size / 1024 if size is not None else None, ",.1f"),
             _f(c.derived.get("size_ratio"), ".3f")]
        r += [ms(c.metric(f"latency_p50_ms_b{b}")) for b in g.batch_sizes]
        if not g.emulated:
            r += [vs_best_text(c, b) for b in g.batch_sizes]
            r += [speedup_text(c, b) for b in g.batch_sizes] + [speedup_text(c, 1, "cell_"),
                                                                 _f(c.derived.get("vs_peak_b1"), ".2f"),
                                                                 overhead_text(c, g.batch_sizes)]
        if g.classifier:
            acc = c.metric("accuracy")
            agree = c.metric("top1_agreement")
            r += [_f(100 * acc if acc is not None else None, ".2f") if c.labelled else "no labels",
                  delta_text(c) if c.labelled else "no labels",
                  _f(100 * agree if agree is not None else None, ".2f")]
        else:
            d = c.derived.get("quality_delta")
            r += [_f(c.metric("quality"), ".4g"), NA if d is None else f"{d:+.4g}", _f(c.metric("cosine_mean"), ".6f")]
        r += [_f(c.metric("peak_rss_mb"), ".0f"), str(c.duplicates), pareto_text(c)]
        rows.append(r)
    return head, rows


def machine_line(g: Group) -> str:
    c = g.cells[0]
    isa = c.tag("isa") or "unknown"
    threads = sorted({x.threads for x in g.cells})
    return (f"{g.arch}, {g.cpu}, ISA {isa}, {c.tag('os')}, {'emulated (QEMU)' if g.emulated else 'native'}; "
            f"threads {', '.join(threads)}; runs from {when(min(x.start_time for x in g.cells))} to "
            f"{when(max(x.start_time for x in g.cells))}" + limit_text(g))


def limit_text(g: Group) -> str:
    """The machine's measured limit, from the newest cell that carries it (python -m bsb_hydra.bench.peak)."""
    with_peak = [x for x in g.cells if x.metric("int8_peak_ratio") is not None]
    if not with_peak or g.emulated:
        return ""
    c = max(with_peak, key=lambda x: x.start_time)
    floors = {}
    for x in g.cells:
        if x.metric("call_floor_ms") is not None:
            floors.setdefault(x.backend, x.metric("call_floor_ms"))
    floor = ", ".join(f"{b} {ms(v)} ms" for b, v in sorted(floors.items()))
    bw = c.metric("mem_bandwidth_gbs")
    return (f". Limit measured here ({c.threads} thread(s)): fp32 GEMM {c.metric('gflops_fp32'):.1f} GFLOP/s, int8 GEMM "
            f"{c.metric('gops_int8'):.1f} GOP/s, int8_peak_ratio {c.metric('int8_peak_ratio'):.2f}"
            + (f", memory {bw:.1f} GB/s" if bw is not None else "") + (f"; empty-call floor {floor}" if floor else ""))


def model_line(g: Group) -> str:
    """What the group's model and data are, from the newest cell's tags and metrics."""
    c = max(g.cells, key=lambda x: x.start_time)
    if not c.tag("model_source"):
        return ""
    params, macs = c.metric("model_params"), c.metric("model_macs")
    cost = ", ".join(x for x in (f"{params / 1e6:.2f} M parameters" if params else "",
                                 f"{macs / 1e9:.3g} GMACs per sample" if macs else "") if x)
    labels = ("" if g.labelled else " NO LABELS: agreement with fp32 only, no accuracy." if g.classifier
              else f" NO LABELS: scored against fp32's outputs ({g.quality_key}).")
    if not g.classifier:
        labels += f" Task {g.task}: {c.tag('task_reads')}" + (f" (inferred: {c.tag('task_inferred')})"
                                                             if c.tag("task_inferred") else "") + "."
    warned = [x for x in g.cells if x.tag("quality_warning")]
    if warned:  # bsb_hydra/tasks/classification.py: the fp32 reference is a constant in effect
        from bsb_hydra.tasks.classification import warning_headline

        what = "; ".join(sorted({warning_headline(x.tag("quality_warning")) for x in warned}))
        labels += (f" QUALITY SAYS NOTHING in {len(warned)} of {len(g.cells)} cells: {what}. Their accuracy deltas "
                   "and agreement are those of a constant; size and latency hold.")
    return (f"Model: {c.tag('model_source')} {c.tag('model_ref')}; {cost}; input {c.tag('input_shape')}. "
            f"Data: {c.tag('data_source')}; scored on {c.tag('test_split')}.{labels}")


def pick_lines(g: Group) -> List[str]:
    out = []
    for p in g.picks:
        if p.cell is None:
            out.append(f"{p.name}: none ({p.note})")
            continue
        c = p.cell
        acc = c.metric("accuracy")
        q = c.metric("quality")
        bits = [f"{c.metric('size_bytes') / 1024:,.1f} KiB" if c.metric("size_bytes") is not None else None,
                f"p50 b1 {ms(c.metric('latency_p50_ms_b1'))} ms" if not g.emulated and
                c.metric("latency_p50_ms_b1") is not None else None]
        if g.classifier:
            bits += [f"accuracy {100 * acc:.2f}%" if acc is not None else None,
                     f"{c.derived['delta_pp']:+.2f} pp vs fp32" if c.derived.get("delta_pp") is not None else None]
        else:
            bits += [f"{g.quality_key} {q:.4g}" if q is not None else None,
                     f"{c.derived['quality_delta']:+.4g} vs fp32" if c.derived.get("quality_delta") is not None
                     else None]
        warned = "; its accuracy says nothing (constant fp32: see Model)" if c.tag("quality_warning") else ""
        out.append(f"{p.name}: {c.label} ({', '.join(b for b in bits if b)})" + (f"; {p.note}" if p.note else "")
                   + warned)
    return out


NOTES = [
    "size x fp32, speedup and delta pp compare a cell with the fp32 cell of the same backend, thread count and "
    "fp32 weights on the same machine; '–' means there is no such cell (nothing is computed against another).",
    "speedup bN = fp32 p50 / cell p50 at batch N, paired: the job measured the same backend's fp32 artifact "
    "seconds before the cell, so drift between jobs cancels out. '(n.s.)': the two p50 95% bootstrap "
    "intervals overlap, so the difference is not significant.",
    "vs fp32 cell b1: the same ratio against the fp32 cell's own run (another job). It carries the drift "
    "between jobs, which the per-run intervals do not capture; when it disagrees with the paired figure, "
    "trust the paired one. Picks and the frontier compare p50s of different jobs too.",
    "delta pp: accuracy against the fp32 cell. '(n.s.)': the exact McNemar test on the test samples where the "
    "cell and its fp32 reference disagree about being right (same samples, same job) gives p >= 0.05: the "
    "difference may be chance. On 10,000 samples a delta of a few tenths of a point often is.",
    "agreement: top-1 agreement with the same backend's fp32 artifact, measured in the cell's own job.",
    "vs best fp32 bN: the fastest fp32 cell of the group at batch N, over any backend (named when it is not the "
    "cell's own), over this cell's p50: how much faster than the best fp32 model one could ship on this machine. "
    "A speedup against a slow fp32 runtime flatters; this one does not.",
    "vs peak b1: the paired speedup at batch 1 / the machine's int8_peak_ratio (best int8 GEMM GOP/s over best "
    "fp32 GEMM GFLOP/s across the runtimes, python -m bsb_hydra.bench.peak): 1.0 means the cell gains what "
    "int8 arithmetic can gain on this CPU. int8 schemes only.",
    "overhead-bound: the batch sizes whose p50 is within 2x of the backend's empty-call floor (a trivial model's "
    "b1 latency): there the speedup says more about the call than about quantization.",
    "pareto: on the frontier over (size, p50 at batch 1, accuracy) within the group; 'n/a': a metric is missing. "
    "Emulated groups: over (size, accuracy) only, and their timings are not used. A group of another task "
    "(segmentation, detection, embedding, image_to_image, regression, raw) uses its own quality metric instead "
    "of accuracy (mIoU, mAP, cosine, PSNR, MAE; against labels, or against fp32's outputs without them), in "
    "its sense (lower MAE is better), and 'delta' is that metric minus the fp32 cell's.",
    "runs: ok runs of this exact config on this machine in the store; the newest is shown.",
    "'timed beside N other jobs': other bsb_hydra jobs ran on the machine while this cell was timed (a parallel "
    "launcher, or two sweeps at once; tag concurrent_jobs). They shared cores and caches: its latencies and "
    "speedups are distorted. Re-run such cells alone (force=true) before trusting their timings.",
]


PAIRS_NOTE = ("Each QAT or auto cell against the static PTQ cell of the same model, backend, threads, fp32 weights "
              "and weight granularity, on the same test samples: difference = challenger - static, in pp, with a "
              "95% Wald interval for paired proportions; p: exact McNemar test on the samples only one of the two "
              "gets right (gained: the challenger right and static wrong; lost: the reverse). Where the interval "
              "and the test disagree (few discordant samples), the test decides.")


def pair_table(pairs: Sequence[SchemePair]) -> Tuple[List[str], List[List[str]]]:
    head = ["group", "cell", "against", "accuracy %", "static accuracy %", "difference pp", "95% CI pp", "p",
            "gained / lost", "verdict"]
    rows = []
    for p in pairs:
        acc, bacc, s = p.cell.metric("accuracy"), p.base.metric("accuracy"), p.paired
        rows.append([p.group.title, p.cell.label, p.base.label, _f(100 * acc if acc is not None else None, ".2f"),
                     _f(100 * bacc if bacc is not None else None, ".2f"),
                     _f(s["delta_pp"], "+.2f") if s else NA,
                     f"{s['ci_low_pp']:+.2f} to {s['ci_high_pp']:+.2f}" if s else NA,
                     f"{s['p_value']:.3g}" if s else NA, f"{s['gained']} / {s['lost']}" if s else NA, p.verdict])
    return head, rows


def paired_figures(s: Dict[str, float]) -> str:
    """One paired accuracy test (stats.paired_accuracy) in a line."""
    return (f"{s['delta_pp']:+.2f} pp (95% CI {s['ci_low_pp']:+.2f} to {s['ci_high_pp']:+.2f}), "
            f"{s['gained']} gained / {s['lost']} lost, McNemar p {s['p_value']:.3g}")


def pair_lines(pairs: Sequence[SchemePair]) -> List[str]:
    out = []
    for p in pairs:
        fig = paired_figures(p.paired) + ": " if p.paired else ""
        out.append(f"{p.group.title}: {p.cell.label} vs {p.base.label}: {fig}{p.verdict}")
    return out


SIMULATED_NOTE = ("SIMULATED (quant=fake_quant): weights (and, where the row says so, activations) rounded to N bits "
                  "and evaluated in float. No runtime ran these models: they are not deployable, nothing was "
                  "timed, the size is the theoretical packed size (bits x quantized weights + fp32 scales + every "
                  "other parameter at 32 bits, tag size_kind=theoretical), and none of them is on a frontier or a "
                  "pick above. delta pp is against the fp32 model the same job evaluated; '(n.s.)' as in the "
                  "tables above.")


def simulated_table(g: SimulatedGroup) -> Tuple[List[str], List[List[str]]]:
    head = ["series", "bits", "accuracy %", "delta pp", "agreement %", "theoretical size x fp32", "runs"]
    rows = []
    for c in g.cells:
        acc, agree = c.metric("accuracy"), c.metric("top1_agreement")
        rows.append([series_label(c), str(bits_of(c)), _f(100 * acc if acc is not None else None, ".2f"),
                     _f(c.metric("accuracy_delta_pp"), "+.2f") + (" (n.s.)" if not_significant(c) else ""),
                     _f(100 * agree if agree is not None else None, ".2f"), _f(c.metric("size_ratio"), ".3f"),
                     str(c.duplicates)])
    return head, rows


WHY_SLOW_NOTE = ("Quantized cells slower than the fp32 artifact of their own backend at batch 1 (paired speedup "
                 "below 1), with what the runtime's profiler saw in one more process after the timing "
                 "(benchmark.profile=slow; the run's profile.json has every op): the top ops by time, which "
                 "compute ops ran on float inputs, the quantize/dequantize nodes left unfused, and on TFLite the "
                 "ops XNNPACK did not take (TFLite's Python API times no single op). With "
                 "benchmark.profile=below_peak, also int8 cells faster than their fp32 but short of "
                 "benchmark.peak_target x the machine's int8_peak_ratio (their speedup says 'of peak').")


def why_slow_table(groups: Sequence[Group]) -> Tuple[List[str], List[List[str]]]:
    rows = []
    for g in groups:
        if g.emulated:
            continue
        for c in g.cells:
            s = c.derived.get("speedup_b1")
            if c.quant != "fp32" and s is not None and s < 1.0:
                rows.append([f"{g.model} {c.label}", f"{s:.2f}x", c.tag("why_slow") or
                             "not profiled (a run from before profiling, or benchmark.profile=never)"])
            elif c.tag("why_short_of_peak"):  # benchmark.profile=below_peak
                peak = c.metric("speedup_vs_peak_b1")
                rows.append([f"{g.model} {c.label}", f"{s:.2f}x" + (f" ({peak:.2f} of peak)" if peak else "")
                             if s is not None else "–", c.tag("why_short_of_peak")])
    return ["cell", "speedup b1", "why (the runtime's profiler)"], rows


def others_table(others: Sequence[Other]) -> Tuple[List[str], List[List[str]]]:
    head = ["cell", "status", "arch", "started", "reason"]
    rows = [[o.cell, o.status, o.tags.get("arch", ""), when(o.start_time),
             (o.reason.strip().splitlines() or [""])[0][:240]] for o in others]
    return head, rows


# ------------------------------------------------------------------------------------ markdown
def _md_table(head: List[str], rows: List[List[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(meta: Dict[str, str], groups: List[Group], runs: Runs, plots: Dict[str, List[Tuple[str, str]]],
             simulated: Sequence[SimulatedGroup] = (), pairs: Sequence[SchemePair] = ()) -> str:
    out = [f"# Quantization report: experiment `{meta['experiment']}`", "",
           f"Generated {meta['generated']} from `{meta['store']}`"
           f"{' (arch ' + meta['arch'] + ')' if meta['arch'] else ''}; accuracy budget {meta['budget_pp']} pp. "
           f"{len(runs.cells)} cells in {len(groups)} groups; {len(runs.others)} runs that are not measured cells "
           f"(listed at the end); {len(runs.superseded)} older duplicate runs superseded"
           + (f"; {len(runs.simulated)} simulated cells (own section)" if runs.simulated else "") + ".", ""]
    machines = sorted({(g.arch, g.cpu, g.cells[0].tag("isa"), g.emulated) for g in groups})
    out += ["Machines:", ""] + [f"- {a}, {c}, ISA {i or 'unknown'}, {'EMULATED' if e else 'native'}"
                                for a, c, i, e in machines] + [""]
    for n, g in enumerate(groups, 1):
        out += [f"## {g.title}", "", machine_line(g), ""] + ([model_line(g), ""] if model_line(g) else [])
        out += [_md_table(*table(g)), ""]
        out += [f"- {line}" for line in pick_lines(g)] + [""]
        for caption, name in plots.get(f"g{n}_{g.slug}", []):
            out += [f"![{caption}]({name})", ""]
    for key, items in plots.items():
        if key.startswith("archs_"):
            out += [f"## {items[0][0]}", ""] + [f"![{c}]({name})" for c, name in items] + [""]
    if simulated:
        out += ["## Simulated low-bit accuracy (not deployable)", "", SIMULATED_NOTE, ""]
        for g in simulated:
            out += [f"### {g.title}", "", _md_table(*simulated_table(g)), ""]
            out += [f"![{caption}]({name})" for caption, name in plots.get(g.slug, [])] + [""]
    if pairs:
        out += ["## QAT and auto against static PTQ (paired, same test samples)", "", PAIRS_NOTE, "",
                _md_table(*pair_table(pairs)), ""]
    slow = why_slow_table(groups)
    if slow[1]:
        out += ["## Why slow: quantized cells slower than their fp32 (or short of the machine's limit)", "", WHY_SLOW_NOTE, "", _md_table(*slow), ""]
    out += ["## Runs that are not measured cells", ""]
    out += [_md_table(*others_table(runs.others)) if runs.others else "None.", ""]
    out += ["## How to read the tables", ""] + [f"- {n}" for n in NOTES] + [""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- html
CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}tr.pareto{background:#e8f5e9}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}figure{margin:0 0 1em 0}figcaption{font-size:12px;color:#555}
.note{font-size:12px;color:#555}"""


def _html_table(head, rows, pareto_col: Optional[int] = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = []
    for r in rows:
        cls = ' class="pareto"' if pareto_col is not None and r[pareto_col] == "yes" else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>"


def _img(out: Path, name: str, caption: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_page(meta: Dict[str, str], groups: List[Group], runs: Runs, plots, out: Path,
              simulated: Sequence[SimulatedGroup] = (), pairs: Sequence[SchemePair] = ()) -> str:
    e = html.escape
    body = [f"<h1>Quantization report: experiment {e(meta['experiment'])}</h1>",
            f"<p>Generated {e(meta['generated'])} from <code>{e(meta['store'])}</code>"
            f"{' (arch ' + e(meta['arch']) + ')' if meta['arch'] else ''}; accuracy budget {e(meta['budget_pp'])} pp. "
            f"{len(runs.cells)} cells in {len(groups)} groups; {len(runs.others)} runs that are not measured cells; "
            f"{len(runs.superseded)} older duplicate runs superseded.</p>"]
    for n, g in enumerate(groups, 1):
        head, rows = table(g)
        body += [f"<h2>{e(g.title)}</h2>", f"<p class='note'>{e(machine_line(g))}</p>",
                 f"<p class='note'>{e(model_line(g))}</p>" if model_line(g) else "",
                 _html_table(head, rows, pareto_col=len(head) - 1),
                 "<ul>" + "".join(f"<li>{e(x)}</li>" for x in pick_lines(g)) + "</ul>"]
        body += [_img(out, name, cap) for cap, name in plots.get(f"g{n}_{g.slug}", [])]
    for key, items in plots.items():
        if key.startswith("archs_"):
            body += [f"<h2>{e(items[0][0])}</h2>"] + [_img(out, name, cap) for cap, name in items]
    if simulated:
        body += ["<h2>Simulated low-bit accuracy (not deployable)</h2>", f"<p class='note'>{e(SIMULATED_NOTE)}</p>"]
        for g in simulated:
            body += [f"<h3>{e(g.title)}</h3>", _html_table(*simulated_table(g))]
            body += [_img(out, name, cap) for cap, name in plots.get(g.slug, [])]
    if pairs:
        body += ["<h2>QAT and auto against static PTQ (paired, same test samples)</h2>",
                 f"<p class='note'>{e(PAIRS_NOTE)}</p>", _html_table(*pair_table(pairs))]
    slow = why_slow_table(groups)
    if slow[1]:
        body += ["<h2>Why slow: quantized cells slower than their fp32 (or short of the machine's limit)</h2>", f"<p class='note'>{e(WHY_SLOW_NOTE)}</p>",
                 _html_table(*slow)]
    body.append("<h2>Runs that are not measured cells</h2>")
    body.append(_html_table(*others_table(runs.others)) if runs.others else "<p>None.</p>")
    body += ["<h2>How to read the tables</h2>", "<ul>" + "".join(f"<li>{e(n)}</li>" for n in NOTES) + "</ul>"]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>bsb-hydra report: "
            f"{e(meta['experiment'])}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>")


# ----------------------------------------------------------------------------------------- csv
def write_csv(groups: List[Group], path: Path) -> None:
    batch_sizes = sorted({b for g in groups for b in g.batch_sizes})
    cols = ["model", "data", "arch", "cpu", "isa", "emulated", "quant", "backend", "variant", "threads", "run_id",
            "started", "runs", "baseline_run_id", "size_bytes", "size_ratio", "accuracy", "accuracy_ci_low",
            "accuracy_ci_high", "delta_pp", "paired_delta_pp", "delta_ci_low_pp", "delta_ci_high_pp",
            "delta_p_value", "delta_significant", "top1_agreement", "peak_rss_mb", "concurrent_jobs",
            "pareto", "input_shape", "model_source", "model_ref", "model_params", "model_macs", "labelled",
            "task", "quality_metric", "quality", "quality_delta", "cosine_mean", "sqnr_db", "quality_warning"]
    for b in batch_sizes:
        cols += [f"p50_ms_b{b}", f"p50_ci_low_ms_b{b}", f"p50_ci_high_ms_b{b}", f"speedup_b{b}",
                 f"speedup_significant_b{b}", f"cell_speedup_b{b}", f"cell_speedup_significant_b{b}",
                 f"vs_best_fp32_b{b}", f"best_fp32_backend_b{b}", f"speedup_vs_peak_b{b}", f"overhead_bound_b{b}",
                 f"achieved_gflops_b{b}"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for g in groups:
            for c in g.cells:
                row = {"input_shape": c.tag("input_shape"), "model_source": c.tag("model_source"),
                       "model_ref": c.tag("model_ref"), "model_params": c.metric("model_params"),
                       "model_macs": c.metric("model_macs"), "labelled": str(c.labelled).lower(),
                       "model": g.model, "data": g.data, "arch": g.arch, "cpu": g.cpu, "isa": c.tag("isa"),
                       "emulated": str(g.emulated).lower(), "quant": c.quant, "backend": c.backend,
                       "variant": c.variant, "threads": c.threads, "run_id": c.run_id, "started": when(c.start_time),
                       "runs": c.duplicates, "baseline_run_id": c.derived.get("baseline_run_id") or "",
                       "size_bytes": c.metric("size_bytes"), "size_ratio": c.derived.get("size_ratio"),
                       "accuracy": c.metric("accuracy"), "accuracy_ci_low": c.metric("accuracy_ci_low"),
                       "accuracy_ci_high": c.metric("accuracy_ci_high"), "delta_pp": c.derived.get("delta_pp"),
                       "paired_delta_pp": c.metric("accuracy_delta_pp"),
                       "delta_ci_low_pp": c.metric("accuracy_delta_ci_low_pp"),
                       "delta_ci_high_pp": c.metric("accuracy_delta_ci_high_pp"),
                       "delta_p_value": c.metric("accuracy_delta_p_value"),
                       "delta_significant": c.derived.get("delta_significant"),
                       "top1_agreement": c.metric("top1_agreement"),
                       "peak_rss_mb": c.metric("peak_rss_mb"), "concurrent_jobs": c.concurrent_jobs,
                       "pareto": pareto_text(c) or "no", "task": g.task, "quality_metric": c.quality_key,
                       "quality": c.metric("quality"), "quality_delta": c.derived.get("quality_delta"),
                       "cosine_mean": c.metric("cosine_mean"), "sqnr_db": c.metric("sqnr_db"),
                       "quality_warning": c.tag("quality_warning")}
                for b in batch_sizes:
                    row.update({f"p50_ms_b{b}": c.metric(f"latency_p50_ms_b{b}"),
                                f"p50_ci_low_ms_b{b}": c.metric(f"latency_p50_ci_low_ms_b{b}"),
                                f"p50_ci_high_ms_b{b}": c.metric(f"latency_p50_ci_high_ms_b{b}"),
                                f"speedup_b{b}": c.derived.get(f"speedup_b{b}"),
                                f"speedup_significant_b{b}": c.derived.get(f"significant_b{b}"),
                                f"cell_speedup_b{b}": c.derived.get(f"cell_speedup_b{b}"),
                                f"cell_speedup_significant_b{b}": c.derived.get(f"cell_significant_b{b}"),
                                f"vs_best_fp32_b{b}": c.derived.get(f"vs_best_fp32_b{b}"),
                                f"best_fp32_backend_b{b}": c.derived.get(f"best_fp32_backend_b{b}"),
                                f"speedup_vs_peak_b{b}": c.derived.get(f"vs_peak_b{b}"),
                                f"overhead_bound_b{b}": c.derived.get(f"overhead_bound_b{b}"),
                                f"achieved_gflops_b{b}": c.metric(f"achieved_gflops_b{b}")})
                w.writerow({k: ("" if v is None else v) for k, v in row.items()})


def write_simulated_csv(groups: Sequence[SimulatedGroup], path: Path) -> None:
    cols = ["model", "data", "arch", "cpu", "series", "bits", "granularity", "activations", "qat", "run_id", "started",
            "runs", "accuracy", "fp32_accuracy", "delta_pp", "top1_agreement", "theoretical_size_bytes",
            "fp32_theoretical_size_bytes", "size_ratio"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for g in groups:
            for c in g.cells:
                p = c.params
                row = {"model": g.key[0], "data": g.key[1], "arch": g.key[2], "cpu": g.key[3],
                       "series": series_label(c), "bits": bits_of(c), "granularity": p.get("quant.granularity"),
                       "activations": p.get("quant.activations", "").lower(), "qat": p.get("quant.qat", "").lower(),
                       "run_id": c.run_id, "started": when(c.start_time), "runs": c.duplicates,
                       "accuracy": c.metric("accuracy"), "fp32_accuracy": c.metric("fp32_accuracy"),
                       "delta_pp": c.metric("accuracy_delta_pp"), "top1_agreement": c.metric("top1_agreement"),
                       "theoretical_size_bytes": c.metric("size_bytes"),
                       "fp32_theoretical_size_bytes": c.metric("fp32_size_bytes"), "size_ratio": c.metric("size_ratio")}
                w.writerow({k: ("" if v is None else v) for k, v in row.items()})


def write_pairs_csv(pairs: Sequence[SchemePair], path: Path) -> None:
    cols = ["model", "data", "arch", "cpu", "backend", "threads", "quant", "variant", "run_id", "static_variant",
            "static_run_id", "accuracy", "static_accuracy", "difference_pp", "ci_low_pp", "ci_high_pp", "p_value",
            "gained", "lost", "n", "verdict"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for p in pairs:
            g, c, b, s = p.group, p.cell, p.base, p.paired or {}
            row = {"model": g.model, "data": g.data, "arch": g.arch, "cpu": g.cpu, "backend": c.backend,
                   "threads": c.threads, "quant": c.quant, "variant": c.variant, "run_id": c.run_id,
                   "static_variant": b.variant, "static_run_id": b.run_id, "accuracy": c.metric("accuracy"),
                   "static_accuracy": b.metric("accuracy"), "difference_pp": s.get("delta_pp"),
                   "ci_low_pp": s.get("ci_low_pp"), "ci_high_pp": s.get("ci_high_pp"), "p_value": s.get("p_value"),
                   "gained": s.get("gained"), "lost": s.get("lost"), "n": s.get("n"), "verdict": p.verdict}
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
