"""The statistics, against numpy/scipy or values worked out by hand."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from bsb_hydra.bench import stats


def test_latency_percentiles_match_numpy():
    rng = np.random.default_rng(3)
    s = rng.lognormal(0.0, 0.3, 501)
    r = stats.latency_stats(s, batch_size=8, resamples=200)
    for p in (50, 90, 95, 99):
        assert r[f"p{p}_ms"] == pytest.approx(np.percentile(s, p))
    assert r["mean_ms"] == pytest.approx(s.mean())
    assert r["std_ms"] == pytest.approx(s.std(ddof=1))
    assert r["cv"] == pytest.approx(s.std(ddof=1) / s.mean())
    assert r["throughput_sps"] == pytest.approx(8 * 1000 / s.mean())
    assert r["p50_ci_low_ms"] <= r["p50_ms"] <= r["p50_ci_high_ms"]


def test_hand_computed_small_sample():
    r = stats.latency_stats([1.0, 2.0, 3.0, 4.0], batch_size=1, resamples=100)
    assert r["p50_ms"] == 2.5  # linear interpolation between 2 and 3
    assert r["p90_ms"] == pytest.approx(3.7)
    assert r["mean_ms"] == 2.5
    assert r["std_ms"] == pytest.approx(math.sqrt(5 / 3))


def test_bootstrap_interval_matches_scipy():
    rng = np.random.default_rng(0)
    s = rng.normal(10, 1, 400)
    lo, hi = stats.bootstrap_ci(s, np.median, resamples=4000, seed=1)
    ref = sps.bootstrap((s,), np.median, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.05)
    assert hi == pytest.approx(ref.high, abs=0.05)
    assert lo < np.median(s) < hi


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (912, 1000), (1000, 1000), (9123, 10000)])
def test_wilson_matches_scipy(k, n):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = stats.wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9)
    assert hi == pytest.approx(ref.high, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100000), st.floats(0, 1))
def test_wilson_is_a_proper_interval(n, frac):
    k = int(round(frac * n))
    lo, hi = stats.wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_agreement_metrics_by_hand_and_scipy():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 5.0], [0.5, 0.0, 0.0]])
    q = np.array([[1.5, 1.0, 0.2], [2.0, 1.0, 1.0], [1.0, 1.2, 4.0], [0.5, 0.1, 0.0]])
    m = stats.agreement_metrics(q, ref)
    assert m["top1_agreement"] == 0.75  # row 1 flips from class 1 to class 0
    p_ref, p_q = stats.softmax(ref), stats.softmax(q)
    kl = np.mean([sps.entropy(p_ref[i], p_q[i]) for i in range(4)])
    assert m["kl_div"] == pytest.approx(kl, rel=1e-6)
    top = ref.argmax(1)
    drift = np.mean(np.abs(p_q[np.arange(4), top] - p_ref[np.arange(4), top]))
    assert m["confidence_drift"] == pytest.approx(drift)
    assert m["max_abs_logit_diff"] == pytest.approx(2.0)


def test_identical_models_agree_perfectly():
    x = np.random.default_rng(0).normal(size=(50, 10))
    m = stats.agreement_metrics(x, x)
    assert m["top1_agreement"] == 1.0 and m["kl_div"] == pytest.approx(0, abs=1e-12)
    assert m["confidence_drift"] == 0.0


def test_accuracy_and_per_class():
    logits = np.eye(3)[[0, 1, 2, 0, 0]]
    labels = np.array([0, 1, 1, 0, 2])
    a = stats.accuracy_metrics(logits, labels, 3)
    assert a["accuracy"] == pytest.approx(3 / 5)
    assert a["per_class"] == {0: 1.0, 1: 0.5, 2: 0.0}
    assert a["accuracy_ci_low"] < 0.6 < a["accuracy_ci_high"]


def test_pooled_stats_one_process_is_the_plain_bootstrap():
    rng = np.random.default_rng(1)
    s = rng.gamma(5.0, 0.02, size=500)
    one = stats.pooled_latency_stats([s], 1, 300, 0)
    plain = stats.latency_stats(s, 1, 300, 0)
    for k, v in plain.items():
        assert one[k] == v, k
    assert one["processes"] == 1 and one["process_p50_spread"] == 1.0


def test_pooled_interval_widens_when_processes_disagree():
    rng = np.random.default_rng(2)
    fast, slow = rng.normal(0.11, 0.002, 2000), rng.normal(0.18, 0.002, 2000)
    pooled = stats.pooled_latency_stats([fast, slow, fast.copy()], 1, 300, 0)
    single = stats.latency_stats(np.concatenate([fast, slow, fast]), 1, 300, 0)
    assert pooled["count"] == 6000 and pooled["processes"] == 3
    assert pooled["process_p50_spread"] == pytest.approx(0.18 / 0.11, rel=0.01)
    # the naive interval (all samples as one process) is far narrower than the process-level one
    assert single["p50_ci_high_ms"] - single["p50_ci_low_ms"] < 0.01
    assert pooled["p50_ci_high_ms"] - pooled["p50_ci_low_ms"] > 0.03
    assert pooled["p50_ci_low_ms"] <= pooled["p50_ms"] <= pooled["p50_ci_high_ms"]
    # agreeing processes: about the plain interval
    same = stats.pooled_latency_stats([fast[:1000], fast[1000:]], 1, 300, 0)
    assert same["p50_ci_high_ms"] - same["p50_ci_low_ms"] < 0.003
