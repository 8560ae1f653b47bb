"""Value-function training: split, learning an image-only task, metrics vs recap_jax.stats, stage end to end."""

import os

import numpy as np
import pytest

from recap_jax import labeling, stats
from recap_jax import value_training as vt
from recap_jax.data import Episode, EpisodeStore

Q = 4
MAX_STEPS = 100


def _episodes(n=160, seed=0, hw=(16, 16)):
    """Episodes whose outcome is visible in the image only (a bright square for successes); state is zero."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        success = bool(i % 2)
        n_steps = int(rng.integers(20, 50)) if success else MAX_STEPS
        steps = np.linspace(0, n_steps - 1, Q).astype(np.int32)
        images = rng.integers(0, 90, size=(Q, *hw, 3)).astype(np.uint8)
        if success:
            r, c = rng.integers(0, hw[0] - 8, size=2)
            images[:, r : r + 8, c : c + 8] = 250
        eps.append(
            Episode(
                i,
                np.zeros((n_steps, 32), np.float32),
                np.zeros((n_steps, 36), np.float32),
                steps,
                images,
                "bend to pick up the box",
                success,
                n_steps,
                {"kind": "rollout", "iteration": 0},
            )
        )
    return eps


# 20 epochs: at 12 the held-out episode AUC of this easy task was 0.91-0.98 over three data seeds on the
# 2026-11-30 host (AMD EPYC; the same test had passed in earlier CI runs), too close to the bar; at 20 it is
# 0.97-1.0 (step AUC 0.96-0.99), at the same run time.
CFG = vt.ValueTrainConfig(backbone="cnn", epochs=20, batch_size=32, max_steps=MAX_STEPS, cnn_channels=(8, 16, 16, 16))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vf"))
    eps = _episodes()
    result, metrics, values = vt.value_stage(eps, CFG, out)
    return eps, result, metrics, values, out


def test_stratified_split_is_deterministic_and_balanced():
    ids = np.arange(100)
    succ = ids < 36
    tr, va = vt.stratified_split(ids, succ, 0.1, 42)
    assert len(va) == 10 and len(tr) == 90 and not np.intersect1d(tr, va).size
    assert succ[va].sum() == 4  # round(0.1 * 36) successes, round(0.1 * 64) = 6 failures
    _, va2 = vt.stratified_split(ids, succ, 0.1, 42)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, vt.stratified_split(ids, succ, 0.1, 7)[1])


def test_learns_image_only_task(trained):
    eps, result, metrics, values, out = trained
    assert metrics["episode_auc"] > 0.95 and metrics["step_auc"] > 0.95
    assert metrics["mse"] < metrics["naive_mse"]
    assert result.best_epoch == int(np.argmin([h["val_mse"] for h in result.history]))
    assert metrics["clock_only_mse"] > 0 and metrics["labels_out_of_fold"] is False
    assert os.path.getsize(os.path.join(out, "value_calibration.png")) > 1000
    assert set(values) == {e.episode_id for e in eps}
    assert all(values[e.episode_id].shape == (Q,) for e in eps)


def test_save_load_and_labels_hit_fraction(trained, tmp_path):
    eps, result, _, values, out = trained
    params = vt.load_value_params(out)
    data = vt.decision_points(eps[:5], max_steps=MAX_STEPS)
    np.testing.assert_allclose(
        vt.predict(params, data.inputs, data.states), vt.predict(result.params, data.inputs, data.states), atol=1e-6
    )
    store = EpisodeStore(tmp_path / "s", create=True)
    store.append(eps)
    summary = labeling.label_store(store, values, labeling.LabelConfig(positive_fraction=0.3, max_steps=MAX_STEPS))
    lab = np.concatenate(list(store.read_annotation("label").values()))
    assert abs(lab.mean() - 0.3) <= 1.0 / lab.size + 1e-9 and summary["num_decisions"] == lab.size
    v = store.read_annotation("value")
    np.testing.assert_allclose(v[3], values[3])


def test_metrics_agree_with_stats():
    data = vt.decision_points(_episodes(n=12, seed=3), max_steps=MAX_STEPS)
    rng = np.random.default_rng(0)
    v = np.clip(data.returns + rng.normal(0, 0.3, len(data)), -1, 0)
    m = vt.value_metrics(v, data, baseline=-0.6)
    first = data.index == 0
    assert m["mse"] == pytest.approx(stats.mse(v, data.returns))
    assert m["naive_mse"] == pytest.approx(np.mean((data.returns + 0.6) ** 2))
    assert m["episode_auc"] == pytest.approx(stats.roc_auc(v[first], data.success[first]))
    assert m["step_auc"] == pytest.approx(stats.roc_auc(v, data.success))
    tau, p = stats.kendall_tau(v[first], data.returns[first])
    assert (m["kendall_tau"], m["kendall_p"]) == pytest.approx((tau, p))
    assert m["episodes"] == 12 and m["steps"] == 12 * Q


def test_cross_fit_never_predicts_own_training_episodes():
    data = vt.decision_points(_episodes(n=24, seed=4), max_steps=MAX_STEPS)
    cfg = vt.ValueTrainConfig(backbone="features", epochs=2, batch_size=16, max_steps=MAX_STEPS)
    feats = data.inputs.reshape(len(data), -1)[:, :64].astype(np.float32) / 255.0
    values, results = vt.cross_fit_values(data.with_inputs(feats), cfg, folds=3)
    assert set(values) == set(range(24))
    data = data.with_inputs(feats)
    seen = set()
    for res in results:
        held = set(res.val_ids.tolist())  # the fold's held-out episodes: predicted, never trained on
        assert held and not held & set(res.train_ids.tolist()) and not held & seen
        seen |= held
        # Every held-out episode's V̂ is the prediction of the one model that never saw it, not of a model
        # trained on it (in-sample V̂ would match another fold's model, or none).
        own = vt.predict_values(res.params, data.select(np.array(sorted(held))))
        others = [vt.predict_values(r.params, data.select(np.array(sorted(held)))) for r in results if r is not res]
        for eid in held:
            np.testing.assert_allclose(values[eid], own[eid], atol=1e-6)
            assert all(np.max(np.abs(values[eid] - o[eid])) > 1e-4 for o in others)
    assert seen == set(range(24))


def test_cross_validated_metrics_pool_out_of_fold_predictions():
    data = vt.decision_points(_episodes(n=24, seed=5), max_steps=MAX_STEPS)
    cfg = vt.ValueTrainConfig(backbone="features", epochs=2, batch_size=16, max_steps=MAX_STEPS)
    data = data.with_inputs(data.inputs.reshape(len(data), -1)[:, :64].astype(np.float32) / 255.0)
    ids, fold_of = vt.fold_assignment(data, 3, cfg.split_seed)
    _, succ = data.episodes()
    for k in range(3):  # stratified: 4 successes and 4 failures per fold
        assert succ[fold_of == k].sum() == 4 and (fold_of == k).sum() == 8
    metrics, values, results = vt.cross_validated_metrics(data, cfg, folds=3)
    assert metrics["episodes"] == 24 and metrics["steps"] == 24 * Q and metrics["folds"] == 3
    again, _ = vt.cross_fit_values(data, cfg, folds=3)  # deterministic: the same models again
    assert set(again) == set(values) and all(np.allclose(again[i], values[i], atol=1e-6) for i in values)
    v = np.zeros(len(data))
    for eid, vals in values.items():
        sel = np.flatnonzero(data.episode_ids == eid)
        v[sel[np.argsort(data.index[sel])]] = vals
    first = data.index == 0
    assert metrics["episode_auc"] == pytest.approx(stats.roc_auc(v[first], data.success[first]))
    assert metrics["mse"] == pytest.approx(stats.mse(v, data.returns), rel=1e-5)
    naive = np.zeros(len(data))
    for k in range(3):
        naive[np.isin(data.episode_ids, ids[fold_of == k])] = data.select(ids[fold_of != k]).returns.mean()
    assert metrics["naive_mse"] == pytest.approx(stats.mse(naive, data.returns))
    assert np.isfinite(metrics["fold_episode_auc"]) and len(results) == 3
    with pytest.raises(ValueError, match="folds"):
        vt.fold_assignment(data, 1)


def test_bad_inputs_raise():
    data = vt.decision_points(_episodes(n=6), max_steps=MAX_STEPS)
    with pytest.raises(ValueError, match="precomputed features"):
        vt.train_value(data, vt.ValueTrainConfig(backbone="system2"))
    with pytest.raises(ValueError, match="backbone"):
        vt.ValueTrainConfig(backbone="vit")
    with pytest.raises(ValueError, match="overlap"):
        vt.train_value(data, CFG, train_ids=[0, 1, 2], val_ids=[2, 3])


def test_resnet_features_are_frozen_imagenet_features():
    import jax.numpy as jnp
    from flax import nnx

    from recap_jax.models import resnet

    model = resnet.ResNet((1, 1, 1, 1), 2, None, rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).integers(0, 255, size=(3, 12, 20, 3)).astype(np.uint8)
    feats = vt.resnet_features(model, images, batch_size=2, size=(32, 32))
    assert feats.shape == (3, model.feature_dim) and feats.dtype == np.float32
    want = model.features(resnet.imagenet_preprocess(jnp.asarray(images), (32, 32)))
    np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5)
