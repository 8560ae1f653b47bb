"""Tests for recap_jax.advantage: A = r − V̂, percentile threshold, int8 labels, prompts, dropout."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recap_jax import advantage as A


def test_advantages_and_errors():
    r = np.array([[-1.0, -0.5], [0.0, -0.25]], np.float32)
    v = np.array([[-0.5, -0.5], [-0.1, -0.75]], np.float32)
    adv = A.advantages(r, v)
    chex.assert_shape(adv, (2, 2))
    chex.assert_type(adv, jnp.float32)
    np.testing.assert_allclose(adv, [[-0.5, 0.0], [0.1, 0.5]], atol=1e-7)
    with pytest.raises(ValueError, match="shape mismatch"):
        A.advantages(r, v[0])
    with pytest.raises(ValueError, match="returns contains non-finite"):
        A.advantages(np.where(r == -1.0, np.nan, r), v)
    with pytest.raises(ValueError, match="values contains non-finite"):
        A.advantages(r, np.where(v == -0.75, -np.inf, v))


@pytest.mark.parametrize("n", [10, 97, 1000, 1001])
def test_top_fraction_labels_thirty_percent_within_one(n):
    adv = np.random.default_rng(n).normal(size=n).astype(np.float32)
    thr = A.advantage_threshold(adv, 0.3)
    chex.assert_shape(thr, ())
    np.testing.assert_allclose(thr, np.quantile(adv, 0.7), rtol=1e-5)
    lab = A.advantage_labels(adv, thr)
    chex.assert_type(lab, jnp.int8)
    lab = np.asarray(lab)
    assert abs(np.sum(lab == 1) - 0.3 * n) <= 1
    assert set(np.unique(lab)) <= {0, 1}


def test_threshold_with_mask_ignores_padding_and_labels_masked_minus_one():
    rng = np.random.default_rng(0)
    adv = rng.normal(size=(8, 25)).astype(np.float32)
    mask = np.arange(25) < rng.integers(1, 26, size=(8, 1))
    padded = np.where(mask, adv, 1e9).astype(np.float32)
    thr = A.advantage_threshold(padded, 0.3, mask)
    np.testing.assert_allclose(thr, np.quantile(adv[mask], 0.7), rtol=1e-5)
    lab = A.advantage_labels(padded, thr, mask)
    np.testing.assert_array_equal(np.asarray(lab)[~mask], -1)
    assert abs(int(np.sum(np.asarray(lab) == 1)) - 0.3 * mask.sum()) <= 1
    # jit with a traced mask gives the same, without retracing on new values.
    f = jax.jit(chex.assert_max_traces(n=1)(lambda a, m: A.label_advantages(a, jnp.zeros_like(a), 0.3, m)))
    adv_j, thr_j, lab_j = f(padded, mask)
    np.testing.assert_allclose(adv_j, padded, rtol=1e-6)
    np.testing.assert_allclose(thr_j, thr, rtol=1e-6)
    np.testing.assert_array_equal(lab_j, lab)
    f(padded * 2, mask)


def test_ties_go_high_and_labels_broadcast_thresholds():
    adv = np.array([0.0, 0.0, 0.0, 1.0], np.float32)
    np.testing.assert_array_equal(A.advantage_labels(adv, 0.0), [1, 1, 1, 1])
    rows = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(A.advantage_labels(rows, np.array([[2.0], [3.0]])), [[0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="threshold shape"):
        A.advantage_labels(rows, np.zeros((3, 1)))
    with pytest.raises(ValueError, match="threshold contains non-finite"):
        A.advantage_labels(rows, np.nan)
    with pytest.raises(ValueError, match="adv contains non-finite"):
        A.advantage_labels(np.array([0.0, np.nan]), 0.0)
    np.testing.assert_array_equal(A.advantage_labels(np.array([0.5, np.nan]), 0.0, np.array([True, False])), [1, -1])


def test_threshold_rejects_bad_input():
    adv = np.arange(10.0, dtype=np.float32)
    for f in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_fraction"):
            A.advantage_threshold(adv, f)
    with pytest.raises(ValueError, match="non-finite"):
        A.advantage_threshold(np.where(adv == 3.0, np.nan, adv))
    with pytest.raises(ValueError, match="non-finite"):
        A.advantage_threshold(np.where(adv == 3.0, np.inf, adv), 0.3, adv < 5)
    np.testing.assert_allclose(A.advantage_threshold(np.where(adv == 7.0, np.nan, adv), 0.5, adv < 5), 2.0)
    with pytest.raises(ValueError, match="mask selects no entries"):
        A.advantage_threshold(adv, 0.3, np.zeros(10, bool))
    with pytest.raises(ValueError, match="mask shape"):
        A.advantage_threshold(adv, 0.3, np.ones(9, bool))
    with pytest.raises(ValueError, match="empty"):
        A.advantage_threshold(np.zeros((0,)))


def test_format_prompt():
    ins = "bend to pick up the cracker box"
    assert A.format_prompt(ins, "high") == "advantage: high. bend to pick up the cracker box"
    assert A.format_prompt(ins, "LOW") == "advantage: low. bend to pick up the cracker box"
    assert A.format_prompt(ins, 1) == A.format_prompt(ins, np.int8(1)) == A.format_prompt(ins, jnp.int8(1))
    assert A.format_prompt(ins, 0) == "advantage: low. " + ins
    assert A.format_prompt(ins, None) == A.format_prompt(ins, -1) == ins
    assert A.format_prompts(ins, np.array([1, 0, -1], np.int8)) == [
        "advantage: high. " + ins,
        "advantage: low. " + ins,
        ins,
    ]
    with pytest.raises(ValueError, match="unknown advantage label string 'positive'"):
        A.format_prompt(ins, "positive")
    with pytest.raises(ValueError, match="unknown advantage label 2"):
        A.format_prompt(ins, 2)
    with pytest.raises(ValueError, match="advantage label must be"):
        A.format_prompt(ins, 0.5)
    with pytest.raises(ValueError, match="instruction must be a str"):
        A.format_prompt(b"bytes", 1)
    with pytest.raises(ValueError, match="2 instructions for 3 labels"):
        A.format_prompts([ins, ins], [1, 0, 1])


def test_drop_labels():
    labels = np.where(np.arange(20000) % 3 == 0, 1, 0).astype(np.int8)
    labels[:100] = -1
    out = jax.jit(A.drop_labels)(jax.random.key(0), labels, 0.3)
    chex.assert_type(out, jnp.int8)
    chex.assert_shape(out, labels.shape)
    kept = np.asarray(out) != -1
    np.testing.assert_array_equal(np.asarray(out)[kept], labels[kept])
    np.testing.assert_array_equal(np.asarray(out)[:100], -1)
    np.testing.assert_allclose(np.mean(~kept[100:]), 0.3, atol=0.015)
    np.testing.assert_array_equal(A.drop_labels(jax.random.key(1), labels, 0.0), labels)
    np.testing.assert_array_equal(A.drop_labels(jax.random.key(1), labels, 1.0), -1)
    with pytest.raises(ValueError, match="drop probability"):
        A.drop_labels(jax.random.key(0), labels, 1.2)
    with pytest.raises(ValueError, match="integer"):
        A.drop_labels(jax.random.key(0), labels.astype(np.float32), 0.3)


def test_group_helpers():
    rng = np.random.default_rng(1)
    adv = np.concatenate([rng.normal(0, 1, 300), rng.normal(5, 1, 200)])
    groups = np.repeat([0, 1], [300, 200])
    thr = A.group_thresholds(adv, groups, 0.4)
    assert set(thr) == {0, 1}
    np.testing.assert_allclose(thr[1], np.quantile(adv[300:], 0.6))
    lab = A.group_labels(adv, groups, 0.4)
    assert lab.dtype == np.int8
    frac = A.positive_fraction(lab, groups)
    assert abs(frac[0] - 0.4) <= 1 / 300 and abs(frac[1] - 0.4) <= 1 / 200
    # One global threshold would label almost all of group 1 high.
    glob = np.asarray(A.advantage_labels(adv, A.advantage_threshold(adv, 0.4)))
    assert A.positive_fraction(glob, groups)[1] > 0.9
    assert abs(A.positive_fraction(glob) - 0.4) <= 1 / 500
    mask = np.arange(500) % 2 == 0
    lab_m = A.group_labels(adv, groups, 0.4, mask)
    np.testing.assert_array_equal(lab_m[~mask], -1)
    with pytest.raises(ValueError, match="shape mismatch"):
        A.group_thresholds(adv, groups[:10])
    with pytest.raises(ValueError, match="top_fraction"):
        A.group_labels(adv, groups, 1.0)
