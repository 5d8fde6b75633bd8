"""From the cells' runs to the answer: groups, fp32 baselines, ratios, significance, the Pareto
frontier and the picks.

Rules (docs/methodology.md, "The report"):
- A group is (model, data, arch, cpu, emulated, input shape, model ref). Emulated rows never share a group, a frontier or a
  plot with native ones, and their latencies are not used (timings under emulation mean nothing).
- A cell's baseline is the fp32 cell of the same group, backend, thread count, fp32 weights
  (tag ``fp32_key``) and fp32 form (FP32_FORM_KEYS); the newest such cell if there are several. No baseline: the ratios are
  missing (None), never computed against something else.
- The frontier of a group is over (size, p50 latency at batch 1, accuracy); over (size, accuracy)
  in an emulated group. A cell missing one of them is "n/a", never on the frontier.
- A speedup whose two p50 95% intervals (seeded bootstrap, per run) overlap is not significant.
- An accuracy delta is not significant when the job's exact McNemar test against its fp32
  reference (same test samples) gives p >= 0.05. QAT and auto cells are also paired with the static
  PTQ cell they improve on (``scheme_pairs``), per sample, on the same test samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from bsb_hydra.report import pareto
from bsb_hydra.report.runs import Cell

ALPHA = 0.05  # the significance level of the report's accuracy tests
SCHEME_ORDER = ["fp32", "fp16", "dynamic", "static", "qat", "auto", "int4_weight_only", "fake_quant"]


@dataclass
class Pick:
    name: str
    cell: Optional[Cell]
    note: str = ""


@dataclass
class Group:
    key: Tuple[str, str, str, str, bool]
    cells: List[Cell]
    batch_sizes: List[int]
    objectives: List[str]
    picks: List[Pick] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.key[0]

    @property
    def data(self) -> str:
        return self.key[1]

    @property
    def arch(self) -> str:
        return self.key[2]

    @property
    def cpu(self) -> str:
        return self.key[3]

    @property
    def emulated(self) -> bool:
        return self.key[4]

    @property
    def input_shape(self) -> str:
        return self.key[5] if len(self.key) > 5 else ""

    @property
    def labelled(self) -> bool:
        return any(c.labelled for c in self.cells)

    @property
    def task(self) -> str:
        return self.key[7] if len(self.key) > 7 else "classification"

    @property
    def classifier(self) -> bool:
        return self.task == "classification"

    @property
    def quality_key(self) -> str:
        """The group's quality metric (every cell of a group has the same task and labels)."""
        return max(self.cells, key=lambda c: c.start_time).quality_key

    @property
    def higher_is_better(self) -> bool:
        return self.cells[0].higher_is_better

    @property
    def sized(self) -> str:
        """The input shape, for models whose input is not simply the data's (real-size and users' models)."""
        return self.input_shape if self.cells[0].tag("model_source") not in ("", "builtin") else ""

    @property
    def title(self) -> str:
        at = f" at {self.sized}" if self.sized else ""
        task = "" if self.classifier else f" ({self.task})"
        return (f"{self.model} on {self.data}{at}{task}: {self.arch}, {self.cpu}, "
                f"{'EMULATED' if self.emulated else 'native'}")

    @property
    def slug(self) -> str:
        at = f"_{self.sized}" if self.sized else ""
        return f"{self.model}_{self.data}{at}_{self.arch}_{'emulated' if self.emulated else 'native'}"


def _order(c: Cell):
    q = SCHEME_ORDER.index(c.quant) if c.quant in SCHEME_ORDER else len(SCHEME_ORDER)
    return (q, c.quant, c.backend, c.threads, c.variant)


def intervals_overlap(a: Tuple[Optional[float], Optional[float]], b: Tuple[Optional[float], Optional[float]]) -> bool:
    if None in a or None in b:
        return True  # no interval: nothing can be claimed
    return a[0] <= b[1] and b[0] <= a[1]


# Backend keys that change the fp32 artifact itself (its form, layout or graph): a quantized cell's
# baseline is an fp32 cell built the same way, as the job's own paired reference was (an aoti or an
# NCHW PyTorch fp32 cell is not the reference of a channels_last TorchScript int8 cell). Keys at a
# value older runs did not log (tracking.LATER_INERT) are absent on both sides alike.
FP32_FORM_KEYS = ("backend.export", "backend.channels_last", "backend.opset", "backend.graph_optimization",
                  "backend.xnnpack", "backend.xnnpack_latest_features", "backend.converter")


def baseline_of(cell: Cell, group: List[Cell]) -> Optional[Cell]:
    if cell.quant == "fp32":
        return cell
    form = [cell.params.get(k) for k in FP32_FORM_KEYS]
    same = [c for c in group if c.quant == "fp32" and c.backend == cell.backend and c.threads == cell.threads
            and c.tag("fp32_key") == cell.tag("fp32_key") and [c.params.get(k) for k in FP32_FORM_KEYS] == form]
    return max(same, key=lambda c: c.start_time) if same else None


def _ci(c: Cell, prefix: str, b: int) -> Tuple[Optional[float], Optional[float]]:
    return c.metric(f"{prefix}_p50_ci_low_ms_b{b}"), c.metric(f"{prefix}_p50_ci_high_ms_b{b}")


def best_fp32(group: List[Cell], batch_sizes: List[int]) -> Dict[Tuple[str, int], Tuple[float, Cell]]:
    """Per (threads, batch): the fastest fp32 cell of the group across every backend (p50, cell)."""
    best: Dict[Tuple[str, int], Tuple[float, Cell]] = {}
    for c in group:
        for b in batch_sizes:
            p50 = c.metric(f"latency_p50_ms_b{b}")
            if c.quant == "fp32" and p50 is not None and ((c.threads, b) not in best or p50 < best[(c.threads, b)][0]):
                best[(c.threads, b)] = (p50, c)
    return best


def limit_ratios(cell: Cell, best: Dict[Tuple[str, int], Tuple[float, Cell]], batch_sizes: List[int]
                 ) -> Dict[str, object]:
    """Per batch size: ``vs_best_fp32_bN`` (the fastest fp32 cell of the group, any backend, same
    threads, over this cell's p50: how much faster than the best fp32 one could ship here, the
    figure the report leads with; the backend it came from in ``best_fp32_backend_bN``), and the
    job's own ``speedup_vs_peak_bN`` and ``overhead_bound_bN`` (bsb_hydra/scoring.py: limit_metrics)."""
    d: Dict[str, object] = {}
    for b in batch_sizes:
        p50 = cell.metric(f"latency_p50_ms_b{b}")
        top = best.get((cell.threads, b))
        d[f"vs_best_fp32_b{b}"] = top[0] / p50 if top and p50 else None
        d[f"best_fp32_backend_b{b}"] = top[1].backend if top else None
        d[f"vs_peak_b{b}"] = cell.metric(f"speedup_vs_peak_b{b}")
        ob = cell.metric(f"overhead_bound_b{b}")
        d[f"overhead_bound_b{b}"] = None if ob is None else bool(ob)
    return d


def compare(cell: Cell, base: Optional[Cell], batch_sizes: List[int], latency_ok: bool) -> Dict[str, object]:
    """Size ratio and accuracy delta against the fp32 cell; two speedups per batch size:
    ``speedup_bN``, paired (the fp32 reference the job measured seconds before the cell, logged as
    the cell's own ``speedup_bN``; the one to trust, since it excludes drift between jobs), and
    ``cell_speedup_bN``, against the fp32 cell's own run. Each with a significance flag: False when
    the two p50 95% intervals overlap, None when there is nothing to test."""
    d: Dict[str, object] = {"baseline_run_id": base.run_id if base else None}
    size, acc = cell.metric("size_bytes"), cell.metric("accuracy")
    bsize = base.metric("size_bytes") if base else None
    bacc = base.metric("accuracy") if base else None
    d["size_ratio"] = size / bsize if size is not None and bsize else None
    d["delta_pp"] = 100.0 * (acc - bacc) if acc is not None and bacc is not None else None
    p = cell.metric("accuracy_delta_p_value")  # the job's McNemar test; runs older than it: None
    d["delta_significant"] = None if cell.quant == "fp32" or p is None or d["delta_pp"] is None else p < ALPHA
    q, bq = cell.metric("quality"), base.metric("quality") if base else None
    d["quality_delta"] = q - bq if q is not None and bq is not None else None  # any task, its own metric
    for b in batch_sizes:
        p50 = cell.metric(f"latency_p50_ms_b{b}")
        paired = cell.metric(f"speedup_b{b}") if latency_ok else None
        d[f"speedup_b{b}"] = paired
        d[f"significant_b{b}"] = None
        if paired is not None and cell.quant != "fp32" and None not in _ci(cell, "fp32_latency", b):
            d[f"significant_b{b}"] = not intervals_overlap(_ci(cell, "latency", b), _ci(cell, "fp32_latency", b))
        bp50 = base.metric(f"latency_p50_ms_b{b}") if base else None
        d[f"cell_speedup_b{b}"] = bp50 / p50 if latency_ok and p50 and bp50 else None
        d[f"cell_significant_b{b}"] = None
        if d[f"cell_speedup_b{b}"] is not None and base is not cell:
            d[f"cell_significant_b{b}"] = not intervals_overlap(_ci(cell, "latency", b), _ci(base, "latency", b))
    return d


def _faster_alike(pick: Cell, cands: List[Cell]) -> List[Cell]:
    """Candidates whose batch-1 p50 interval overlaps the pick's: it is not significantly faster."""
    ci = _ci(pick, "latency", 1)
    if None in ci:
        return []
    return [c for c in cands if c is not pick and None not in _ci(c, "latency", 1)
            and intervals_overlap(ci, _ci(c, "latency", 1))]


def _pick(name: str, cands: List[Cell], key, empty: str) -> Pick:
    return Pick(name, min(cands, key=key)) if cands else Pick(name, None, empty)


def picks(group: Group, budget_pp: float) -> List[Pick]:
    if not group.classifier:
        return task_picks(group)
    cells = group.cells
    acc = lambda c: c.metric("accuracy")  # noqa: E731
    lat = lambda c: c.metric("latency_p50_ms_b1")  # noqa: E731
    size = lambda c: c.metric("size_bytes")  # noqa: E731
    out = [_pick("smallest", [c for c in cells if size(c) is not None], lambda c: (size(c), -(acc(c) or 0)),
                 "no cell has a size"),
           _pick("most accurate", [c for c in cells if acc(c) is not None],
                 lambda c: (-acc(c), lat(c) or float("inf"), size(c) or 0), "no cell has an accuracy")]
    if group.emulated:
        out.append(Pick("fastest", None, "not reported: timings under emulation mean nothing"))
        out.append(Pick(f"fastest within {budget_pp:g} pp", None, "not reported: timings under emulation"))
        return out
    timed = [c for c in cells if lat(c) is not None]
    # 1e-9: 100 * (0.89 - 0.90) is -1.0000000000000009
    within = [c for c in timed if c.derived.get("delta_pp") is not None and c.derived["delta_pp"] >= -budget_pp - 1e-9]
    for name, cands, empty in (("fastest", timed, "no cell has a batch-1 latency"),
                               (f"fastest within {budget_pp:g} pp", within,
                                f"no cell with a fp32 baseline loses at most {budget_pp:g} pp")):
        p = _pick(name, cands, lambda c: (lat(c), -(acc(c) or 0)), empty)
        if p.cell is not None:
            alike = _faster_alike(p.cell, cands)
            if alike:
                p.note = "not significantly faster than " + ", ".join(c.label for c in alike)
        out.append(p)
    return out


def task_picks(group: Group) -> List[Pick]:
    """A group of another task than classification: smallest, best by the task's own quality metric
    (its sense: higher or lower is better), fastest. The accuracy budget applies to classifiers only."""
    cells, key = group.cells, group.quality_key
    sign = -1.0 if group.higher_is_better else 1.0
    q = lambda c: c.metric("quality")  # noqa: E731
    lat = lambda c: c.metric("latency_p50_ms_b1")  # noqa: E731
    size = lambda c: c.metric("size_bytes")  # noqa: E731
    out = [_pick("smallest", [c for c in cells if size(c) is not None], lambda c: (size(c), sign * (q(c) or 0)),
                 "no cell has a size"),
           _pick(f"best {key}", [c for c in cells if q(c) is not None],
                 lambda c: (sign * q(c), lat(c) or float("inf"), size(c) or 0), f"no cell has a {key}")]
    if group.emulated:
        out.append(Pick("fastest", None, "not reported: timings under emulation mean nothing"))
        return out
    timed = [c for c in cells if lat(c) is not None]
    p = _pick("fastest", timed, lambda c: (lat(c), sign * (q(c) or 0)), "no cell has a batch-1 latency")
    if p.cell is not None:
        alike = _faster_alike(p.cell, timed)
        if alike:
            p.note = "not significantly faster than " + ", ".join(c.label for c in alike)
    return out + [p]


def analyze(cells: List[Cell], budget_pp: float) -> List[Group]:
    by_group: Dict[tuple, List[Cell]] = {}
    for c in cells:
        by_group.setdefault(c.group_key, []).append(c)
    groups = []
    for key in sorted(by_group):
        members = sorted(by_group[key], key=_order)
        batch_sizes = sorted({b for c in members for b in c.batch_sizes()})
        emulated = key[4]
        g = Group(key, members, batch_sizes, [])
        # a classifier's quality axis is accuracy (none without labels: agreement is not a trade-off
        # axis there); any other task's is its own metric, against labels or against fp32
        quality = "accuracy" if g.classifier else "quality"
        objectives = ["size_bytes", quality] if emulated else ["size_bytes", "latency_p50_ms_b1", quality]
        if g.classifier and not any(c.labelled for c in members):  # no accuracy axis, not a missing one
            objectives.remove("accuracy")
        g.objectives = objectives
        best = {} if emulated else best_fp32(members, batch_sizes)
        for c in members:
            c.derived = compare(c, baseline_of(c, members), batch_sizes, latency_ok=not emulated)
            c.derived.update(limit_ratios(c, best, batch_sizes))
        senses = [pareto.MAX if o == "accuracy" or (o == "quality" and g.higher_is_better) else pareto.MIN
                  for o in objectives]
        flags = pareto.frontier([[c.metric(o) for o in objectives] for c in members], senses)
        for c, f in zip(members, flags):
            c.derived["pareto"] = f
        g.picks = picks(g, budget_pp)
        groups.append(g)
    return groups


# ----------------------------------------------------------- QAT and auto against static PTQ
CHALLENGERS = ("qat", "auto")  # the schemes that exist to beat per-channel static PTQ


@dataclass
class SchemePair:
    """A QAT or auto cell and the static PTQ cell of the same group, backend, threads, fp32 weights
    and weight granularity. ``paired`` (stats.paired_accuracy of the challenger against static, from
    the two runs' per-sample results) is filled by the report, or ``note`` says why it could not be."""
    group: Group
    cell: Cell
    base: Cell
    paired: Optional[Dict[str, float]] = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.paired is None:
            return "not paired: " + self.note
        if self.paired["p_value"] >= ALPHA:
            return "no significant difference"
        better = self.cell.quant if self.paired["delta_pp"] > 0 else "static"
        return f"{better} more accurate (p < {ALPHA:g})"


def scheme_pairs(groups: List[Group]) -> List[SchemePair]:
    out = []
    for g in groups:
        for c in g.cells:
            if c.quant not in CHALLENGERS:
                continue
            gran = c.params.get("quant.granularity")
            for s in g.cells:
                if (s.quant == "static" and s.backend == c.backend and s.threads == c.threads
                        and s.tag("fp32_key") == c.tag("fp32_key") and s.params.get("quant.granularity") == gran):
                    out.append(SchemePair(g, c, s))
    return out


# ------------------------------------------------------------------- simulated low-bit accuracy
@dataclass
class SimulatedGroup:
    """quant=fake_quant cells of one (model, data, machine): accuracy against bits, one series per
    (weight granularity, activations, QAT). Each cell's delta is against the fp32 reference its own
    job evaluated on the same test samples (metric accuracy_delta_pp)."""
    key: Tuple[str, ...]  # Cell.group_key
    cells: List[Cell]

    @property
    def title(self) -> str:
        model, data, arch, cpu, emulated = self.key[:5]
        return f"{model} on {data}: {arch}, {cpu}{', EMULATED' if emulated else ''}"

    @property
    def slug(self) -> str:
        return f"simulated_{self.key[0]}_{self.key[1]}_{self.key[2]}"

    def series(self) -> Dict[str, List[Cell]]:
        out: Dict[str, List[Cell]] = {}
        for c in self.cells:
            out.setdefault(series_label(c), []).append(c)
        return out


def bits_of(c: Cell) -> int:
    return int(c.params.get("quant.bits", "0"))


def series_label(c: Cell) -> str:
    p = c.params
    acts = "weights+activations" if p.get("quant.activations") == "True" else "weights only"
    return f"{acts}, {p.get('quant.granularity', '?').replace('_', '-')}, {'QAT' if p.get('quant.qat') == 'True' else 'PTQ'}"


def simulated_groups(cells: List[Cell]) -> List[SimulatedGroup]:
    by: Dict[tuple, List[Cell]] = {}
    for c in cells:
        by.setdefault(c.group_key, []).append(c)
    return [SimulatedGroup(k, sorted(by[k], key=lambda c: (series_label(c), bits_of(c))))
            for k in sorted(by)]
