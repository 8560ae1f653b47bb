"""System-0 (envs/g1/system0.py): leg IK, command handling, and an MJX height sweep with moving arms."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

import envs
from envs.g1 import constants as C
from envs.g1 import system0


@functools.lru_cache(maxsize=1)
def _env():
    return envs.make("G1BendPick-v0")


def test_leg_ik_puts_flat_feet_under_the_pelvis():
    """FK of the IK solution: soles flat on z = 0, at the requested pelvis height/offset."""
    env = _env()
    m, params = env.mj_model, env.system0_params
    d = mujoco.MjData(m)
    feet = [i for i in range(m.ngeom) if "_foot" in (m.geom(i).name or "")]
    for height, pitch, dx in [(0.75, 0.0, 0.0), (0.6, 0.3, -0.05), (0.45, 0.55, 0.02)]:
        hip, knee, ankle = np.asarray(system0.leg_ik(params, jnp.float32(height), jnp.float32(pitch), jnp.float32(dx)))
        d.qpos[:] = m.qpos0
        d.qpos[C.QPOS_JOINTS] = 0.0
        d.qpos[:3] = [0.0, 0.0, height]
        d.qpos[3:7] = [np.cos(pitch / 2), 0.0, np.sin(pitch / 2), 0.0]
        for leg in (C.LEFT_LEG, C.RIGHT_LEG):
            d.qpos[7 + leg.start : 7 + leg.stop] = [hip, 0.0, 0.0, knee, ankle, 0.0]
        mujoco.mj_kinematics(m, d)
        soles = np.array([d.geom_xpos[i, 2] - m.geom_size[i, 0] for i in feet])
        np.testing.assert_allclose(soles, 0.0, atol=2e-3)  # all 8 foot spheres touch z = 0: flat feet
        ankle_x = d.xpos[params.left_ankle_body, 0]
        np.testing.assert_allclose(0.0 - ankle_x, dx, atol=2e-3)


def test_command_validation_waist_order_and_clipping():
    params = _env().system0_params
    with pytest.raises(ValueError, match="f32\\[8\\]"):
        system0.lower_body_targets(params, None, jnp.zeros(4))
    out = system0.lower_body_targets(params, None, jnp.asarray([0.1, -0.2, 0.3, 0.75, 0, 0, 0, 0], jnp.float32))
    assert out.shape == (15,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[12:], [0.3, 0.1, -0.2], atol=1e-6)  # yaw, roll, pitch joint order
    np.testing.assert_allclose(out[:6], out[6:12], atol=1e-6)  # symmetric legs without feedback
    clipped = system0.lower_body_targets(params, None, jnp.asarray([2.0, 2.0, 0.0, 0.2, 0, 0, 0, 0]))
    np.testing.assert_allclose(clipped[13:], [0.52, 0.52], atol=1e-6)
    low = system0.lower_body_targets(params, None, jnp.asarray([0, 0, 0, params.min_height, 0, 0, 0, 0.0]))
    np.testing.assert_allclose(clipped[:12], low[:12], atol=1e-5)  # height clipped to the supported range


def test_nonzero_velocity_command_warns_once():
    default = _env().system0_params
    assert default.warn_unsupported is False  # no host callback in the env's jitted step (compile cache)
    f = jax.jit(system0.lower_body_targets, static_argnums=())
    command = jnp.asarray([0, 0, 0, 0.75, 0.5, 0, 0, 0], jnp.float32)
    system0._WARNED[0] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.block_until_ready(f(default, None, command))  # silent by default ...
    assert "callback" not in str(jax.make_jaxpr(lambda c: system0.lower_body_targets(default, None, c))(command))
    with pytest.warns(UserWarning, match="velocity commands"):  # ... the host warns from the env's metric
        system0.warn_unsupported_once(np.array([0.0, 1.0], np.float32))
    # The opt-in in-graph warning still works, once per process.
    params = default.replace(warn_unsupported=True)
    system0._WARNED[0] = False
    with pytest.warns(UserWarning, match="velocity commands"):
        jax.block_until_ready(f(params, None, command))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.block_until_ready(f(params, None, command))
        system0.warn_unsupported_once(np.ones(3))


def _sweep_actions() -> tuple[np.ndarray, np.ndarray]:
    """f32[T, 36] actions: height 0.75 -> 0.45 -> 0.75 with holds, arms and waist moving; and the hold mask."""
    heights = np.concatenate(
        [
            np.full(40, 0.75),
            np.linspace(0.75, 0.45, 100),
            np.full(80, 0.45),
            np.linspace(0.45, 0.75, 100),
            np.full(60, 0.75),
        ]
    )
    t = np.arange(len(heights))
    actions = np.tile(C.default_action(), (len(t), 1))
    s = C.S_RIGHT_ARM.start
    actions[:, s + 0] = 0.2 - 0.9 * np.sin(t / 35.0) ** 2  # right shoulder pitch: reach forward
    actions[:, s + 3] = 1.28 - 0.8 * np.sin(t / 35.0) ** 2  # right elbow: extend
    actions[:, C.S_LEFT_ARM.start] = 0.2 + 0.4 * np.sin(t / 25.0)  # left shoulder pitch: swing
    actions[:, C.A_WAIST.start + 1] = 0.25 * np.sin(t / 50.0)  # torso pitch
    actions[:, C.A_WAIST.start + 2] = 0.3 * np.sin(t / 40.0)  # torso yaw
    actions[:, C.A_HEIGHT] = heights
    return actions.astype(np.float32), heights


def test_height_sweep_tracks_within_2cm_without_falling():
    env = _env()
    params = env.system0_params
    actions, heights = _sweep_actions()

    def body(state, action):
        state = env.step(state, action)
        h = system0.measured_base_height(params, state.data)
        return state, (h, state.metrics["fell"], state.data.qpos[C.QPOS_JOINTS])

    @jax.jit
    def run(key, actions):
        state = env.reset(key)
        return jax.lax.scan(body, state, actions)[1]

    h, fell, joints = jax.device_get(run(jax.random.PRNGKey(0), jnp.asarray(actions)))
    assert not fell.any()
    assert np.isfinite(h).all()
    for end in (40, 220, 380):  # ends of the holds at 0.75, 0.45, 0.75: steady state
        err = np.abs(h[end - 10 : end] - heights[end - 10 : end])
        assert err.max() < 0.02, (end, err)
    assert np.abs(h[40:] - heights[40:]).max() < 0.04  # transient tracking while ramping
    right_shoulder = joints[:, C.RIGHT_ARM.start]
    assert right_shoulder.max() - right_shoulder.min() > 0.6  # the arms really moved
