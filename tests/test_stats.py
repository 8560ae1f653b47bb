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


def _table(n11, n10, n01, n00):
    """Paired outcomes with the given 2×2 cell counts (a-and-b, a-only, b-only, neither)."""
    a = np.r_[np.ones(n11), np.ones(n10), np.zeros(n01), np.zeros(n00)].astype(bool)
    b = np.r_[np.ones(n11), np.zeros(n10), np.ones(n01), np.zeros(n00)].astype(bool)
    return a, b


def test_mcnemar_exact_at_every_count():
    # 3 episodes a-only, 9 b-only out of 40: p = 2·P[Bin(12, ½) ≤ 3] = 2·299/4096.
    a, b = _table(10, 3, 9, 18)
    res = S.mcnemar_test(a, b)
    assert (res.n10, res.n01, res.method, res.statistic) == (3, 9, "exact", 3.0)
    assert res.p_value == pytest.approx(2 * 299 / 4096, rel=1e-12)
    mid = S.mcnemar_test(a, b, mid_p=True)  # minus ½·P[X = 3] = ½·220/4096 per tail
    assert mid.method == "mid-p" and mid.p_value == pytest.approx(2 * (299 - 110) / 4096, rel=1e-12)
    # 40 vs 20 discordant pairs: still exact (no χ² switch); P[Bin(60, ½) ≤ 20] by exact integer sums.
    a2, b2 = _table(100, 40, 20, 0)
    r2 = S.mcnemar_test(a2, b2)
    assert (r2.n10, r2.n01, r2.method) == (40, 20, "exact")
    assert r2.p_value == pytest.approx(2 * sum(math.comb(60, i) for i in range(21)) / 2**60, rel=1e-12)
    assert 0.01 < r2.p_value < 0.02  # 0.0135; the continuity-corrected χ² would give 0.0142
    stat, p, *_ = r2  # a tuple: (statistic, p_value, n01, n10, method)
    assert (stat, p) == (r2.statistic, r2.p_value) and r2[1] == r2.p_value
    # Zero discordant pairs (a = b): p = 1; all discordant one way (n = 10): p = 2/2¹⁰.
    assert S.mcnemar_test(a, a).p_value == 1.0 and S.mcnemar_test(a, a, mid_p=True).p_value == 1.0
    assert S.mcnemar_test(np.ones(10, bool), np.zeros(10, bool)).p_value == pytest.approx(2 / 1024)
    assert S.mcnemar_test(np.ones(10, bool), np.zeros(10, bool), mid_p=True).p_value == pytest.approx(1 / 1024)
    assert S.mcnemar_test([1, 0], [0, 1]).p_value == 1.0  # 1 vs 1: 2·P[Bin(2, ½) ≤ 1] capped at 1
    # Pairing matters: the same marginal rates (10 vs 20 of 40) as a table with 0 a-only pairs.
    assert S.mcnemar_test(*_table(10, 0, 10, 20)).p_value == pytest.approx(2 / 1024)
    assert S.mcnemar_test(*_table(0, 10, 20, 10)).p_value > 0.09


def test_mcnemar_and_paired_interval_bad_input():
    a, b = _table(10, 3, 9, 18)
    for fn in (S.mcnemar_test, S.paired_difference_interval):
        with pytest.raises(ValueError, match="shape mismatch"):
            fn(a, b[:-1])
        with pytest.raises(ValueError, match="binary"):
            fn([0, 2], [0, 1])
        with pytest.raises(ValueError, match="binary"):
            fn(np.array([0.5, 1.0]), np.array([0.0, 1.0]))
        with pytest.raises(ValueError, match="binary"):
            fn(np.array(["1", "0"]), np.array([True, False]))
        with pytest.raises(ValueError, match="n = 0"):
            fn([], [])
    with pytest.raises(ValueError, match="shape mismatch"):
        S.pooled_mcnemar([(a, b), (a, b[:-1])])
    with pytest.raises(ValueError, match="at least one"):
        S.pooled_mcnemar([])


def test_pooled_mcnemar_sums_discordant_counts():
    # Seed 1: 3 a-only, 9 b-only; seed 2: 2 a-only, 6 b-only -> exact test of 5 vs 15 of 20.
    pairs = [_table(10, 3, 9, 18), _table(4, 2, 6, 3)]
    p, n10, n01 = S.pooled_mcnemar(pairs)
    assert (n10, n01) == (5, 15)
    assert p == pytest.approx(2 * sum(math.comb(20, i) for i in range(6)) / 2**20, rel=1e-12)
    assert p < min(S.mcnemar_test(*pr).p_value for pr in pairs)  # pooling adds power
    assert S.pooled_mcnemar([_table(3, 0, 0, 4), _table(1, 0, 0, 1)]) == (1.0, 0, 0)
    # Opposite effects in two seeds cancel: 6 vs 6 overall.
    assert S.pooled_mcnemar([_table(0, 6, 0, 2), _table(0, 0, 6, 2)])[0] == 1.0


def _newcombe10(n11, n10, n01, n00, z=1.959963984540054):
    """Method 10 written out independently: Wilson limits as roots of (p − p̂)² = z²p(1 − p)/n."""
    n = n11 + n10 + n01 + n00

    def wilson(k):
        qa, qb, qc = 1 + z * z / n, -(2 * k / n + z * z / n), (k / n) ** 2
        r = math.sqrt(qb * qb - 4 * qa * qc)
        return (-qb - r) / (2 * qa), (-qb + r) / (2 * qa)

    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    (l1, u1), (l2, u2) = wilson(n11 + n10), wilson(n11 + n01)
    efgh = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    num = n11 * n00 - n10 * n01
    num = max(num - n / 2, 0) if num > 0 else num
    phi = num / math.sqrt(efgh) if efgh else 0.0
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return d, lo, hi


def test_paired_difference_interval_newcombe():
    # Newcombe (1998) Table II, method 10: (36, 12, 2, 0) -> 0.0569 to 0.3404; (263, 15, 3, 0) -> 0.0133 to 0.0764.
    d, lo, hi = S.paired_difference_interval(*_table(36, 12, 2, 0))
    assert d == pytest.approx(0.2) and (lo, hi) == pytest.approx((0.0569, 0.3404), abs=1e-4)
    d, lo, hi = S.paired_difference_interval(*_table(263, 15, 3, 0))
    assert d == pytest.approx(12 / 281) and (lo, hi) == pytest.approx((0.0133, 0.0764), abs=1e-4)
    # Positive correlation (the φ correction applies: 20·10 − 5·2 = 190 > n/2) and negative, vs the formula.
    for cells in ((20, 5, 2, 10), (30, 2, 1, 40), (3, 8, 1, 2), (0, 4, 3, 0)):
        assert S.paired_difference_interval(*_table(*cells)) == pytest.approx(_newcombe10(*cells), abs=1e-12)
    # Pairing narrows the interval below the unpaired Wald one when outcomes are correlated.
    _, lo, hi = S.paired_difference_interval(*_table(30, 2, 1, 40))
    _, wlo, whi = S.difference_interval(32, 73, 31, 73)
    assert hi - lo < whi - wlo
    # a = b: d = 0, symmetric around 0; all discordant one way (n = 5): d = 1, high = 1.
    a, _ = _table(4, 2, 0, 3)
    d, lo, hi = S.paired_difference_interval(a, a)
    assert d == 0.0 and lo == pytest.approx(-hi) and 0 < hi < 0.5
    d, lo, hi = S.paired_difference_interval(*_table(0, 5, 0, 0))
    assert (d, hi) == (1.0, 1.0) and lo == pytest.approx(_newcombe10(0, 5, 0, 0)[1]) and 0.3 < lo < 0.5
    d, lo, hi = S.paired_difference_interval(*_table(0, 0, 5, 0))
    assert (d, lo) == (-1.0, -1.0)
    # Wider at higher confidence.
    a, b = _table(20, 5, 2, 10)
    _, l90, h90 = S.paired_difference_interval(a, b, 0.90)
    _, l99, h99 = S.paired_difference_interval(a, b, 0.99)
    assert l99 < l90 and h99 > h90
