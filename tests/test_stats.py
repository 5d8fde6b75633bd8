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
    lo, hi = stats.median_bootstrap_ci([s], resamples=4000, seed=1)
    ref = sps.bootstrap((s,), np.median, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.05)
    assert hi == pytest.approx(ref.high, abs=0.05)
    assert lo < np.median(s) < hi


def _brute_force_cluster_bootstrap(groups, resamples, seed):
    """The two-stage bootstrap written out: draw groups, draw samples, np.median of the pool."""
    rng = np.random.default_rng(seed)
    k = len(groups)
    med = np.empty(resamples)
    for r in range(resamples):
        parts = [groups[i][rng.integers(0, groups[i].size, size=groups[i].size)] for i in rng.integers(0, k, size=k)]
        med[r] = np.median(np.concatenate(parts))
    return med


@pytest.mark.parametrize("case", ["odd", "even", "ties", "two_modes", "unequal_sizes"])
def test_median_bootstrap_matches_the_brute_force_bootstrap(case):
    """The lazy binomial draw gives the same replicate distribution as materialising each resample."""
    rng = np.random.default_rng(3)
    groups = {
        "odd": [rng.gamma(4, 0.05, 301)],
        "even": [np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
        "ties": [np.round(rng.normal(1.0, 0.1, 200), 1), np.round(rng.normal(1.05, 0.1, 150), 1)],
        "two_modes": [rng.normal(0.11, 0.002, 300), rng.normal(0.18, 0.002, 300), rng.normal(0.11, 0.002, 300)],
        "unequal_sizes": [rng.normal(1.0, 0.05, 50), rng.normal(1.2, 0.05, 400)],
    }[case]
    ref = _brute_force_cluster_bootstrap(groups, 20000, 6)
    spread = np.ptp(np.concatenate(groups))
    for level in (0.5, 0.8, 0.95):
        lo, hi = stats.median_bootstrap_ci(groups, resamples=20000, seed=5, level=level)
        a = (1 - level) / 2
        assert lo == pytest.approx(np.quantile(ref, a), abs=0.02 * spread), level
        assert hi == pytest.approx(np.quantile(ref, 1 - a), abs=0.02 * spread), level


def test_median_bootstrap_is_seeded_and_cheap_on_long_runs():
    rng = np.random.default_rng(4)
    groups = [rng.gamma(5, 0.004, 50_000) for _ in range(3)]  # a fast model's b1 run: 150k samples
    a = stats.median_bootstrap_ci(groups, 1000, 7)
    assert a == stats.median_bootstrap_ci(groups, 1000, 7)
    assert a[0] < np.median(np.concatenate(groups)) < a[1]
    with pytest.raises(ValueError, match="no samples"):
        stats.median_bootstrap_ci([np.array([])])


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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=400))
def test_paired_accuracy_matches_scipys_binomial_test(pairs):
    a = np.array([p[0] for p in pairs])
    r = np.array([p[1] for p in pairs])
    x = stats.paired_accuracy(a, r)
    gained, lost = int((a & ~r).sum()), int((~a & r).sum())
    assert (x["gained"], x["lost"], x["n"]) == (gained, lost, len(a))
    assert x["delta_pp"] == pytest.approx(100 * (a.mean() - r.mean()))
    expected = 1.0 if gained + lost == 0 else sps.binomtest(min(gained, lost), gained + lost, 0.5).pvalue
    assert x["p_value"] == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert x["ci_low_pp"] <= x["delta_pp"] <= x["ci_high_pp"]


def test_paired_accuracy_by_hand():
    # 1000 samples: the model gains 40 the reference missed and loses 10 it had. d = +3 pp;
    # Wald: sqrt(50 - 30^2/1000) / 1000 * 1.96 = 1.368 pp; McNemar: P(X <= 10 | 50, 1/2) * 2.
    a = np.zeros(1000, bool)
    r = np.zeros(1000, bool)
    a[:40] = True
    r[40:50] = True
    a[50:900] = r[50:900] = True
    x = stats.paired_accuracy(a, r)
    assert x["delta_pp"] == pytest.approx(3.0)
    assert x["ci_high_pp"] - 3.0 == pytest.approx(1.95996 * math.sqrt(50 - 0.9) / 10, rel=1e-4)
    assert x["p_value"] == pytest.approx(2 * sum(math.comb(50, k) for k in range(11)) / 2 ** 50)
    assert x["p_value"] < 1e-4
    same = stats.paired_accuracy(a, a)  # identical results: nothing to test
    assert (same["p_value"], same["ci_low_pp"], same["ci_high_pp"]) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_accuracy(a, r[:10])
