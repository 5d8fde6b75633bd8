"""Statistics over latency samples and predictions. Plain numpy, checked against scipy in tests."""
from __future__ import annotations

import math
from typing import Dict

import numpy as np


def latency_stats(samples_ms, batch_size: int, resamples: int = 1000, seed: int = 0) -> Dict[str, float]:
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no latency samples")
    mean = float(s.mean())
    std = float(s.std(ddof=1)) if s.size > 1 else 0.0
    lo, hi = bootstrap_ci(s, np.median, resamples, seed)
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


def pooled_latency_stats(per_process, batch_size: int, resamples: int = 1000, seed: int = 0) -> Dict[str, float]:
    """latency_stats over the samples of several fresh processes pooled, with the p50 interval from a
    cluster bootstrap (resample the processes, then the samples within each). A process's p50 can
    differ from another's by far more than its own interval (memory layout, the core the VM
    gives it), so an interval from one process claims a precision that the next process refutes.
    With one process this is latency_stats exactly."""
    groups = [np.asarray(g, dtype=np.float64) for g in per_process]
    if any(g.size == 0 for g in groups) or not groups:
        raise ValueError("no latency samples")
    out = latency_stats(np.concatenate(groups), batch_size, resamples, seed)
    p50s = [float(np.percentile(g, 50)) for g in groups]
    out["processes"] = float(len(groups))
    out["process_p50_spread"] = max(p50s) / min(p50s) if min(p50s) > 0 else float("nan")
    if len(groups) > 1:
        out["p50_ci_low_ms"], out["p50_ci_high_ms"] = cluster_bootstrap_ci(groups, np.median, resamples, seed)
    return out


def cluster_bootstrap_ci(groups, statistic=np.median, resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Two-stage percentile bootstrap: draw the groups with replacement, then each drawn group's
    samples with replacement, and compute ``statistic`` over the pooled draw (seeded)."""
    rng = np.random.default_rng(seed)
    k = len(groups)
    stats = np.empty(resamples)
    for r in range(resamples):
        parts = [groups[i][rng.integers(0, groups[i].size, size=groups[i].size)] for i in rng.integers(0, k, size=k)]
        stats[r] = statistic(np.concatenate(parts))
    a = (1.0 - level) / 2.0
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))


def bootstrap_ci(samples, statistic=np.median, resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of ``statistic`` (seeded, so a rerun gives the same interval)."""
    s = np.asarray(samples, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, s.size, size=(resamples, s.size))
    stats = statistic(s[idx], axis=1)
    a = (1.0 - level) / 2.0
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))


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
