"""Open-loop diagnostic helpers: window extraction (same convention as the loader) and per-group RMSE."""

import numpy as np

from experiments import openloop
from recap_jax.data import Episode


def _episode(n=50, stride=24):
    rng = np.random.default_rng(0)
    steps = np.arange(0, n, stride, dtype=np.int32)
    return Episode(
        episode_id=3,
        states=rng.normal(size=(n, 32)).astype(np.float32),
        actions=rng.normal(size=(n, 36)).astype(np.float32),
        image_steps=steps,
        images=np.zeros((steps.size, 4, 4, 3), np.uint8),
        prompt="p",
        success=True,
        n_steps=n,
        tags={"kind": "demo"},
    )


def test_windows_follow_the_loader_convention():
    ep = _episode()
    ws = list(openloop.windows([ep], 30))
    assert [w[2] for w in ws] == [0, 24, 48]
    i, q, t, state, _, acts, mask = ws[1]
    assert (i, q, t) == (0, 1, 24)
    np.testing.assert_array_equal(state, ep.states[24])
    np.testing.assert_array_equal(acts[:26], ep.actions[24:50])
    np.testing.assert_array_equal(acts[26:], np.repeat(ep.actions[-1:], 4, 0))
    assert mask.sum() == 26 and mask[:26].all()


def test_group_rmse_masks_and_groups():
    target = np.zeros((2, 30, 36), np.float32)
    pred = target.copy()
    pred[:, :, 31] = 0.5  # height off by 0.5 everywhere
    pred[:, 10:, 21:28] = 9.0  # right arm wrong only after step 10
    mask = np.ones((2, 30), bool)
    r = openloop.group_rmse(pred, target, mask, upto=10)
    assert r["height"] == 0.5 and r["right_arm"] == 0.0 and r["right_hand"] == 0.0
    mask[:, 5:] = False
    assert openloop.group_rmse(pred, target, mask, upto=30)["right_arm"] == 0.0
