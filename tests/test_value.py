"""Tests for recap_jax.value: bins, discretisation, two-hot, cross-entropy and expected value."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_jax import value


def test_bin_centers():
    b = value.bin_centers()
    chex.assert_shape(b, (201,))
    chex.assert_type(b, jnp.float32)
    np.testing.assert_allclose([b[0], b[100], b[200]], [-1.0, -0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(np.diff(np.asarray(b)), 0.005, atol=1e-6)
    with pytest.raises(ValueError, match="num_bins"):
        value.bin_centers(1)
    with pytest.raises(ValueError, match="v_min < v_max"):
        value.bin_centers(11, 0.0, -1.0)


def test_discretize_nearest_and_clips():
    r = np.array([-1.0, -0.0026, -0.0024, 0.0, -0.5, 3.0, -7.0], np.float32)
    idx = value.discretize(r)
    chex.assert_type(idx, jnp.int32)
    np.testing.assert_array_equal(idx, [0, 199, 200, 200, 100, 200, 0])
    # Brute force: argmin distance to the centres.
    rr = np.random.default_rng(0).uniform(-1.2, 0.2, size=500).astype(np.float32)
    brute = np.argmin(np.abs(np.clip(rr, -1, 0)[:, None] - np.asarray(value.bin_centers())[None]), axis=1)
    got = np.asarray(value.discretize(rr))
    frac = np.abs((np.clip(rr, -1, 0) + 1.0) / 0.005 % 1.0 - 0.5)
    far_from_halfway = frac > 1e-3
    np.testing.assert_array_equal(got[far_from_halfway], brute[far_from_halfway])
    assert np.all(np.abs(got - brute) <= 1)
    with pytest.raises(ValueError, match="non-finite"):
        value.discretize(np.array([0.0, np.nan]))


def test_two_hot_sums_to_one_and_preserves_mean():
    r = np.array([[-1.0, -0.3337, 0.0], [-0.5, 0.4, -0.0001]], np.float32)
    t = value.two_hot(r)
    chex.assert_shape(t, (2, 3, 201))
    t = np.asarray(t)
    np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
    assert np.all(t >= 0)
    assert np.max(np.sum(t > 0, -1)) <= 2
    np.testing.assert_allclose((t * np.asarray(value.bin_centers())).sum(-1), np.clip(r, -1, 0), atol=1e-6)


def test_categorical_loss_matches_hand_cross_entropy():
    logits = np.random.default_rng(0).normal(size=(4, 201)).astype(np.float32)
    r = np.array([-1.0, -0.25, -0.5012, 0.0], np.float32)
    loss = value.categorical_loss(logits, r)
    chex.assert_shape(loss, (4,))
    chex.assert_type(loss, jnp.float32)
    lp = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
    idx = [0, 150, 100, 200]
    np.testing.assert_allclose(loss, [-lp[i, k] for i, k in enumerate(idx)], rtol=1e-5)
    # Weights / mask: masked rows are exactly 0 even with non-finite logits; the mean divides by Σ w.
    w = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    bad = logits.copy()
    bad[1] = np.nan
    lw = value.categorical_loss(bad, r, weights=w)
    np.testing.assert_allclose(lw, np.asarray(loss) * np.asarray(w), rtol=1e-6)
    mean = value.categorical_loss(bad, r, weights=w, reduction="mean")
    chex.assert_shape(mean, ())
    np.testing.assert_allclose(mean, (loss[0] + loss[2]) / 2, rtol=1e-6)
    g = jax.grad(lambda lg: value.categorical_loss(lg, r, weights=w, reduction="mean"))(bad)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[1] == 0)
    # Two-hot target: −Σ t log p.
    th = value.categorical_loss(logits, r, target="two_hot")
    np.testing.assert_allclose(th, -(np.asarray(value.two_hot(r)) * lp).sum(-1), rtol=1e-5)


def test_loss_minimised_by_target_and_expected_value():
    r = np.array([-0.8, -0.1], np.float32)
    logits = np.log(np.asarray(value.two_hot(r)) + 1e-9)
    np.testing.assert_allclose(value.expected_value(logits), r, atol=1e-5)
    uniform = np.zeros((3, 201), np.float32)
    ev = value.expected_value(uniform)
    chex.assert_shape(ev, (3,))
    np.testing.assert_allclose(ev, -0.5, atol=1e-6)
    # Gradient descent on the CE moves V̂ to the target bin.
    target = jnp.array([-0.3])

    @jax.jit
    def descend(lg):
        g = jax.grad(lambda x: value.categorical_loss(x, target, reduction="mean"))
        return jax.lax.fori_loop(0, 200, lambda _, x: x - 5.0 * g(x), lg)

    lg = descend(jnp.zeros((1, 201)))
    np.testing.assert_allclose(value.expected_value(lg), target, atol=0.01)


def test_jit_vmap_no_retrace_and_custom_support():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5, 51)).astype(np.float32)
    r = rng.uniform(0.0, 10.0, size=(6, 5)).astype(np.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(lg, rr):
        return value.categorical_loss(lg, rr, 51, 0.0, 10.0), value.expected_value(lg, 51, 0.0, 10.0)

    loss, ev = f(logits, r)
    chex.assert_shape([loss, ev], (6, 5))
    np.testing.assert_allclose(loss, value.categorical_loss(logits, r, 51, 0.0, 10.0), rtol=1e-6)
    f(logits + 1.0, r)
    vm = jax.vmap(lambda lg, rr: value.categorical_loss(lg, rr, 51, 0.0, 10.0))(logits, r)
    np.testing.assert_allclose(vm, loss, rtol=1e-6)
    loop = [value.categorical_loss(logits[i], r[i], 51, 0.0, 10.0) for i in range(6)]
    np.testing.assert_allclose(np.stack(loop), loss, rtol=1e-6)
    ev = np.asarray(ev)
    assert np.all((ev >= 0.0) & (ev <= 10.0))


def test_loss_rejects_bad_input():
    logits = np.zeros((4, 201), np.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        value.categorical_loss(logits, np.zeros((3,)))
    with pytest.raises(ValueError, match="num_bins=101"):
        value.categorical_loss(logits, np.zeros((4,)), 101)
    with pytest.raises(ValueError, match="non-finite"):
        value.categorical_loss(logits, np.array([0.0, np.inf, 0.0, 0.0]))
    with pytest.raises(ValueError, match="unknown target"):
        value.categorical_loss(logits, np.zeros((4,)), target="hl_gauss")
    with pytest.raises(ValueError, match="weights shape"):
        value.categorical_loss(logits, np.zeros((4,)), weights=np.ones((2,)))
