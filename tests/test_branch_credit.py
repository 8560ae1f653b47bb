"""benchmarks/branch_credit.py: the branched key, the prefix check and the group labels (pure, fast)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import branch_credit as bc
from recap_jax.data import Episode


def _episode(eid: int, success: bool, n: int, q: int, states=None) -> Episode:
    steps = np.arange(0, n, 24, dtype=np.int32)
    return Episode(
        episode_id=eid,
        states=np.zeros((n, 32), np.float32) if states is None else states,
        actions=np.zeros((n, 36), np.float32),
        image_steps=steps,
        images=np.zeros((steps.size, 4, 4, 3), np.uint8),
        prompt="p",
        success=success,
        n_steps=n,
        tags={"kind": "rollout", "branch_q": q},
    )


def test_branched_key_changes_only_at_the_branch_point():
    seen = []

    def act(params, obs, prompt_ids, key, *, beta, **kw):
        seen.append(jax.random.key_data(key))
        return jnp.zeros((1, 30, 36))

    bact = bc.BranchedAct(act, 24)
    key = jax.random.key(0)
    for t in (0, 24, 48):
        for b in (0, 1):
            bact(None, {"t": jnp.array([t])}, None, key, beta=1.0, branch_q=jnp.array([1]), branch_id=jnp.array([b]))
    same = [np.array_equal(seen[2 * i], seen[2 * i + 1]) for i in range(3)]
    assert same == [True, False, True]  # the two branches differ at q = 1 (t = 24) only
    assert np.array_equal(seen[0], jax.random.key_data(key))  # elsewhere the episode's own key
    assert hash(bact) == hash(bc.BranchedAct(act, 24))  # a usable static argument


def test_branch_temperature_scales_only_the_branch_point():
    scales = []

    def act(params, obs, prompt_ids, key, *, beta, noise_scale=1.0, **kw):
        scales.append(float(noise_scale))
        return jnp.zeros((1, 30, 36))

    bact = bc.BranchedAct(act, 24, temperature=2.5)
    for t in (0, 24, 48):
        bact(
            None,
            {"t": jnp.array([t])},
            None,
            jax.random.key(0),
            beta=1.0,
            branch_q=jnp.array([1]),
            branch_id=jnp.array([0]),
        )
    assert scales == [1.0, 2.5, 1.0]


def test_group_labels_mark_only_disagreeing_groups_at_their_branch_point():
    k = 2
    eps = {
        0: _episode(0, True, 100, 1),  # scene 0: success vs failure at q = 1
        1: _episode(1, False, 216, 1),
        2: _episode(2, True, 150, 2),  # scene 1: both succeed, the first faster
        3: _episode(3, True, 200, 2),
        4: _episode(4, False, 30, 3),  # scene 2: ended before its branch point q = 3
        5: _episode(5, True, 216, 3),
    }
    labels, counts = bc.group_labels(eps, k, 216, speed=False)
    assert labels[0].tolist() == [-1, 1, -1, -1, -1] and labels[1].tolist()[1] == 0
    assert (labels[1] >= 0).sum() == 1
    assert all((labels[i] < 0).all() for i in (2, 3, 4, 5))
    assert counts["by_q"] == {1: [1, 1], 2: [1, 0], 3: [1, 0]}  # [groups, groups whose plays disagree]
    del counts["by_q"]
    assert counts == {"groups": 3, "mixed_success": 1, "labelled_groups": 1, "high": 1, "low": 1}
    labels, counts = bc.group_labels(eps, k, 216, speed=True)
    assert labels[2][2] == 1 and labels[3][2] == 0  # the faster success is the high one
    assert counts["labelled_groups"] == 2 and counts["mixed_success"] == 1


def test_prefix_difference_reads_up_to_the_branch_observation():
    a = np.zeros((100, 32), np.float32)
    b = a.copy()
    b[25:] = 1.0  # differs after the branch point's observation (q = 1: step 24)
    eps = {0: _episode(0, True, 100, 1, a), 1: _episode(1, False, 100, 1, b)}
    assert bc.prefix_difference(eps, 2, 24) == 0.0
    b[24] = 0.5
    assert bc.prefix_difference(eps, 2, 24) == 0.5


def test_probe_auc_is_held_out():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(np.float64)
    assert bc._ridge_logistic_auc(x, y, np.arange(200)) > 0.9  # a linear signal is found on held-out rows
    noise = rng.normal(size=(200, 50))
    assert abs(bc._ridge_logistic_auc(noise, y, np.arange(200)) - 0.5) < 0.15  # no signal, no in-sample fit shown


def test_a_store_of_other_settings_is_refused(tmp_path):
    """Branched ids s·K + b mean other plays under another K, branch plan or policy: reusing them is refused
    before anything is loaded or compiled."""
    from experiments import common

    run = tmp_path / "run"
    (run / "collect").mkdir(parents=True)
    common.atomic_write_json(run / "collect" / common.MARKER, {"outputs": {"checkpoint_step": 5}})
    common.atomic_write_json(
        run / "branch" / "settings.json", {"branches": 4, "policy_step": 5, "seed": 0, "branch_q": [1, 2]}
    )
    cfg = type("Cfg", (), {"seed": 0})()
    with pytest.raises(ValueError, match="other settings"):
        bc.collect_branches(cfg, run, np.array([1, 3]), 4, 8)
