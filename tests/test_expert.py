"""Scripted expert (envs/g1/expert.py) and right-arm kinematics (envs/g1/kinematics.py)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

import envs
from envs.g1 import constants as C
from envs.g1 import expert as E
from envs.g1 import kinematics as K

HOLD_STEPS = 100  # 2 s at 50 Hz
SETTLE_STEPS = 20  # the hold window starts 0.4 s after the arm lift ends


def test_hand_fk_matches_mujoco_and_ik_converges():
    m = mujoco.MjModel.from_xml_path(str(C.SCENE_XML))
    d = mujoco.MjData(m)
    rng = np.random.default_rng(0)
    chain = K.right_arm_chain()
    wrist = m.body("right_wrist_yaw_link").id
    for _ in range(3):
        d.qpos[:] = m.qpos0
        d.qpos[C.QPOS_JOINTS] = rng.uniform(-0.4, 0.4, C.NUM_JOINTS)
        d.qpos[:3] = rng.uniform(-0.2, 0.2, 3) + np.array([0.0, 0.0, 0.6])
        quat = rng.normal(size=4)
        d.qpos[3:7] = quat / np.linalg.norm(quat)
        mujoco.mj_kinematics(m, d)
        joints = d.qpos[C.QPOS_JOINTS]
        args = (jnp.asarray(d.qpos[:3]), jnp.asarray(d.qpos[3:7]), jnp.asarray(joints[C.WAIST]))
        pos, rot = K.hand_fk(chain, *args, jnp.asarray(joints[C.RIGHT_ARM]))
        np.testing.assert_allclose(pos, d.xpos[wrist], atol=1e-5)
        np.testing.assert_allclose(rot, d.xmat[wrist].reshape(3, 3), atol=1e-5)
        np.testing.assert_allclose(pos + rot @ chain.palm, d.site_xpos[m.site(C.RIGHT_PALM_SITE).id], atol=1e-5)
        target = pos + jnp.asarray([0.04, -0.03, 0.05])
        q = K.solve_arm_ik(chain, *args, jnp.zeros(7), target, rot, iters=20)
        p2, r2 = K.hand_fk(chain, *args, q)
        assert float(jnp.linalg.norm(p2 - target)) < 2e-3
        assert float(jnp.linalg.norm(K.rotation_error(r2, rot))) < 2e-2
        assert bool(jnp.all((q >= chain.lower - 1e-6) & (q <= chain.upper + 1e-6)))


@functools.lru_cache(maxsize=1)
def _env():
    # success_lift > 1 never ends an episode on success, so the grasp can be watched after the lift.
    return envs.make("G1BendPick-v0", success_lift=2.0)


@functools.lru_cache(maxsize=1)
def _first_obs():
    """First observations of 2 envs. The interface test only reads them (shapes, the t = 0 command, noise, DART),
    so the reset skips the standing-still stabilisation: no physics step to trace and compile (the expert's
    episodes in ``_expert_run`` keep it)."""
    env = envs.make("G1BendPick-v0", stabilize_steps=0)
    return jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(3), 2)).obs


def test_expert_act_interface():
    obs = _first_obs()
    params = E.default_config()
    act = jax.jit(E.expert_act)
    out = act(params, obs, jnp.zeros((2, 8), jnp.int32), jax.random.PRNGKey(0))
    assert out.shape == (2, E.HORIZON, C.ACTION_SIZE) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # prompt and beta are ignored; t = 0 starts at the standing command with zero velocity commands.
    again = E.expert_act(params, obs, None, jax.random.PRNGKey(0), beta=2.0)
    np.testing.assert_allclose(out, again, atol=1e-5)
    np.testing.assert_allclose(out[:, 0, C.A_HEIGHT], 0.75, atol=1e-6)
    np.testing.assert_array_equal(out[..., C.A_UNSUPPORTED], 0.0)
    noisy = act(E.noisy_config(1.0), obs, None, jax.random.PRNGKey(0))
    assert float(jnp.abs(noisy - out)[..., C.S_RIGHT_ARM].mean()) > 0.05
    # DART: the noised chunk drives, the clean expert's chunk from the same observation is the label.
    run, label = jax.jit(E.dart_act)(E.noisy_config(1.0), obs, None, jax.random.PRNGKey(0))
    np.testing.assert_allclose(run, noisy, atol=1e-5)
    np.testing.assert_allclose(label, out, atol=1e-5)
    with pytest.raises(ValueError, match="privileged"):
        E.expert_act(params, {"state": obs["state"]}, None, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="noise level"):
        E.noisy_config(1.5)


@functools.lru_cache(maxsize=1)
def _expert_run():
    """4 vmapped expert episodes (seeded), long enough for the lift and a 2 s hold: per-step records [T, 4]."""
    env = _env()
    params = E.default_config()
    n_steps = int(params.lift_end) + SETTLE_STEPS + HOLD_STEPS
    keys = jax.random.split(jax.random.PRNGKey(11), 4)
    return jax.device_get(jax.jit(lambda k: E.rollout_records(env, params, k, n_steps))(keys))


def test_expert_succeeds_on_four_seeds():
    rec = _expert_run()
    lift, contact, fell = rec["lift"], rec["contact"], rec["fell"]
    success = (lift >= 0.9) & (contact > 0)  # the env's success condition (success_lift is disabled here)
    assert success.any(axis=0).all(), lift.max(axis=0)  # within ~300 steps (< the 600-step episode limit)
    assert not fell.any()


def test_grasp_holds_box_for_2s_with_under_1cm_slip():
    rec = _expert_run()
    lift, contact, rel = rec["lift"], rec["contact"], rec["rel"]
    t0 = int(E.default_config().lift_end) + SETTLE_STEPS  # after the arm lift; the body is bent and static
    assert (contact[t0 : t0 + HOLD_STEPS] > 0).all()  # still in the hand
    assert (lift[t0 : t0 + HOLD_STEPS] >= 0.5).all()  # and still off the table
    hold = rel[t0 : t0 + HOLD_STEPS]
    slip = np.linalg.norm(hold - hold[0], axis=-1).max(axis=0)  # box position relative to the palm
    print(f"max slip over the 2 s hold per seed (m): {np.round(slip, 4)}")
    assert (slip < 0.01).all(), slip
