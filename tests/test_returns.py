"""Tests for recap_jax.returns: Eq. (1) returns, π*0.6 rewards/returns and N-step advantages."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_jax import returns as R


def test_eq1_success_and_failure():
    r = R.time_to_completion_returns(5, 300, True)
    chex.assert_shape(r, (5,))
    chex.assert_type(r, jnp.float32)
    base = -299 / 599
    np.testing.assert_allclose(r, [base, 0.75 * base, 0.5 * base, 0.25 * base, 0.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(R.time_to_completion_returns(25, 600, False), -np.ones(25))
    # Faster episodes get higher returns at the same decision point; all values in [-1, 0].
    fast, slow = R.time_to_completion_returns(8, 150, True), R.time_to_completion_returns(8, 500, True)
    assert np.all(np.asarray(fast)[:-1] > np.asarray(slow)[:-1])
    # Numpy / jax integer scalars (e.g. from an Episode) are accepted as the static query count.
    np.testing.assert_allclose(R.time_to_completion_returns(np.int64(5), jnp.int32(300), np.bool_(True)), r)
    np.testing.assert_allclose(R.time_to_completion_returns(3, 600, True)[0], -1.0, rtol=1e-6)
    # Q == 1: the only decision point is the episode start (the i = 0 value), documented choice.
    np.testing.assert_allclose(R.time_to_completion_returns(1, 300, True), [base], rtol=1e-6)
    np.testing.assert_allclose(R.time_to_completion_returns(1, 300, False), [-1.0])


def test_eq1_padded_row_jit_vmap_no_retrace():
    nq = np.array([5, 1, 25, 3])
    ns = np.array([300, 40, 600, 77])
    ok = np.array([True, True, False, True])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def batch(q, n, s):
        return jax.vmap(lambda a, b, c: R.time_to_completion_returns(a, b, c, 600, 25))(q, n, s)

    vals, mask = batch(nq, ns, ok)
    chex.assert_shape([vals, mask], (4, 25))
    chex.assert_type([vals, mask], [jnp.float32, jnp.bool_])
    for b in range(4):
        q = int(nq[b])
        ref = R.time_to_completion_returns(q, int(ns[b]), bool(ok[b]))
        np.testing.assert_allclose(vals[b, :q], ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(mask[b], np.arange(25) < q)
        np.testing.assert_array_equal(vals[b, q:], 0.0)
    batch(nq[::-1], ns, ok)  # new values, same shapes: no retrace
    v1, m1 = R.time_to_completion_returns(5, 300, True, max_queries=8)
    np.testing.assert_allclose(v1, vals[0, :8], atol=1e-7)
    np.testing.assert_array_equal(m1, np.arange(8) < 5)


def test_eq1_rejects_bad_input():
    with pytest.raises(ValueError, match="num_queries"):
        R.time_to_completion_returns(0, 10, True)
    with pytest.raises(ValueError, match="n_steps"):
        R.time_to_completion_returns(3, 0, True)
    with pytest.raises(ValueError, match="n_steps"):
        R.time_to_completion_returns(3, 601, True)
    with pytest.raises(ValueError, match="exceeds max_queries"):
        R.time_to_completion_returns(9, 10, True, max_queries=8)
    with pytest.raises(ValueError, match="max_steps"):
        R.time_to_completion_returns(3, 1, True, max_steps=1)


def test_step_rewards_and_mc_returns():
    rw, mask = R.step_rewards(4, True, 5.0, 10)
    chex.assert_shape([rw, mask], (10,))
    s = 9 + 5.0
    np.testing.assert_allclose(rw[:4], [-1 / s, -1 / s, -1 / s, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(rw[4:], 0.0)
    np.testing.assert_array_equal(mask, np.arange(10) < 4)
    g = R.monte_carlo_returns(rw, mask)
    np.testing.assert_allclose(g[:4], [-3 / s, -2 / s, -1 / s, 0.0], rtol=1e-6)
    # A failure at the step limit has return exactly −1; every return lies in [−1, 0].
    rf, mf = R.step_rewards(10, False, 5.0, 10)
    gf = R.monte_carlo_returns(rf, mf)
    np.testing.assert_allclose(gf[0], -1.0, rtol=1e-6)
    np.testing.assert_allclose(gf[-1], -5 / s, rtol=1e-6)
    # C_fail = 0 and success reproduces Eq. (1) at control-step resolution.
    r0, m0 = R.step_rewards(300, True, 0.0, 600)
    g0 = R.monte_carlo_returns(r0, m0)
    np.testing.assert_allclose(g0[:300], R.time_to_completion_returns(300, 300, True), atol=1e-5)
    # Discounting, against a direct sum.
    x = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
    gd = R.monte_carlo_returns(x, discount=0.9)
    ref = np.array([[sum(0.9**k * row[t + k] for k in range(7 - t)) for t in range(7)] for row in x])
    np.testing.assert_allclose(gd, ref, rtol=1e-5, atol=1e-6)


def test_step_rewards_vmap_and_errors():
    lengths, succ = np.array([3, 10, 7]), np.array([True, False, False])
    rw, mask = jax.jit(jax.vmap(lambda a, b: R.step_rewards(a, b, 2.0, 10)))(lengths, succ)
    chex.assert_shape(rw, (3, 10))
    for i in range(3):
        ref, ref_mask = R.step_rewards(int(lengths[i]), bool(succ[i]), 2.0, 10)
        np.testing.assert_allclose(rw[i], ref)
        np.testing.assert_array_equal(mask[i], ref_mask)
    with pytest.raises(ValueError, match="length"):
        R.step_rewards(0, True, 1.0, 10)
    with pytest.raises(ValueError, match="c_fail"):
        R.step_rewards(3, True, -1.0, 10)
    with pytest.raises(ValueError, match="non-finite"):
        R.monte_carlo_returns(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="discount"):
        R.monte_carlo_returns(np.zeros(3), discount=0.0)


def _brute_n_step(r, v, n, length):
    out = np.zeros(len(r))
    for t in range(length):
        s = sum(r[k] for k in range(t, min(t + n, length)))
        boot = v[t + n] if t + n < length else 0.0
        out[t] = s + boot - v[t]
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 50])
def test_n_step_matches_brute_force_with_padding(n):
    rng = np.random.default_rng(n)
    q = 9
    r = rng.normal(size=(4, q)).astype(np.float32)
    v = rng.normal(size=(4, q)).astype(np.float32)
    lengths = np.array([9, 5, 1, 0])
    mask = np.arange(q) < lengths[:, None]
    r_pad = np.where(mask, r, 1e6).astype(np.float32)  # padding must not leak
    got_m = R.n_step_advantages(r_pad, np.where(mask, v, -1e6), n, mask=mask)
    got_l = R.n_step_advantages(r_pad, np.where(mask, v, -1e6), n, length=lengths)
    chex.assert_shape(got_m, (4, q))
    chex.assert_type(got_m, jnp.float32)
    for b in range(4):
        np.testing.assert_allclose(got_m[b], _brute_n_step(r[b], v[b], n, lengths[b]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_l, got_m, atol=1e-6)


def test_n_step_telescopes_to_return_minus_value():
    g = np.asarray(R.time_to_completion_returns(6, 200, True))
    v = np.linspace(-0.9, -0.1, 6).astype(np.float32)
    r = R.returns_to_rewards(g)
    np.testing.assert_allclose(R.monte_carlo_returns(r), g, atol=1e-6)
    np.testing.assert_allclose(R.n_step_advantages(r, v, 6), g - v, atol=1e-6)
    np.testing.assert_allclose(R.n_step_advantages(r, v, 2)[:4], g[:4] - g[2:] + v[2:] - v[:4], atol=1e-6)


def test_n_step_jit_vmap_no_retrace_and_errors():
    rng = np.random.default_rng(7)
    r = rng.normal(size=(5, 12)).astype(np.float32)
    v = rng.normal(size=(5, 12)).astype(np.float32)
    lengths = np.array([12, 3, 7, 0, 1])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(r, v, L):
        return R.n_step_advantages(r, v, 3, length=L)

    out = f(r, v, lengths)
    loop = np.stack([R.n_step_advantages(r[i], v[i], 3, length=lengths[i]) for i in range(5)])
    np.testing.assert_allclose(out, loop, atol=1e-6)
    vm = jax.vmap(lambda a, b, c: R.n_step_advantages(a, b, 3, length=c))(r, v, lengths)
    np.testing.assert_allclose(vm, out, atol=1e-6)
    f(r * 2, v, lengths[::-1])
    with pytest.raises(ValueError, match="n must"):
        R.n_step_advantages(r, v, 0)
    with pytest.raises(ValueError, match="shape mismatch"):
        R.n_step_advantages(r, v[:, :5], 2)
    with pytest.raises(ValueError, match="prefix"):
        R.n_step_advantages(r[0], v[0], 2, mask=np.arange(12) % 2 == 0)
    bad = r.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="rewards contains non-finite"):
        R.n_step_advantages(bad, v, 2)
    bad[0, 0], bad[1, 5] = 0.0, np.inf  # non-finite padding past the valid length is fine
    np.testing.assert_array_equal(R.n_step_advantages(bad, v, 2, length=lengths)[1, 3:], 0.0)
    with pytest.raises(ValueError, match="not both"):
        R.n_step_advantages(r, v, 2, mask=np.ones((5, 12), bool), length=lengths)
    with pytest.raises(ValueError, match="length must lie"):
        R.n_step_advantages(r, v, 2, length=np.array([13, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="length shape"):
        R.n_step_advantages(r, v, 2, length=np.array([3, 3]))
