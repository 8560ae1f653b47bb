"""Label stage: paper Eq. (1)-(3) and the π*0.6 options, on synthetic episodes and a real store."""

import numpy as np
import pytest

from recap_jax import labeling
from recap_jax import returns as ret_math
from recap_jax.data import Episode, EpisodeStore

TA = 24


def _metas(n=40, seed=0, max_steps=120, demo_every=0, iterations=1):
    rng = np.random.default_rng(seed)
    metas, values = [], {}
    for i in range(n):
        success = bool(rng.random() < 0.4)
        n_steps = int(rng.integers(20, max_steps)) if success else max_steps
        steps = np.arange(0, n_steps, TA, dtype=np.int32)
        tags = {"kind": "demo" if demo_every and i % demo_every == 0 else "rollout", "iteration": i % iterations}
        metas.append(labeling.EpisodeMeta(i, steps, n_steps, success, tags))
        values[i] = rng.uniform(-1, 0, size=steps.shape).astype(np.float32)
    return metas, values


def test_paper_labels_top_fraction_and_eq1():
    metas, values = _metas()
    cfg = labeling.LabelConfig(max_steps=120)
    out, summary = labeling.compute_labels(metas, values, cfg)
    all_adv = np.concatenate([out["advantage"][m.episode_id] for m in metas])
    all_lab = np.concatenate([out["label"][m.episode_id] for m in metas])
    n = all_adv.size
    assert abs(all_lab.mean() - 0.3) <= 1.0 / n + 1e-9
    eta = np.quantile(all_adv, 0.7)
    np.testing.assert_array_equal(all_lab, (all_adv >= eta).astype(np.int8))
    assert summary["thresholds"][0] == pytest.approx(eta, abs=1e-6)
    for m in metas:
        r = np.asarray(ret_math.time_to_completion_returns(len(m.image_steps), m.n_steps, m.success, 120))
        np.testing.assert_allclose(out["return"][m.episode_id], r, atol=1e-6)
        np.testing.assert_allclose(out["advantage"][m.episode_id], r - values[m.episode_id], atol=1e-6)
        assert out["label"][m.episode_id].dtype == np.int8
        assert out["value"][m.episode_id].dtype == np.float32


def test_n_step_advantage_matches_hand_computation():
    metas, values = _metas(n=6, seed=1)
    n = 2
    out, _ = labeling.compute_labels(metas, values, labeling.LabelConfig(max_steps=120, n_step=n))
    for m in metas:
        g, v = out["return"][m.episode_id].astype(np.float64), values[m.episode_id].astype(np.float64)
        q = len(g)
        want = [g[i] - (g[i + n] if i + n < q else 0.0) + (v[i + n] if i + n < q else 0.0) - v[i] for i in range(q)]
        np.testing.assert_allclose(out["advantage"][m.episode_id], want, atol=1e-5)


def test_step_returns_with_failure_penalty():
    steps = np.array([[0, 24, 48, 72, 96]], np.int32)
    mask = np.ones_like(steps, bool)
    fail = labeling.batch_returns(
        steps, mask, np.array([120]), np.array([False]), kind="steps", max_steps=120, c_fail=30
    )
    s = 119 + 30
    want = [-((120 - 1 - t) + 30) / s for t in steps[0]]
    np.testing.assert_allclose(fail[0], want, atol=1e-5)
    assert fail[0, 0] == pytest.approx(-1.0)
    ok = labeling.batch_returns(steps, mask, np.array([100]), np.array([True]), kind="steps", max_steps=120, c_fail=30)
    np.testing.assert_allclose(ok[0], [-(100 - 1 - t) / s for t in steps[0]], atol=1e-5)


def test_per_iteration_fractions_and_forced_demos():
    metas, values = _metas(n=60, seed=2, demo_every=5, iterations=2)
    cfg = labeling.LabelConfig(max_steps=120, iteration_fractions=((1, 0.5),))
    out, summary = labeling.compute_labels(metas, values, cfg)
    for it, f in ((0, 0.3), (1, 0.5)):
        lab = np.concatenate(
            [out["label"][m.episode_id] for m in metas if m.tags["iteration"] == it and m.tags["kind"] != "demo"]
        )
        assert abs(lab.mean() - f) <= 1.0 / lab.size + 1e-9
    demo = np.concatenate([out["label"][m.episode_id] for m in metas if m.tags["kind"] == "demo"])
    assert np.all(demo == 1) and summary["num_forced"] == 12
    assert set(summary["thresholds"]) == {0, 1}


def test_bad_inputs_raise():
    metas, values = _metas(n=3)
    with pytest.raises(ValueError, match="no values"):
        labeling.compute_labels(metas, {0: values[0]})
    with pytest.raises(ValueError, match="one per imaged step"):
        labeling.compute_labels(metas, {**values, 1: np.zeros(99, np.float32)}, labeling.LabelConfig(max_steps=120))
    with pytest.raises(ValueError, match="returns"):
        labeling.LabelConfig(returns="td")
    with pytest.raises(ValueError, match="fractions"):
        labeling.LabelConfig(positive_fraction=1.5)


def test_label_store_writes_annotations(tmp_path):
    store = EpisodeStore(tmp_path / "store", create=True)
    metas, values = _metas(n=10, seed=3)
    eps = []
    for m in metas:
        t, q = m.n_steps, len(m.image_steps)
        eps.append(
            Episode(
                m.episode_id,
                np.zeros((t, 32), np.float32),
                np.zeros((t, 36), np.float32),
                m.image_steps,
                np.zeros((q, 4, 4, 3), np.uint8),
                "bend to pick up the box",
                m.success,
                t,
                m.tags,
            )
        )
    store.append(eps[:6])
    store.append(eps[6:])
    summary = labeling.label_store(store, values, labeling.LabelConfig(max_steps=120))
    assert summary["num_episodes"] == 10
    for name, dtype in (("value", np.float32), ("return", np.float32), ("advantage", np.float32), ("label", np.int8)):
        ann = store.read_annotation(name)
        assert set(ann) == set(range(10))
        assert all(
            a.dtype == dtype and a.shape == m.image_steps.shape for a, m in zip((ann[i] for i in range(10)), metas)
        )
    labels = np.concatenate([store.read_annotation("label")[i] for i in range(10)])
    assert abs(labels.mean() - 0.3) <= 1.0 / labels.size + 1e-9
