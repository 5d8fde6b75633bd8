"""Statistics over latency samples and predictions. Plain numpy, checked against scipy in tests."""
from __future__ import annotations

import math
from typing import Dict

import numpy as np


def latency_stats(samples_ms, batch_size: int, resamples: int = 1000, seed: int = 0) -> Dict[str, float]:
    """Summary statistics of one process's samples, with a seeded bootstrap 95% interval of p50."""
    return _latency_stats([samples_ms], batch_size, resamples, seed)


def pooled_latency_stats(per_process, batch_size: int, resamples: int = 1000, seed: int = 0) -> Dict[str, float]:
    """latency_stats over the samples of several fresh processes pooled, with the p50 interval from a
    cluster bootstrap (resample the processes, then the samples within each). A process's p50 can
    differ from another's by far more than its own interval (memory layout, the core the VM
    gives it), so an interval from one process claims a precision that the next process refutes.
    With one process this is latency_stats exactly."""
    out = _latency_stats(per_process, batch_size, resamples, seed)
    p50s = [float(np.percentile(np.asarray(g, dtype=np.float64), 50)) for g in per_process]
    out["processes"] = float(len(p50s))
    out["process_p50_spread"] = max(p50s) / min(p50s) if min(p50s) > 0 else float("nan")
    return out


def _latency_stats(per_process, batch_size: int, resamples: int, seed: int) -> Dict[str, float]:
    groups = [np.asarray(g, dtype=np.float64) for g in per_process]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("no latency samples")
    s = np.concatenate(groups)
    mean = float(s.mean())
    std = float(s.std(ddof=1)) if s.size > 1 else 0.0
    lo, hi = median_bootstrap_ci(groups, resamples, seed)
    return {
        "mean_ms": mean,
        "p50_ms": float(np.percentile(s, 50)),
        "p90_ms": float(np.percentile(s, 90)),
        "p95_ms": float(np.percentile(s, 95)),
        "p99_ms": float(np.percentile(s, 99)),
        "std_ms": std,
        "cv": std / mean if mean > 0 else float("nan"),
        "p50_ci_low_ms": lo,
        "p50_ci_high_ms": hi,
        "throughput_sps": batch_size * 1000.0 / mean,
        "count": float(s.size),
    }


def median_bootstrap_ci(groups, resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of the median (np.median's definition) of pooled samples.

    Two stages, as a cluster bootstrap: draw the groups (processes) with replacement, then each
    drawn group's samples with replacement; with one group it is the plain bootstrap. Seeded.

    Each replicate is drawn exactly, without materialising its samples: a resample of a sorted
    group is a multinomial count vector over its values, and the count at or below any value can
    be drawn lazily by binomial splitting inside the bracket already drawn. A binary search over
    the pooled values then finds the replicate's middle order statistics in about log2(n) steps,
    so the cost is O(resamples * groups * log n) instead of O(resamples * n): a 50,000-sample b1
    run costs milliseconds, not seconds."""
    gs = [np.sort(np.asarray(g, dtype=np.float64)) for g in groups]
    k = len(gs)
    if k == 0 or any(g.size == 0 for g in gs):
        raise ValueError("no samples")
    rng = np.random.default_rng(seed)
    values = np.unique(np.concatenate(gs))
    # below[g, j]: how many samples of group g are <= values[j]
    below = np.stack([np.searchsorted(g, values, side="right") for g in gs])
    sizes = np.array([g.size for g in gs])
    choice = rng.integers(0, k, size=(resamples, k)) if k > 1 else np.zeros((resamples, 1), dtype=np.int64)
    n = sizes[choice]
    total = n.sum(axis=1)
    m_low, m_high = (total + 1) // 2, total // 2 + 1  # 1-based ranks of the middle pair (equal if odd)
    top = len(values) - 1

    def search(target, active, lo, a, ca, b, cb):
        """Smallest value index whose drawn count reaches target, for the active replicates.
        Invariant per slot: a = below at lo (0 when lo = -1), b = below at hi; ca, cb their draws."""
        hi = np.full(resamples, top)
        while True:
            step = active & (hi - lo > 1)
            if not step.any():
                return hi, a, ca, b, cb
            mid = (lo + hi) // 2
            c = below[choice, mid[:, None]]
            width = b - a
            p = np.where(width > 0, (c - a) / np.maximum(width, 1), 0.0)
            cc = ca + rng.binomial(cb - ca, np.clip(p, 0.0, 1.0))
            reach = cc.sum(axis=1) >= target
            up, down = (step & reach)[:, None], (step & ~reach)[:, None]
            hi = np.where(step & reach, mid, hi)
            lo = np.where(step & ~reach, mid, lo)
            b, cb = np.where(up, c, b), np.where(up, cc, cb)
            a, ca = np.where(down, c, a), np.where(down, cc, ca)

    zeros = np.zeros_like(n)
    everyone = np.ones(resamples, dtype=bool)
    j1, a, ca, b, cb = search(m_low, everyone, np.full(resamples, -1), zeros, zeros, n, n)
    # The upper middle value: the same value when its draw count already covers rank m_high; else
    # search above it, the counts drawn so far kept (given the count at j1, draws above it are
    # independent of the path that found j1).
    more = cb.sum(axis=1) < m_high
    j2 = j1.copy()
    if more.any():
        j2m, *_ = search(m_high, more, j1.copy(), b, cb, n, n)
        j2 = np.where(more, j2m, j1)
    med = (values[j1] + values[j2]) / 2.0
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(med, alpha)), float(np.quantile(med, 1.0 - alpha))


def wilson_interval(successes: int, n: int, level: float = 0.95):
    """Wilson score interval for a binomial proportion."""
    if n <= 0:
        return float("nan"), float("nan")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 (k = n) the exact bound is 0 (1); rounding would leave 1e-18 on the wrong side.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def paired_accuracy(correct: np.ndarray, ref_correct: np.ndarray, level: float = 0.95) -> Dict[str, float]:
    """Two models scored on the SAME test samples (per-sample correctness of each): the accuracy
    difference in pp with a Wald interval for paired proportions, and the exact McNemar test.

    Only the discordant samples carry information: ``gained`` (the model right, the reference wrong)
    and ``lost`` (the reverse). Under "no difference" each discordant sample falls either way with
    probability 1/2, so the two-sided p-value is that of a binomial test on min(gained, lost)."""
    from statistics import NormalDist

    a, r = np.asarray(correct, dtype=bool), np.asarray(ref_correct, dtype=bool)
    if a.shape != r.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired accuracy needs two equal-length 1-D correctness vectors, got {a.shape} and {r.shape}")
    n = len(a)
    gained, lost = int((a & ~r).sum()), int((~a & r).sum())
    d = (gained - lost) / n
    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    half = z * math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n
    m = gained + lost
    tail = sum(math.comb(m, k) for k in range(min(gained, lost) + 1))  # exact integers, then one division
    p = 1.0 if m == 0 else min(1.0, 2 * tail / 2 ** m)
    return {"delta_pp": 100.0 * d, "ci_low_pp": 100.0 * (d - half), "ci_high_pp": 100.0 * (d + half),
            "p_value": p, "gained": gained, "lost": lost, "n": n}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    pred = logits.argmax(axis=1)
    correct = int((pred == labels).sum())
    lo, hi = wilson_interval(correct, len(labels))
    per_class = {}
    for c in range(num_classes):
        m = labels == c
        per_class[c] = float((pred[m] == c).mean()) if m.any() else float("nan")
    return {"accuracy": correct / len(labels), "accuracy_ci_low": lo, "accuracy_ci_high": hi,
            "correct": correct, "n": int(len(labels)), "per_class": per_class}


def agreement_metrics(logits: np.ndarray, ref_logits: np.ndarray) -> dict:
    """Agreement of a model with its fp32 reference on the same inputs.

    top1_agreement: share of samples where both pick the same class.
    confidence_drift: mean |p(c*) - p_ref(c*)|, c* the reference's top class.
    kl_div: mean KL(p_ref || p) in nats.
    max_abs_logit_diff: largest absolute logit difference."""
    p, q = softmax(ref_logits), softmax(logits)
    top_ref = ref_logits.argmax(axis=1)
    rows = np.arange(len(top_ref))
    eps = 1e-12
    kl = np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)
    return {
        "top1_agreement": float((logits.argmax(axis=1) == top_ref).mean()),
        "confidence_drift": float(np.abs(q[rows, top_ref] - p[rows, top_ref]).mean()),
        "kl_div": float(np.maximum(kl, 0.0).mean()),
        "max_abs_logit_diff": float(np.abs(logits.astype(np.float64) - ref_logits).max()),
    }
