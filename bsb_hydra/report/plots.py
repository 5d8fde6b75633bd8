"""The report's PNG plots (matplotlib, Agg backend): per group, accuracy vs batch-1 latency with the
frontier drawn, size per cell and speedup per backend and scheme; per (model, data), the native
archs side by side when more than one was measured."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from bsb_hydra.report.analysis import SCHEME_ORDER, Group, SimulatedGroup, bits_of

MARKER_CYCLE = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def markers(backends) -> Dict[str, str]:
    """One marker per backend, by the backend's place among every backend here and the ones the runs
    name (the same marker for a backend in every plot of one report)."""
    from bsb_hydra.backends import BACKENDS

    names = sorted(set(BACKENDS.options()) | set(backends))
    return {b: MARKER_CYCLE[i % len(MARKER_CYCLE)] for i, b in enumerate(names)}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(scheme: str):
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return cmap(SCHEME_ORDER.index(scheme) if scheme in SCHEME_ORDER else 9)


def tradeoff(g: Group, path: Path) -> None:
    """Accuracy vs p50 latency at batch 1 (native) or vs size (emulated), frontier connected."""
    plt = _plt()
    xkey, xlabel = (("size_bytes", "artifact size (KiB)") if g.emulated
                    else ("latency_p50_ms_b1", "p50 latency at batch 1 (ms, log scale)"))
    ykey, scale = ("accuracy", 100.0) if g.classifier else ("quality", 1.0)
    up = g.classifier or g.higher_is_better
    pts = [(c, c.metric(xkey), c.metric(ykey)) for c in g.cells]
    pts = [(c, x / 1024 if xkey == "size_bytes" else x, scale * a) for c, x, a in pts if x is not None and a is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    marks = markers({c.backend for c in g.cells})
    for c, x, a in pts:
        on = c.derived.get("pareto") is True
        ax.scatter(x, a, marker=marks[c.backend], s=80 if on else 45, color=_color(c.quant),
                   edgecolors="black" if on else "none", linewidths=1.2, zorder=3)
        ax.annotate(c.label, (x, a), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = sorted(((x, a) for c, x, a in pts if c.derived.get("pareto") is True))
    if front:
        # the frontier as a staircase: for each latency, the best accuracy reachable at it or faster
        xs, ys, best = [], [], None
        for x, a in front:
            if best is None or (a > best if up else a < best):
                xs.append(x)
                ys.append(a)
                best = a
        ax.step(xs, ys, where="post", color="black", linewidth=1, alpha=0.6, zorder=2, label="Pareto frontier")
    if not g.emulated:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)" if g.classifier else
                  f"{g.quality_key} ({'higher' if g.higher_is_better else 'lower'} is better)")
    ax.set_title(g.title + ("\n(timings under emulation not used: quality vs size)" if g.emulated else ""), fontsize=9)
    handles = [plt.Line2D([], [], marker=m, linestyle="", color="gray", label=b) for b, m in marks.items()
               if any(c.backend == b for c in g.cells)]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color=_color(s), label=s) for s in SCHEME_ORDER
                if any(c.quant == s for c in g.cells)]
    if front:
        handles.append(plt.Line2D([], [], color="black", label="frontier (outlined points)"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sizes(g: Group, path: Path) -> None:
    plt = _plt()
    cells = [c for c in g.cells if c.metric("size_bytes") is not None]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(cells) + 1.5))
    ys = range(len(cells))
    ax.barh(list(ys), [c.metric("size_bytes") / 1024 for c in cells], color=[_color(c.quant) for c in cells])
    for y, c in zip(ys, cells):
        r = c.derived.get("size_ratio")
        ax.annotate(f" {r:.3f}x fp32" if r is not None else " no fp32 baseline",
                    (c.metric("size_bytes") / 1024, y), va="center", fontsize=7)
    ax.set_yticks(list(ys), [c.label for c in cells], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("artifact size on disk (KiB)")
    ax.set_title(f"Size per cell: {g.title}", fontsize=9)
    ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedups(g: Group, path: Path, batch: int = 1) -> bool:
    """Bars of speedup vs the same backend's fp32 per scheme, one bar per backend; hatched when not
    significant. False (no file) when no cell has a speedup."""
    kind = ""  # the paired speedup; the one against the fp32 cell only when no job measured a paired one
    cells = [c for c in g.cells if c.quant != "fp32" and c.derived.get(f"speedup_b{batch}") is not None]
    if not cells:
        kind = "cell_"
        cells = [c for c in g.cells if c.quant != "fp32" and c.derived.get(f"cell_speedup_b{batch}") is not None]
    if not cells:
        return False
    plt = _plt()
    backends = sorted({c.backend for c in cells})
    labels = sorted({(c.quant, c.variant) for c in cells}, key=lambda k: (SCHEME_ORDER.index(k[0])
                                                                          if k[0] in SCHEME_ORDER else 99, k))
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 2), 4.5))
    for i, b in enumerate(backends):
        for j, lab in enumerate(labels):
            c = next((c for c in cells if c.backend == b and (c.quant, c.variant) == lab), None)
            if c is None:
                continue
            s = c.derived[f"{kind}speedup_b{batch}"]
            sig = c.derived.get(f"{kind}significant_b{batch}")
            ax.bar(j + (i - (len(backends) - 1) / 2) * width, s, width, color=f"C{i}",
                   hatch="//" if sig is False else None, edgecolor="black", linewidth=0.5)
            ax.annotate(f"{s:.2f}x", (j + (i - (len(backends) - 1) / 2) * width, s), ha="center",
                        va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), [q + (f"\n{v}" if v else "") for q, v in labels], fontsize=7)
    ax.set_ylabel(f"speedup vs same-backend fp32 (p50, batch {batch}"
                  + (", paired in the job)" if not kind else ", vs the fp32 cell's run)"))
    ax.set_title(f"Speedup per backend and scheme (hatched: 95% intervals overlap)\n{g.title}", fontsize=9)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor=f"C{i}", edgecolor="black", label=b) for i, b in enumerate(backends)]
              + [Patch(facecolor="white", edgecolor="black", hatch="//", label="not significant")], fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def archs_side_by_side(groups: List[Group], path: Path) -> bool:
    """The same (model, data) measured natively on several machines: speedup at batch 1 and
    accuracy delta per cell, one bar per machine. False when fewer than two archs are native."""
    native = [g for g in groups if not g.emulated]
    if len({g.arch for g in native}) < 2:
        return False
    plt = _plt()
    labels = sorted({c.label for g in native for c in g.cells if c.quant != "fp32"})
    if not labels:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 0.9 * len(labels) + 4), 4.8))
    width = 0.8 / len(native)
    for i, g in enumerate(native):
        cells: Dict[str, object] = {c.label: c for c in g.cells}
        for ax, key in ((axes[0], "speedup_b1"), (axes[1], "delta_pp")):
            xs, vs = [], []
            for j, lab in enumerate(labels):
                c = cells.get(lab)
                v = c.derived.get(key) if c is not None else None
                if v is not None:
                    xs.append(j + (i - (len(native) - 1) / 2) * width)
                    vs.append(v)
            ax.bar(xs, vs, width, color=f"C{i}", label=f"{g.arch} ({g.cpu[:28]})")
    axes[0].axhline(1.0, color="black", linewidth=0.8)
    axes[0].set_ylabel("speedup vs same-backend fp32 (p50, batch 1, paired)")
    axes[1].axhline(0.0, color="black", linewidth=0.8)
    axes[1].set_ylabel("accuracy delta vs fp32 (pp)")
    for ax in axes:
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{native[0].model} on {native[0].data}: the same cells on each machine", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def accuracy_vs_bits(g: SimulatedGroup, path: Path) -> None:
    """Simulated (fake_quant) accuracy against bits, one line per series; the fp32 accuracy dotted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, cells) in enumerate(g.series().items()):
        pts = sorted((bits_of(c), 100 * c.metric("accuracy")) for c in cells if c.metric("accuracy") is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", linestyle="--" if "QAT" in label else "-", label=label,
                    color=plt.get_cmap("tab10")(i % 10))
    for ref in sorted({round(100 * a, 4) for c in g.cells if (a := c.metric("fp32_accuracy")) is not None}):
        ax.axhline(ref, color="black", linestyle=":", linewidth=1)
        ax.annotate(f"fp32 {ref:.2f}%", (ax.get_xlim()[0], ref), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("bits (weights; activations too where the series says so)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted({bits_of(c) for c in g.cells}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"SIMULATED (fake_quant, evaluated in float): {g.title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(groups: List[Group], out: Path, simulated: List[SimulatedGroup] = ()) -> Dict[str, List[Tuple[str, str]]]:
    """Every plot into ``out``; returns, per group slug (and per 'model_data' for the arch plots,
    per simulated group slug for the accuracy-vs-bits curves), (caption, file name) pairs."""
    made: Dict[str, List[Tuple[str, str]]] = {}
    for g in simulated:
        accuracy_vs_bits(g, out / f"{g.slug}.png")
        made[g.slug] = [("simulated accuracy vs bits", f"{g.slug}.png")]
    for n, g in enumerate(groups, 1):
        slug = f"g{n}_{g.slug}"
        items = []
        tradeoff(g, out / f"{slug}_tradeoff.png")
        what = "accuracy" if g.classifier else g.quality_key
        items.append((f"{what} vs size" if g.emulated else f"{what} vs p50 latency at batch 1, frontier drawn",
                      f"{slug}_tradeoff.png"))
        sizes(g, out / f"{slug}_size.png")
        items.append(("size per cell", f"{slug}_size.png"))
        if not g.emulated and speedups(g, out / f"{slug}_speedup.png"):
            items.append(("speedup per backend and scheme at batch 1", f"{slug}_speedup.png"))
        made[slug] = items
    by_md: Dict[Tuple[str, str], List[Group]] = {}
    for g in groups:
        by_md.setdefault((g.model, g.data), []).append(g)
    for (model, data), gs in by_md.items():
        name = f"archs_{model}_{data}.png"
        if archs_side_by_side(gs, out / name):
            made[f"archs_{model}_{data}"] = [(f"{model} on {data}: native archs side by side", name)]
    return made
