"""Issue 22: the value function assigns credit (beats the clock), labels use out-of-fold V̂, and the value
stage and the label stage share one return definition."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments import glue
from experiments.presets import CPU, SMOKE, override
from recap_jax import labeling
from recap_jax import value_training as vt
from recap_jax.data import Episode
from recap_jax.models import value_net

TA = 24
LIMIT = 150


def _episodes(n, seed, visible):
    """Synthetic rollouts: successes end at 100-139 steps (5-6 decision points), failures at the limit (7), so the
    decision index alone predicts the outcome late in the episode. ``visible``: from the 4th decision point on
    (t ≥ 72) the state's dim 0 carries the outcome (±1.5 plus noise); before that, and always when not visible,
    the state is noise independent of the outcome."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        success = bool(rng.random() < 0.5)
        n_steps = int(rng.integers(100, 140)) if success else LIMIT
        states = rng.normal(0, 1, (n_steps, 32)).astype(np.float32)
        if visible:
            states[72:, 0] += 1.5 if success else -1.5
        steps = np.arange(0, n_steps, TA, dtype=np.int32)
        images = np.zeros((len(steps), 4, 4, 3), np.uint8)
        eps.append(
            Episode(
                i,
                states,
                np.zeros((n_steps, 36), np.float32),
                steps,
                images,
                "x",
                success,
                n_steps,
                {"kind": "rollout"},
            )
        )
    return eps


CFG = vt.ValueTrainConfig(
    backbone="state", epochs=40, batch_size=64, learning_rate=1e-3, clock_steps=LIMIT, folds=3, target="two_hot"
)


def _fit(visible, seed):
    # The "state" backbone: no image, the network reads the state and the clock (stage_data applies its features).
    data = vt.stage_data(_episodes(120, seed, visible), CFG, vt.features_for(CFG))
    assert data.inputs.shape == (len(data), 1) and not data.inputs.any()
    return data, vt.cross_fit(data, CFG)


@pytest.fixture(scope="module")
def visible():
    return _fit(True, 0)


@pytest.fixture(scope="module")
def hidden():
    return _fit(False, 1)


def test_value_beats_the_clock_when_the_outcome_is_observed(visible):
    _, cf = visible
    m = cf.metrics
    assert m["labels_out_of_fold"] is True and m["folds"] == 3 and m["episodes"] == 120
    assert m["clock_only_mse"] < m["naive_mse"]  # the clock alone lowers the MSE ...
    assert m["mse"] < 0.9 * m["clock_only_mse"]  # ... the observation lowers it further
    assert m["within_bin_step_auc"] > 0.65
    assert m["goal"]["mse_vs_clock_only"] is True and m["goal"]["episodes"] is False and m["goal"]["met"] is False


def test_clock_cannot_game_the_metrics(hidden):
    data, cf = hidden
    m = cf.metrics
    # Outcome independent of the observations: the value function can learn the clock, nothing more.
    assert m["clock_only_mse"] < m["naive_mse"]
    assert m["mse"] > 0.9 * m["clock_only_mse"]
    assert 0.35 < m["within_bin_step_auc"] < 0.65
    # A prediction that is a function of the decision index alone scores exactly 0.5 within bins, however well
    # it separates the outcomes overall.
    clock = vt.clock_only(data, data.index)
    assert vt.within_bin_auc(clock, data.success, data.index) == 0.5
    assert vt.within_bin_auc(-(data.index**2.0), data.success, data.index) == 0.5
    assert vt.value_metrics(clock, data, 0.0)["step_auc"] > 0.6


def test_labels_are_out_of_fold(visible):
    data, cf = visible
    ids = np.unique(data.episode_ids)
    held = np.concatenate([r.val_ids for r in cf.results])
    assert sorted(held.tolist()) == ids.tolist()
    for r in cf.results:
        assert not np.intersect1d(r.train_ids, r.val_ids).size
        sub = data.select(r.val_ids)
        np.testing.assert_allclose(
            np.concatenate([cf.values[int(e)] for e in r.val_ids]),
            np.concatenate(list(vt.predict_values(r.params, sub).values())),
            atol=1e-5,
        )
    # Each fold keeps the epoch that is best on the *other* folds' held-out episodes.
    evals = np.asarray(cf.epochs)
    for k, r in enumerate(cf.results):
        rows = [h for h in (cf.results[j].history for j in range(len(cf.results)) if j != k)]
        n = [len(data.select(cf.results[j].val_ids)) for j in range(len(cf.results)) if j != k]
        pooled = sum(np.array([h["val_mse"] for h in hist]) * nj for hist, nj in zip(rows, n)) / sum(n)
        assert r.best_epoch == evals[int(np.argmin(pooled))]


def test_clock_only_and_bins():
    data = vt.decision_points(_episodes(10, 3, False))
    tr = data.select(np.arange(6))
    pred = vt.clock_only(tr, np.array([0, 1, 6, 9]))
    for i, p in zip([0, 1, 6], pred):
        assert p == pytest.approx(tr.returns[tr.index == i].mean())
    assert pred[3] == pred[2]  # unseen index: the largest seen index below it
    assert np.isnan(vt.within_bin_auc(np.zeros(3), np.array([True, True, True]), np.array([0, 1, 2])))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"value_training.return_horizon": 216},
        {"value_training.returns": "steps", "value_training.c_fail": 50.0},
        {"value_training.returns": "steps", "value_training.return_horizon": 400},
        {"labels.n_step": 2, "value_training.returns": "steps"},
    ],
)
def test_value_stage_and_labels_compute_identical_returns(changes):
    cfg = override(SMOKE, **changes)
    vcfg, lcfg = glue.value_config(cfg), glue.label_config(cfg)
    eps = _episodes(8, 4, True)
    data = vt.decision_points(eps, returns=vcfg.returns, max_steps=vcfg.max_steps, c_fail=vcfg.c_fail)
    metas = [labeling.EpisodeMeta.of(e) for e in eps]
    values = {m.episode_id: np.zeros(len(m.image_steps), np.float32) for m in metas}
    ann, _ = labeling.compute_labels(metas, values, lcfg)
    np.testing.assert_array_equal(np.concatenate([ann["return"][m.episode_id] for m in metas]), data.returns)
    # The value bins cover every return the definition can give at this episode limit.
    assert vcfg.v_min <= data.returns.min() and data.returns.max() <= vcfg.v_max
    lo, _ = labeling.return_range(vcfg.returns, max_steps=vcfg.max_steps, c_fail=vcfg.c_fail, episode_limit=LIMIT)
    fails = data.returns[~data.success & (data.index == 0)]
    np.testing.assert_allclose(fails, lo, rtol=1e-5)  # failures at the limit reach the bottom of the range


def test_default_return_is_eq1_over_599_whatever_the_limit():
    for cfg in (SMOKE, CPU):
        v, lab = glue.value_config(cfg), glue.label_config(cfg)
        assert (v.returns, v.max_steps, lab.returns, lab.max_steps) == ("eq1", 600, "eq1", 600)
        assert (v.v_min, v.v_max) == (-1.0, 0.0)
    # A success of n steps starts at -(n - 1)/599, not -(n - 1)/(limit - 1).
    eps = _episodes(6, 5, False)
    data = vt.decision_points(eps, max_steps=glue.value_config(SMOKE).max_steps)
    for e in eps:
        if e.success:
            r0 = data.returns[(data.episode_ids == e.episode_id) & (data.index == 0)][0]
            assert r0 == pytest.approx(-(e.n_steps - 1) / 599, rel=1e-6)
    with pytest.raises(ValueError, match="return_horizon"):
        glue.value_config(override(SMOKE, **{"value_training.return_horizon": 100}))
    with pytest.raises(ValueError, match="value_training"):
        glue.value_config(dataclasses.replace(SMOKE, value=(("max_steps", 300),)))


def test_clock_setting_reaches_the_network_and_provenance():
    from experiments import recap_bendpick

    for cfg in (SMOKE, CPU):
        assert cfg.value_training.clock and glue.value_config(cfg).clock_steps == cfg.env.episode_length
        assert any("episode clock (value_training.clock" in d for d in recap_bendpick.deviations(cfg))
    off = override(CPU, **{"value_training.clock": False})
    assert glue.value_config(off).clock_steps == 0
    assert not any("value_training.clock" in d for d in recap_bendpick.deviations(off))
    data = vt.decision_points(_episodes(4, 6, False))
    data = data.with_inputs(np.zeros((len(data), 2), np.float32))
    params = value_net.init_value_params(jax.random.key(0), "features", 2, clock_steps=LIMIT)
    a = vt.predict(params, data.inputs, data.states, steps=data.steps)
    b = vt.predict(params, data.inputs, data.states, steps=np.zeros_like(data.steps))
    assert np.abs(a - b).max() > 1e-4
    with pytest.raises(ValueError, match="control step"):
        vt.predict(params, data.inputs, data.states)
