"""G1BendPick-v0 on CPU. Three compiled functions shared by all tests (session fixtures): single-env
reset, single-env step, and a 64-env vmapped step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from mujoco import mjx

import envs
from envs.g1 import bendpick
from envs.g1 import constants as C

BATCH = 64
EPISODE_LENGTH = 600  # the default config: compiled functions are shared with other users of the env


@pytest.fixture(scope="session")
def env():
    env = envs.make("G1BendPick-v0")
    assert env.config.episode_length == EPISODE_LENGTH
    return env


@pytest.fixture(scope="session")
def reset1(env):
    return jax.jit(env.reset)


@pytest.fixture(scope="session")
def step1(env):
    return jax.jit(env.step)


@pytest.fixture(scope="session")
def step_b(env):
    return jax.jit(jax.vmap(env.step))


@pytest.fixture(scope="session")
def state0(reset1):
    return reset1(jax.random.PRNGKey(0))


@pytest.fixture(scope="session")
def batch_state(reset1):
    """64 envs: 4 distinct resets, tiled."""
    singles = [reset1(jax.random.PRNGKey(10 + i)) for i in range(4)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *singles)
    return jax.tree.map(lambda x: jnp.tile(x, (BATCH // 4,) + (1,) * (x.ndim - 1)), stacked)


def _batch_actions(env, seed: int = 0) -> jax.Array:
    """Default targets with a small per-env offset on the arm/hand joints (so envs differ). f32[64, 36]."""
    noise = jax.random.uniform(jax.random.PRNGKey(seed), (BATCH, C.ACTION_SIZE), minval=-0.05, maxval=0.05)
    noise = noise.at[:, C.A_COMMAND].set(0.0)
    return env.default_action[None] + noise


def _qpos(state) -> np.ndarray:
    return np.asarray(state.data.qpos)


def test_make_and_errors():
    with pytest.raises(ValueError, match="G1BendPick-v0"):
        envs.make("G1BendPik-v0")
    with pytest.raises(ValueError, match="unknown G1BendPick config field"):
        envs.make("G1BendPick-v0", episode_lenght=10)
    with pytest.raises(ValueError, match="randomization_level"):
        envs.make("G1BendPick-v0", randomization_level=3)
    with pytest.raises(ValueError, match=r"solver must be one of .*'pgs'"):
        envs.make("G1BendPick-v0", solver="pgs")


def test_solver_reaches_the_compiled_model():
    """config.solver/iterations land in the MJX model (no stepping); the default is Newton 1/4 (eulerdamp off)."""
    default = envs.make("G1BendPick-v0")
    assert default.config.solver == "newton"
    assert default.mjx_model.opt.solver == mjx.SolverType.NEWTON
    assert (int(default.mjx_model.opt.iterations), int(default.mjx_model.opt.ls_iterations)) == (1, 4)
    assert default.mj_model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_EULERDAMP
    cg = envs.make("G1BendPick-v0", solver="cg", solver_iterations=2, ls_iterations=4)
    assert cg.mj_model.opt.solver == mujoco.mjtSolver.mjSOL_CG
    assert cg.mjx_model.opt.solver == mjx.SolverType.CG
    assert (int(cg.mjx_model.opt.iterations), int(cg.mjx_model.opt.ls_iterations)) == (2, 4)


def test_eulerdamp_reaches_the_compiled_model():
    """config.eulerdamp sets MuJoCo's EULERDAMP disable bit in both the C and the MJX model, nothing else."""
    bit = int(mujoco.mjtDisableBit.mjDSBL_EULERDAMP)
    on = envs.make("G1BendPick-v0", eulerdamp=True)
    off = envs.make("G1BendPick-v0", eulerdamp=False)
    assert not on.mj_model.opt.disableflags & bit and not int(on.mjx_model.opt.disableflags) & bit
    assert off.mj_model.opt.disableflags & bit and int(off.mjx_model.opt.disableflags) & bit
    assert (off.mj_model.opt.disableflags & ~bit) == on.mj_model.opt.disableflags


def test_physics_config_parser():
    """``solver:iterations:ls_iterations[:eulerdamp|:noeulerdamp]`` (benchmarks, the study's env.physics)."""
    from benchmarks.solver_validation import parse_configs

    default = bendpick.BendPickConfig().eulerdamp
    got = parse_configs("newton:4:8, CG:2:4:noeulerdamp,newton:3:4:eulerdamp,")
    assert got == [
        bendpick.Physics("newton", 4, 8, default),
        bendpick.Physics("cg", 2, 4, False),
        bendpick.Physics("newton", 3, 4, True),
    ]
    assert got[1].label() == "CG 2/4 no-eulerdamp" and got[2].label() == "NEWTON 3/4"
    assert got[1].overrides() == {"solver": "cg", "solver_iterations": 2, "ls_iterations": 4, "eulerdamp": False}
    for bad, match in (
        ("newton:4", "is not solver"),
        ("newton:4:8:fast", "is not solver"),
        ("newton:four:8", "must be integers"),
        ("pgs:4:8", "solver must be one of"),
        ("newton:0:8", "solver_iterations must be >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            bendpick.parse_physics(bad)
    env = envs.make("G1BendPick-v0", **bendpick.parse_physics("cg:2:4:noeulerdamp").overrides())
    assert bendpick.describe_physics(env.mj_model) == "CG 2 iterations / 4 line-search, EULER (eulerdamp off)"


def test_layouts_against_joint_names(env, state0):
    m = env.mj_model
    hinge_names = [m.joint(i).name for i in range(m.njnt) if m.jnt_type[i] == mujoco.mjtJoint.mjJNT_HINGE]
    assert tuple(hinge_names) == C.JOINT_NAMES
    for k, name in enumerate(C.JOINT_NAMES):
        jid = m.joint(name).id
        assert m.jnt_qposadr[jid] == C.QPOS_JOINTS.start + k
        assert m.jnt_dofadr[jid] == C.QVEL_JOINTS.start + k
        assert m.joint(m.actuator_trnid[k, 0]).name == name  # actuator k drives joint k
    assert m.jnt_qposadr[m.joint("box_joint").id] == C.QPOS_BOX_POS.start
    assert (m.nq, m.nv, m.nu) == (C.NQ, C.NV, C.NU)
    # Psi0's state/action right hand is thumb0-2, index0-1, middle0-1 (the 43-joint order has middle first).
    assert C.STATE_JOINTS[7:14] == tuple(
        f"right_hand_{j}_joint" for j in ("thumb_0", "thumb_1", "thumb_2", "index_0", "index_1", "middle_0", "middle_1")
    )
    assert C.STATE_JOINTS[0:7] == C.JOINT_NAMES[C.LEFT_HAND]
    assert C.STATE_JOINTS[14:21] == C.JOINT_NAMES[C.LEFT_ARM]
    assert C.STATE_JOINTS[21:28] == C.JOINT_NAMES[C.RIGHT_ARM]
    assert [C.JOINT_NAMES[i] for i in C.STATE_TO_JOINT] == list(C.STATE_JOINTS)
    # An action's slot i reaches the actuator of the joint named STATE_JOINTS[i].
    action = env.default_action.at[C.A_JOINTS].set(jnp.arange(28, dtype=jnp.float32) * 0.01)
    ctrl = np.asarray(env._ctrl(state0.data, action))
    for i, name in enumerate(C.ACTION_JOINTS):
        assert ctrl[C.JOINT_NAMES.index(name)] == pytest.approx(i * 0.01)


def test_reset_and_step_shapes(env, state0, step1):
    s = state0
    assert s.obs["state"].shape == (32,) and s.obs["state"].dtype == jnp.float32
    np.testing.assert_allclose(s.obs["state"][C.S_COMMAND], [0.0, 0.0, 0.0, 0.75])
    qpos = _qpos(s)
    np.testing.assert_allclose(s.obs["state"][C.S_JOINTS], qpos[C.QPOS_JOINTS][C.STATE_TO_JOINT], rtol=0, atol=0)
    assert "image" not in s.obs
    priv = s.obs["privileged"]
    assert int(priv["t"]) == 0 and priv["t"].dtype == jnp.int32
    np.testing.assert_allclose(priv["obj_pos"], priv["obj_pos0"])
    assert s.info["step"].dtype == jnp.int32 and float(s.done) == 0.0
    for name in ("success", "lift", "fell", "nan"):
        assert s.metrics[name].shape == () and float(s.metrics[name]) == 0.0
    # After the 60-step stand the robot is upright at about the nominal height, the box on the table.
    assert 0.70 < float(priv["pelvis_pos"][2]) < 0.80
    assert float(priv["obj_pos"][2]) == pytest.approx(env.config.table_height + 0.105, abs=3e-3)

    action = env.default_action.at[C.A_WAIST].set(jnp.array([0.05, 0.1, -0.05]))
    s1 = step1(s, action)
    assert int(s1.info["step"]) == 1 and int(s1.obs["privileged"]["t"]) == 1
    np.testing.assert_allclose(s1.obs["state"][C.S_COMMAND], action[28:32])
    assert float(s1.metrics["unsupported_command"]) == 0.0
    assert np.all(np.isfinite(_qpos(s1)))
    chex_tree_shapes_equal = jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype, s, s1)
    assert all(jax.tree.leaves(chex_tree_shapes_equal))
    s2 = step1(s1, action.at[C.A_VEL.start].set(0.3))
    assert float(s2.metrics["unsupported_command"]) == 1.0


def test_determinism_and_pose_randomisation(env, reset1, state0):
    again = reset1(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(_qpos(again), _qpos(state0))
    np.testing.assert_array_equal(again.data.mocap_pos, state0.data.mocap_pos)
    other = reset1(jax.random.PRNGKey(1))
    assert not np.allclose(_qpos(other)[C.QPOS_BOX_POS], _qpos(state0)[C.QPOS_BOX_POS])
    assert not np.allclose(other.data.mocap_pos, state0.data.mocap_pos)
    for s in (state0, other):
        q = _qpos(s)[C.QPOS_BOX_QUAT]
        yaw = 2 * np.arctan2(q[3], q[0])
        assert abs(yaw) <= env.config.box_yaw_range + 0.01


def test_hold_targets_200_steps_without_falling(env, state0, step1):
    s = state0
    z = []
    for _ in range(220):
        s = step1(s, env.default_action)
        z.append(float(s.obs["privileged"]["pelvis_pos"][2]))
    assert float(s.done) == 0.0 and float(s.metrics["fell"]) == 0.0 and float(s.metrics["nan"]) == 0.0
    assert min(z) > 0.65
    assert float(bendpick._tilt(s.data.xquat[env.pelvis_id])) < 0.2
    assert float(s.metrics["lift"]) == 0.0  # nobody touched the box


def test_truncation_success_and_fall(env, state0, step1):
    a = env.default_action
    # Truncation at episode_length, apart from termination.
    last = state0.replace(info={**state0.info, "step": jnp.int32(EPISODE_LENGTH - 1)})
    s = step1(last, a)
    assert float(s.info["truncated"]) == 1.0 and float(s.info["terminated"]) == 0.0 and float(s.done) == 1.0
    # Success: the box lifted 0.25 m, overlapping the right palm.
    palm = state0.obs["privileged"]["palm_pos"]
    qpos = state0.data.qpos.at[C.QPOS_BOX_POS].set(palm)
    held = state0.replace(data=state0.data.replace(qpos=qpos))
    s = step1(held, a)
    assert float(s.metrics["hand_contact"]) == 1.0 and float(s.metrics["lift"]) == 1.0
    assert float(s.metrics["success"]) == 1.0 and float(s.done) == 1.0 and float(s.info["truncated"]) == 0.0
    assert float(s.reward) == pytest.approx(env.config.success_reward)
    # Lifted but not in the hand: no success.
    qpos = state0.data.qpos.at[C.QPOS_BOX_POS].set(palm + jnp.array([0.0, 0.4, 0.0]))
    s = step1(state0.replace(data=state0.data.replace(qpos=qpos)), a)
    assert float(s.metrics["lift"]) > 0.9 and float(s.metrics["hand_contact"]) == 0.0
    assert float(s.metrics["success"]) == 0.0 and float(s.done) == 0.0
    # Fall: pelvis tipped over by 90 degrees.
    quat = jnp.array([np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0])
    qpos = state0.data.qpos.at[C.QPOS_BASE_QUAT].set(quat)
    s = step1(state0.replace(data=state0.data.replace(qpos=qpos)), a)
    assert float(s.metrics["fell"]) == 1.0 and float(s.done) == 1.0 and float(s.metrics["success"]) == 0.0
    # A done env is frozen.
    s2 = step1(s, a)
    np.testing.assert_array_equal(_qpos(s2), _qpos(s))
    assert int(s2.info["step"]) == int(s.info["step"])


def test_64_envs_batched_equals_single(env, batch_state, step_b, step1):
    actions = _batch_actions(env)
    s = batch_state
    for _ in range(3):
        s = step_b(s, actions)
    assert s.obs["state"].shape == (BATCH, 32)
    assert np.all(np.isfinite(np.asarray(s.data.qpos))) and not np.any(np.asarray(s.done))
    for i in (0, 5, 63):
        single = jax.tree.map(lambda x, i=i: x[i], batch_state)
        for _ in range(3):
            single = step1(single, actions[i])
        np.testing.assert_allclose(_qpos(single), np.asarray(s.data.qpos[i]), atol=1e-4)
        np.testing.assert_allclose(single.obs["state"], s.obs["state"][i], atol=1e-4)


def test_nan_in_one_env_ends_only_that_env(env, batch_state, step_b):
    actions = _batch_actions(env, seed=1)
    clean = step_b(batch_state, actions)
    bad = 7
    qvel = batch_state.data.qvel.at[bad, 3].set(jnp.nan)
    poisoned = batch_state.replace(data=batch_state.data.replace(qvel=qvel))
    s = step_b(poisoned, actions)
    done = np.asarray(s.done)
    assert done[bad] == 1.0 and float(s.metrics["nan"][bad]) == 1.0
    assert done.sum() == 1.0 and np.asarray(s.metrics["nan"]).sum() == 1.0
    assert np.all(np.isfinite(np.asarray(s.data.qpos))) and np.all(np.isfinite(np.asarray(s.obs["state"])))
    others = np.arange(BATCH) != bad
    np.testing.assert_array_equal(np.asarray(s.data.qpos)[others], np.asarray(clean.data.qpos)[others])
    s2 = step_b(s, actions)  # the NaN env stays frozen, the others keep going
    np.testing.assert_array_equal(np.asarray(s2.data.qpos[bad]), np.asarray(s.data.qpos[bad]))
    assert np.all(np.isfinite(np.asarray(s2.data.qpos))) and np.asarray(s2.done).sum() == 1.0


def test_mjx_matches_c_mujoco(env, state0, step1):
    """10 control steps (100 physics steps) of MJX and C MuJoCo from the same state with the same controls."""
    m = env.mj_model
    d = mjx.get_data(m, state0.data)
    action = env.default_action.at[C.A_WAIST].set(jnp.array([0.0, 0.15, 0.0]))
    s = state0
    for _ in range(10):
        s = step1(s, action)
        d.ctrl[:] = np.asarray(s.data.ctrl, np.float64)  # what System-0 + the action commanded this step
        for _ in range(env.config.substeps):
            mujoco.mj_step(m, d)
    q_mjx = _qpos(s)
    assert np.all(np.isfinite(d.qpos))
    np.testing.assert_allclose(q_mjx[:3], d.qpos[:3], atol=1e-3)  # pelvis position
    np.testing.assert_allclose(q_mjx[C.QPOS_JOINTS], d.qpos[C.QPOS_JOINTS], atol=5e-3)
    np.testing.assert_allclose(q_mjx[C.QPOS_BOX_POS], d.qpos[C.QPOS_BOX_POS], atol=1e-3)
    # The waist pitch target was tracked by both.
    k = C.JOINT_NAMES.index("waist_pitch_joint")
    assert abs(q_mjx[7 + k] - 0.15) < 0.05 and abs(d.qpos[7 + k] - 0.15) < 0.05


@pytest.mark.parametrize("level", [0, 1, 2])
def test_randomisation_levels(env, level):
    """Per-episode scene values: same structure at every level; what varies grows with the level."""
    e = env if level == 0 else envs.make("G1BendPick-v0", randomization_level=level)
    a, b = (e._sample_scene(jax.random.PRNGKey(k)) for k in (0, 1))
    assert jax.tree.structure(a) == jax.tree.structure(env._sample_scene(jax.random.PRNGKey(0)))
    differs = {k: not np.allclose(a[k], b[k]) for k in a}
    assert differs["box_rgba"] == differs["box_mass"] == differs["box_friction"] == (level >= 1)
    assert differs["light_dir"] == differs["camera_pos_offset"] == differs["camera_rot_offset"] == (level >= 2)
    lo, hi = e.config.box_mass_range
    assert lo - 1e-6 <= float(a["box_mass"]) <= hi + 1e-6 or level == 0
    model = e._model(a)
    assert float(model.body_mass[e.box_body_id]) == pytest.approx(float(a["box_mass"]), rel=1e-6)
    assert float(model.geom_friction[e.box_geom_id, 0]) == pytest.approx(float(a["box_friction"]), rel=1e-6)
    assert np.all(np.abs(np.asarray(a["camera_rot_offset"])) <= e.config.camera_rot_jitter + 1e-6)
