"""Evaluation statistics (host-side numpy + math; no scipy): rates, intervals, tests, ranking metrics.

Rates and interval ends are fractions in [0, 1]. Every two-sided p-value uses the standard normal
(computed with ``math.erfc``) unless stated otherwise; the inverse normal is Acklam's rational
approximation refined by one Halley step (|error| < 1e-13 on (1e-300, 1 − 1e-16)).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np

# -------------------------------------------------------------------------------- normal distribution


def norm_cdf(x: float) -> float:
    """Φ(x) for the standard normal."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def norm_sf(x: float) -> float:
    """1 − Φ(x), accurate in the upper tail."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)  # fmt: skip
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


def norm_ppf(p: float) -> float:
    """Φ⁻¹(p) for p in (0, 1): Acklam's approximation plus one Halley refinement step."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"norm_ppf needs a probability in (0, 1), got {p!r}")
    p_low = 0.02425
    if p < p_low:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        )
    elif p <= 1.0 - p_low:
        q = p - 0.5
        r = q * q
        x = (
            (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5])
            * q
            / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
        )
    else:
        q = math.sqrt(-2.0 * math.log1p(-p))
        x = -(((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        )
    # Halley step on f(x) = Φ(x) − p (use the upper tail for p > 0.5 to keep precision).
    e = norm_cdf(x) - p if p <= 0.5 else (1.0 - p) - norm_sf(x)
    u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


def _z_crit(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    return norm_ppf(0.5 + 0.5 * confidence)


# -------------------------------------------------------------------------------- proportions


def _check_counts(k, n, name: str = "") -> tuple[int, int]:
    """Validates a success count k of n trials; integral floats (e.g. 154.0) are accepted."""
    sfx = f" ({name})" if name else ""
    out = []
    for v, what in ((k, "k"), (n, "n")):
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
            raise ValueError(f"{what}{sfx} must be an int count, got {v!r}")
        if not (math.isfinite(v) and float(v).is_integer()):
            raise ValueError(f"{what}{sfx} must be an int count, got {v!r}")
        out.append(int(v))
    k, n = out
    if n <= 0:
        raise ValueError(f"n{sfx} must be positive, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n{sfx}, got k={k}, n={n}")
    return k, n


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n.

    Returns: (low, high), fractions in [0, 1].
    """
    k, n = _check_counts(k, n)
    z = _z_crit(confidence)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_ztest(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Two-proportion z-test of p1 = p2 with the pooled standard error.

    z = (p1 − p2) / sqrt(p̄(1 − p̄)(1/n1 + 1/n2)), p̄ = (k1 + k2)/(n1 + n2).

    Returns: (z, two-sided p). If both samples are all-success or all-failure, (0.0, 1.0).
    """
    k1, n1 = _check_counts(k1, n1, "sample 1")
    k2, n2 = _check_counts(k2, n2, "sample 2")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0.0:
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / se
    return z, min(1.0, 2.0 * norm_sf(abs(z)))


def difference_interval(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Wald (unpooled) interval for the difference d = p1 − p2: d ± z·sqrt(p1(1 − p1)/n1 + p2(1 − p2)/n2).

    Returns: (d, low, high) as fractions (low/high clipped to [−1, 1]).
    """
    k1, n1 = _check_counts(k1, n1, "sample 1")
    k2, n2 = _check_counts(k2, n2, "sample 2")
    z = _z_crit(confidence)
    p1, p2 = k1 / n1, k2 / n2
    half = z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return p1 - p2, max(-1.0, p1 - p2 - half), min(1.0, p1 - p2 + half)


def _paired_binary(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Validates two aligned per-episode outcome arrays (bool, or ints/floats that are exactly 0 or 1)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"shape mismatch: a {a.shape} vs b {b.shape} (want equal 1-d per-episode outcomes)")
    if a.size == 0:
        raise ValueError("need at least one paired episode (n = 0)")
    for x, name in ((a, "a"), (b, "b")):
        if x.dtype != bool and not (np.issubdtype(x.dtype, np.number) and np.all((x == 0) | (x == 1))):
            raise ValueError(f"{name} must hold binary outcomes (bool or 0/1), got dtype {x.dtype}")
    return a.astype(bool), b.astype(bool)


def paired_difference_interval(a, b, confidence: float = 0.95) -> tuple[float, float, float]:
    """Newcombe's hybrid score interval for the difference of two paired proportions (1998, method 10).

    With n paired episodes, cell counts n11 (both succeed), n10 (a only), n01 (b only), n00 (neither):
    p1 = (n11 + n10)/n, p2 = (n11 + n01)/n, d = p1 − p2 = (n10 − n01)/n. (l1, u1), (l2, u2) are the
    Wilson score intervals of p1 and p2, and φ is the correlation of the 2×2 table with Newcombe's
    correction: φ = max(n11·n00 − n10·n01 − n/2, 0)/√(efgh) when n11·n00 > n10·n01, else
    (n11·n00 − n10·n01)/√(efgh), with e, f, g, h the four margins (φ = 0 if a margin is 0). Then
    low = d − √((p1 − l1)² − 2φ(p1 − l1)(u2 − p2) + (u2 − p2)²),
    high = d + √((u1 − p1)² − 2φ(u1 − p1)(p2 − l2) + (p2 − l2)²).
    (Newcombe RG, Stat Med 1998;17:2635–50.)

    Args: a, b: bool/0-1 arrays [N], per-episode success of each condition, aligned by episode.
    Returns: (d, low, high) as fractions in [−1, 1].
    """
    a, b = _paired_binary(a, b)
    n = a.size
    n11, n10 = int(np.sum(a & b)), int(np.sum(a & ~b))
    n01, n00 = int(np.sum(~a & b)), int(np.sum(~a & ~b))
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = wilson_interval(n11 + n10, n, confidence)
    l2, u2 = wilson_interval(n11 + n01, n, confidence)
    margins = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    cross = n11 * n00 - n10 * n01
    if margins == 0:
        phi = 0.0
    elif cross > 0:
        phi = max(cross - n / 2.0, 0.0) / math.sqrt(margins)
    else:
        phi = cross / math.sqrt(margins)
    d = p1 - p2
    dl = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    du = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return d, max(-1.0, d - dl), min(1.0, d + du)


class McNemarResult(NamedTuple):
    """Paired comparison of two conditions on the same episodes (a tuple: ``stat, p, *_ = result``).

    statistic: min(n01, n10), the smaller discordant count the binomial tail is taken at.
    p_value: two-sided p.
    n01: episodes where condition a failed and b succeeded; n10: a succeeded and b failed.
    method: "exact" (two-sided binomial on the discordant pairs, p = ½) or "mid-p" (its mid-p variant).
    """

    statistic: float
    p_value: float
    n01: int
    n10: int
    method: str


def _mcnemar_counts(n01: int, n10: int, mid_p: bool) -> McNemarResult:
    """Exact (or mid-p) two-sided binomial test of n10 vs n01; integer arithmetic, exact at any count."""
    d = n01 + n10
    method = "mid-p" if mid_p else "exact"
    if d == 0:
        return McNemarResult(0.0, 1.0, n01, n10, method)
    m = min(n01, n10)
    tail = Fraction(sum(math.comb(d, i) for i in range(m + 1)), 2**d)  # P[Bin(d, ½) ≤ m]
    if mid_p:
        tail -= Fraction(math.comb(d, m), 2 ** (d + 1))
    return McNemarResult(float(m), min(1.0, float(2 * tail)), n01, n10, method)


def mcnemar_test(a, b, mid_p: bool = False) -> McNemarResult:
    """McNemar's exact test for paired binary outcomes (e.g. two prompts evaluated on the same reset keys).

    With n01, n10 the discordant counts, d = n01 + n10 and m = min(n01, n10): under H0 each discordant
    pair favours a or b with probability ½, so the exact two-sided p = min(1, 2·P[Bin(d, ½) ≤ m]) at
    every d (no χ² switch). ``mid_p=True`` gives the mid-p variant,
    p = min(1, 2·(P[Bin(d, ½) ≤ m] − ½·P[Bin(d, ½) = m])), less conservative. No discordant pairs: p = 1.

    Args: a, b: bool/0-1 arrays [N], the per-episode success of each condition, aligned by episode;
        mid_p: use the mid-p variant.
    Returns: :class:`McNemarResult` (``method`` is "exact" or "mid-p").
    """
    a, b = _paired_binary(a, b)
    return _mcnemar_counts(int(np.sum(~a & b)), int(np.sum(a & ~b)), mid_p)


def pooled_mcnemar(pairs) -> tuple[float, int, int]:
    """Exact McNemar test on discordant counts summed over strata (seeds): the Mantel–Haenszel test for
    matched pairs, which for 1:1 matching reduces to the exact binomial test on Σn10 vs Σn01.

    Args: pairs: sequence of (a, b), each two aligned bool/0-1 arrays [N_s] (stratum s; N_s may differ).
    Returns: (two-sided exact p, n10 = Σ a-only successes, n01 = Σ b-only successes).
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pooled_mcnemar needs at least one (a, b) pair")
    n10 = n01 = 0
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{i}] must be an (a, b) pair, got {len(pair)} items")
        a, b = _paired_binary(*pair)
        n10 += int(np.sum(a & ~b))
        n01 += int(np.sum(~a & b))
    return _mcnemar_counts(n01, n10, False).p_value, n10, n01


# -------------------------------------------------------------------------------- regression / ranking


def _paired_1d(x, y, names=("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if np.shape(x) != np.shape(y):
        raise ValueError(f"shape mismatch: {names[0]} has {x.size} entries, {names[1]} {y.size}")
    if x.size == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty (n = 0)")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{names[0]} or {names[1]} contains non-finite values")
    return x, y


def mse(pred, target) -> float:
    """Mean squared error over all entries. Args: pred, target of equal shape. Returns: float."""
    if np.shape(pred) != np.shape(target):
        raise ValueError(f"shape mismatch: pred {np.shape(pred)} vs target {np.shape(target)}")
    p, t = _paired_1d(pred, target, ("pred", "target"))
    return float(np.mean((p - t) ** 2))


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + e - 1) + 1.0
    return ranks


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + ½·P(tie) (Mann–Whitney U / (n_pos·n_neg)).

    Args: scores: float [N]; labels: bool/0-1 [N] (1 = positive, e.g. a successful episode).
    Returns: float in [0, 1].
    """
    s, lab = _paired_1d(scores, labels, ("scores", "labels"))
    if not np.all((lab == 0) | (lab == 1)):
        raise ValueError("labels must be binary (bool or 0/1)")
    pos = lab == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = _midranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _tie_sums(x: np.ndarray) -> tuple[float, float, float]:
    _, counts = np.unique(x, return_counts=True)
    t = counts.astype(np.float64)
    return float(np.sum(t * (t - 1))), float(np.sum(t * (t - 1) * (t - 2))), float(np.sum(t * (t - 1) * (2 * t + 5)))


_PAIR_BUDGET = 4_000_000  # elements per temporary pair block in kendall_tau (~32 MB of float64)


def kendall_tau(x, y, block: int = 2048) -> tuple[float, float]:
    """Kendall's τ-b and a two-sided p-value from the normal approximation with tie-corrected variance.

    τ_b = S / sqrt((n0 − n1)(n0 − n2)), S = Σ_{i<j} sign(x_i − x_j)·sign(y_i − y_j), n0 = n(n − 1)/2,
    n1 = Σ t(t − 1)/2 over tie groups of x, n2 likewise for y. Var(S) = (v0 − vt − vu)/18
    + Σt(t−1)·Σu(u−1)/(2n(n−1)) + Σt(t−1)(t−2)·Σu(u−1)(u−2)/(9n(n−1)(n−2)), v0 = n(n−1)(2n+5);
    z = S/sqrt(Var(S)), p = 2·(1 − Φ(|z|)). Exact pair counting in blocks of at most ``block`` rows
    (O(n²) time, at most ~4M pair entries in memory at once; n = 10⁴ takes a few seconds).

    Args: x, y: float [N], N ≥ 2, neither constant.
    Returns: (tau_b, p).
    """
    x, y = _paired_1d(x, y)
    n = x.size
    if n < 2:
        raise ValueError(f"kendall_tau needs at least 2 pairs, got n={n}")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    block = max(1, min(block, _PAIR_BUDGET // n))  # bound the temporary [block, n] arrays
    s = 0.0
    for i in range(0, n, block):
        dx = np.sign(x[i : i + block, None] - x[None, :])
        dy = np.sign(y[i : i + block, None] - y[None, :])
        s += float(np.sum(dx * dy))
    s /= 2.0  # every unordered pair was counted twice
    tx1, tx2, tx3 = _tie_sums(x)
    ty1, ty2, ty3 = _tie_sums(y)
    n0 = n * (n - 1) / 2.0
    denom = math.sqrt((n0 - tx1 / 2.0) * (n0 - ty1 / 2.0))
    if denom == 0.0:
        raise ValueError("kendall_tau is undefined when x or y is constant")
    tau = s / denom
    var = (n * (n - 1) * (2 * n + 5) - tx3 - ty3) / 18.0 + tx1 * ty1 / (2.0 * n * (n - 1))
    if n > 2:
        var += tx2 * ty2 / (9.0 * n * (n - 1) * (n - 2))
    z = s / math.sqrt(var)
    return float(tau), min(1.0, 2.0 * norm_sf(abs(z)))
