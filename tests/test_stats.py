"""Tests for recap_jax.stats: Table 1 / §5 of the paper, brute-force AUC and τ-b, McNemar, errors."""

import itertools
import math

import numpy as np
import pytest

from recap_jax import stats as S

# Table 1 rows: (count, N, printed rate %, printed Wilson CI %). RECAP-low's printed row matches 107/498.
TABLE1 = {
    "SFT@20k": (180, 500, 36.0, (31.9, 40.3)),
    "SFT@40k": (243, 500, 48.6, (44.2, 53.0)),
    "BC-all": (91, 500, 18.2, (15.1, 21.8)),
    "RECAP-low": (107, 498, 21.5, (18.1, 25.3)),
    "RECAP-high": (154, 500, 30.8, (26.9, 35.0)),
}


@pytest.mark.parametrize("row", sorted(TABLE1))
def test_table1_wilson_rows(row):
    k, n, rate, (lo, hi) = TABLE1[row]
    assert round(100 * k / n, 1) == rate
    w_lo, w_hi = S.wilson_interval(k, n)
    assert (round(100 * w_lo, 1), round(100 * w_hi, 1)) == (lo, hi)


def test_recap_low_is_107_of_498_not_of_500():
    assert (round(100 * 107 / 500, 1), [round(100 * v, 1) for v in S.wilson_interval(107, 500)]) != (21.5, [18.1, 25.3])
    z, _ = S.two_proportion_ztest(154, 500, 107, 500)
    assert round(z, 2) != 3.35


def test_section5_z_tests_and_difference_intervals():
    z_hl, p_hl = S.two_proportion_ztest(154, 500, 107, 498)
    z_rb, p_rb = S.two_proportion_ztest(154, 500, 91, 500)
    assert round(z_hl, 2) == 3.35 and p_hl < 0.001
    assert round(z_rb, 2) == 4.63 and p_rb < 0.001
    # Symmetry: swapping the samples flips z, keeps p.
    z_sw, p_sw = S.two_proportion_ztest(107, 498, 154, 500)
    assert z_sw == pytest.approx(-z_hl) and p_sw == pytest.approx(p_hl)
    d_hl, lo_hl, hi_hl = S.difference_interval(154, 500, 107, 498)
    d_rb, lo_rb, hi_rb = S.difference_interval(154, 500, 91, 500)
    assert [round(100 * v, 1) for v in (d_hl, lo_hl, hi_hl)] == [9.3, 3.9, 14.7]
    assert [round(100 * v, 1) for v in (d_rb, lo_rb, hi_rb)] == [12.6, 7.3, 17.9]
    # Integral floats are accepted as counts (e.g. sums of float success arrays).
    assert S.two_proportion_ztest(154.0, 500, 91.0, 500.0) == S.two_proportion_ztest(154, 500, 91, 500)
    assert S.two_proportion_ztest(0, 10, 0, 20) == (0.0, 1.0)


def test_normal_functions():
    for p in [1e-300, 1e-12, 1e-6, 0.01, 0.02425, 0.2, 0.5, 0.7, 0.975, 0.99, 1 - 1e-9]:
        x = S.norm_ppf(p)
        back = S.norm_cdf(x) if p < 0.5 else 1.0 - S.norm_sf(x)
        assert back == pytest.approx(p, rel=1e-12, abs=1e-15)
    assert S.norm_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-13)
    assert S.norm_ppf(0.5) == pytest.approx(0.0, abs=1e-15)
    assert S.norm_cdf(1.0) + S.norm_sf(1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="probability"):
        S.norm_ppf(1.0)


def test_wilson_properties_and_errors():
    lo, hi = S.wilson_interval(0, 20)
    assert lo == 0.0 and 0 < hi < 0.2
    lo, hi = S.wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 1.0
    narrow, wide = S.wilson_interval(30, 100, 0.9), S.wilson_interval(30, 100, 0.99)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]
    with pytest.raises(ValueError, match="n must be positive"):
        S.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        S.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        S.wilson_interval(-1, 10)
    with pytest.raises(ValueError, match="confidence"):
        S.wilson_interval(1, 10, 1.0)
    with pytest.raises(ValueError, match="int count"):
        S.wilson_interval(1.5, 10)
    with pytest.raises(ValueError, match="int count"):
        S.wilson_interval(True, 10)
    with pytest.raises(ValueError, match="int count"):
        S.wilson_interval(1, float("nan"))
    with pytest.raises(ValueError, match="sample 2"):
        S.two_proportion_ztest(1, 10, 5, 4)
    with pytest.raises(ValueError, match="sample 1"):
        S.difference_interval(1, 0, 1, 4)


def _brute_auc(s, y):
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    tot = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return tot / (len(pos) * len(neg))


def _brute_tau_b(x, y):
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if a == 0 and b == 0:
            continue
        if a == 0:
            tx += 1
        elif b == 0:
            ty += 1
        elif a == b:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / math.sqrt((conc + disc + tx) * (conc + disc + ty))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_tau_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.integers(0, 8, n) / 8.0  # many ties
    labels = rng.random(n) < 0.4
    assert S.roc_auc(scores, labels) == pytest.approx(_brute_auc(scores, labels), abs=1e-12)
    x = rng.integers(0, 6, n).astype(float)
    y = x + rng.integers(-3, 4, n)
    tau, p = S.kendall_tau(x, y, block=7)
    assert tau == pytest.approx(_brute_tau_b(x, y), abs=1e-12)
    assert 0.0 <= p <= 1.0


def test_kendall_p_value_against_hand_formula():
    # No ties: Var(S) = n(n−1)(2n+5)/18, so z = S / sqrt(Var).
    x = np.arange(10.0)
    y = np.array([0, 2, 1, 3, 5, 4, 6, 9, 7, 8], float)
    tau, p = S.kendall_tau(x, y)
    s = tau * 45
    z = s / math.sqrt(10 * 9 * 25 / 18)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)
    # Perfect and reversed orderings; p symmetric in the sign.
    assert S.kendall_tau(x, x)[0] == pytest.approx(1.0)
    t_rev, p_rev = S.kendall_tau(x, -y)
    assert t_rev == pytest.approx(-tau) and p_rev == pytest.approx(p)
    # Tied y (binary): the variance's tie terms; compare with an independent computation.
    yb = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1], float)
    tau_b, p_b = S.kendall_tau(x, yb)
    assert tau_b == pytest.approx(_brute_tau_b(x, yb))
    n, u = 10, np.array([4, 6])
    var = (n * (n - 1) * (2 * n + 5) - np.sum(u * (u - 1) * (2 * u + 5))) / 18.0
    s_b = sum(np.sign(x[i] - x[j]) * np.sign(yb[i] - yb[j]) for i, j in itertools.combinations(range(n), 2))
    assert p_b == pytest.approx(math.erfc(abs(s_b) / math.sqrt(var) / math.sqrt(2)), rel=1e-12)


def test_ranking_errors():
    with pytest.raises(ValueError, match="both classes"):
        S.roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="binary"):
        S.roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="shape mismatch"):
        S.roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        S.kendall_tau([0.0, np.nan, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="constant"):
        S.kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="n = 0"):
        S.kendall_tau([], [])
    with pytest.raises(ValueError, match="at least 2"):
        S.kendall_tau([1.0], [2.0])
    with pytest.raises(ValueError, match="block"):
        S.kendall_tau([1.0, 2.0], [2.0, 1.0], block=0)


def test_mse():
    assert S.mse([1.0, 2.0], [0.0, 4.0]) == pytest.approx(2.5)
    assert S.mse(np.ones((2, 3)), np.zeros((2, 3))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        S.mse(np.ones((2, 3)), np.ones(6))
    with pytest.raises(ValueError, match="n = 0"):
        S.mse([], [])


def test_mcnemar_exact_and_chi2():
    # 3 episodes a-only, 9 b-only out of 40: exact two-sided binomial.
    a = np.array([1] * 3 + [0] * 9 + [1] * 10 + [0] * 18, bool)
    b = np.array([0] * 3 + [1] * 9 + [1] * 10 + [0] * 18, bool)
    res = S.mcnemar_test(a, b)
    assert (res.n10, res.n01, res.method) == (3, 9, "exact")
    assert res.p_value == pytest.approx(2 * sum(math.comb(12, i) for i in range(4)) / 2**12)
    # Large discordant counts: χ² with continuity correction, p = P[χ²₁ > stat].
    a2 = np.r_[np.ones(40), np.zeros(20), np.ones(100)].astype(bool)
    b2 = np.r_[np.zeros(40), np.ones(20), np.ones(100)].astype(bool)
    r2 = S.mcnemar_test(a2, b2)
    assert (r2.n10, r2.n01, r2.method) == (40, 20, "chi2")
    assert r2.statistic == pytest.approx(19**2 / 60)
    assert r2.p_value == pytest.approx(2 * S.norm_sf(math.sqrt(19**2 / 60)))
    stat, p, *_ = r2  # a tuple: (statistic, p_value, n01, n10, method)
    assert (stat, p) == (r2.statistic, r2.p_value) and r2[1] == r2.p_value
    assert S.mcnemar_test(a, a).p_value == 1.0
    assert S.mcnemar_test([1, 0], [0, 1]).p_value == 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        S.mcnemar_test(a, b[:-1])
    with pytest.raises(ValueError, match="binary"):
        S.mcnemar_test([0, 2], [0, 1])
    with pytest.raises(ValueError, match="n = 0"):
        S.mcnemar_test([], [])
