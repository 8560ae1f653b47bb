"""Scripted motion-planning expert for G1 BendPick (SIMPLE's decomposition), behind the policy interface.

``expert_act(params, obs, prompt_ids, key, *, beta=1.0) -> f32[B, 30, 36]`` returns Psi0-format chunks of
absolute targets. It ignores ``prompt_ids`` and ``beta`` and reads ``obs["privileged"]`` (object pose,
pelvis pose, control-step counter ``t``) plus the measured joints in ``obs["state"]``.

Plan, keyed to the control step tau = t + i of each chunk row i (phases in ``ExpertConfig``):

1. stand, then lower the base height from 0.75 m to ``grasp_height`` (a smoothstep) while the right arm
   moves from the keyframe to the pre-grasp pose (IK, blended in joint space);
2. reach: the right wrist moves forward from the pre-grasp pose (``pregrasp_back`` behind and
   ``pregrasp_up`` above the grasp pose), then straight down to the grasp pose, which puts the palm over the
   box's top (wrist x along the box's x axis, palm down) with the pre-curled fingers past the far face and
   the opened thumb in front of the near face;
3. close: the thumb swings in and pinches the box against the finger wall (``HAND_CLOSED``);
4. lift: the wrist target rises ``lift_dz`` with the body still bent (success, >= 9 cm, comes here);
5. hold for ``rise_start - lift_end`` steps, then 6. raise the base height back to 0.75 m and stand.

The left arm and hand keep the keyframe. Every row's arm targets come from damped-least-squares IK
(``envs.g1.kinematics``) against the *measured* pelvis pose and the commanded waist, so re-querying every
24 steps closes the loop on the body's actual pose and the box's actual position.

Noise (for mixed-quality demos): ``noise_level`` in [0, 1] scales (a) a per-episode grasp-point offset
(``grasp_noise`` m at level 1, seeded by the episode's initial box position so it is constant within an
episode) and (b) i.i.d. Gaussian noise on the arm/hand joint targets (``action_noise`` rad at level 1,
from ``key``). ``noisy_config(level)`` builds such a config. Measured success (MJX, randomisation level 0;
benchmarks/RESULTS.md): noise 0 -> 100 % (200 episodes), 0.5 -> 35 % (40) with the current ``HAND_CLOSED``
(fingers to 1.30 rad). Before that change (fingers to 1.57): 0.25 -> 80 %, 0.5 -> 58 %, 0.75 -> 15 %,
1.0 -> 5 % (40 each), so the study's 25-60 % band now sits at about 0.4-0.5 (re-measure before relying on it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.g1 import constants as C
from envs.g1 import kinematics as K
from envs.g1 import system0

HORIZON = 30
EXECUTE = 24  # actions executed per chunk before re-querying (rollout_records, rollout_stats), as in the rollouts
ARM_SEED = (-0.5, -0.1, 0.0, 0.3, -1.57, 0.0, 0.0)  # IK start: forearm forward, palm down
IK_ITERS = 20  # damped-least-squares iterations per IK solve

# Right-hand targets in Psi0's state order (thumb0, thumb1, thumb2, index0, index1, middle0, middle1).
HAND_PREGRASP = (0.0, 0.72, 0.0, 1.1, 0.0, 1.1, 0.0)
# Closed: the thumb's targets lie past the box (it pinches at its 1.4 N m torque limit), the fingers' only just
# past where they touch the far face (~1.28 rad): a finger wall that yields like a spring. Closing the fingers
# to their 1.57 limit saturated them too, and two saturated fingers out-push the thumb, so the grasp kept
# rolling towards the thumb (the box moved ~8 mm against the palm in 2 s).
HAND_CLOSED = (0.0, -0.6, -1.2, 1.30, 0.3, 1.30, 0.3)


@struct.dataclass
class ExpertConfig:
    """Parameters of the scripted expert (a pytree: every field may be traced).

    Times are control steps (50 Hz); lengths metres; angles radians.
    """

    stand_steps: float = 5.0
    squat_end: float = 60.0  # base height reaches grasp_height
    reach_end: float = 110.0  # wrist at the grasp pose
    close_end: float = 130.0  # hand closed
    lift_end: float = 170.0  # wrist raised lift_dz (arm lift, body still bent)
    rise_start: float = 290.0  # body starts standing up (after a 2.4 s hold) ...
    rise_end: float = 350.0  # ... and is back at stand_height
    stand_height: float = 0.75
    grasp_height: float = 0.45
    waist_pitch: float = 0.0  # torso pitch command while bent
    grasp_back: float = 0.074  # wrist origin behind the box centre along the box's x axis
    grasp_up: float = 0.055  # wrist origin above the box top
    grasp_side: float = 0.0  # wrist offset along the box's y axis
    height_sag: float = 0.01  # m, base height System-0 settles below the command (pose prediction)
    pregrasp_up: float = 0.20  # pre-grasp: this much above the grasp pose ...
    pregrasp_back: float = 0.12  # ... and this much behind it (along the box's x axis)
    reach_split: float = 0.5  # fraction of the reach spent moving forward (then straight down)
    lift_dz: float = 0.14  # wrist rise during the arm lift (then the body's rise adds to it)
    noise_level: float = 0.0  # 0 = clean expert; scales the two noise terms below
    grasp_noise: float = 0.045  # m, std of the per-episode grasp-point offset at noise_level 1
    action_noise: float = 0.2  # rad, std of the joint-target noise at noise_level 1
    noise_seed: int = 0


def default_config() -> ExpertConfig:
    """The clean expert."""
    return ExpertConfig()


def noisy_config(level: float, seed: int = 0) -> ExpertConfig:
    """An expert whose grasp point and joint targets are perturbed (``level`` in [0, 1])."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"noise level must be in [0, 1], got {level}")
    return ExpertConfig(noise_level=float(level), noise_seed=int(seed))


def _smoothstep(x: jax.Array) -> jax.Array:
    x = jnp.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _quat_mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """Hamilton product of two (w, x, y, z) quaternions."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return jnp.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def _yaw(quat: jax.Array) -> jax.Array:
    w, x, y, z = quat
    return jnp.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def grasp_pose(params: ExpertConfig, obj_pos: jax.Array, obj_quat: jax.Array, offset: jax.Array):
    """Wrist-yaw-link grasp pose (pos f32[3], rot f32[3, 3]) for a box at ``obj_pos``/``obj_quat``.

    ``offset`` f32[3] is added in the box's yaw frame (x forward, y left, z up). The wrist x axis follows
    the box's x axis, its y axis (palm normal) points down.
    """
    yaw = _yaw(obj_quat)
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    ex = jnp.stack([c, s, 0.0])
    ey = jnp.stack([-s, c, 0.0])
    ez = jnp.array([0.0, 0.0, 1.0])
    top = obj_pos[2] + BOX_HALF_HEIGHT
    local = jnp.stack([-params.grasp_back, params.grasp_side, params.grasp_up]) + offset
    pos = jnp.stack([obj_pos[0], obj_pos[1], top]) + local[0] * ex + local[1] * ey + local[2] * ez
    rot = jnp.stack([ex, -ez, jnp.cross(ex, -ez)], axis=1)  # columns: wrist x, y, z in the world
    return pos, rot


BOX_HALF_HEIGHT = 0.105  # m, the cracker box's half height (envs/g1/assets/make_scene.py)


def _episode_offset(params: ExpertConfig, obj_pos0: jax.Array) -> jax.Array:
    """f32[3] grasp-point offset, constant within an episode (seeded by the initial box position)."""
    bits = jax.lax.bitcast_convert_type(obj_pos0.astype(jnp.float32), jnp.int32)
    key = jax.random.fold_in(jax.random.PRNGKey(params.noise_seed), bits[0] ^ (bits[1] * 31))
    return params.noise_level * params.grasp_noise * jax.random.normal(key, (3,))


def _plan_one(params: ExpertConfig, obs: dict, key: jax.Array) -> jax.Array:
    """f32[30, 36] chunk for one env (see the module docstring)."""
    priv = obs["privileged"]
    state = obs["state"]
    t = priv["t"].astype(jnp.float32)
    tau = t + jnp.arange(HORIZON, dtype=jnp.float32)  # [30]
    chain = K.right_arm_chain()

    s_squat = _smoothstep((tau - params.stand_steps) / (params.squat_end - params.stand_steps))
    s_reach = _smoothstep((tau - params.squat_end) / (params.reach_end - params.squat_end))
    s_close = _smoothstep((tau - params.reach_end) / (params.close_end - params.reach_end))
    s_lift = _smoothstep((tau - params.close_end) / (params.lift_end - params.close_end))
    s_rise = _smoothstep((tau - params.rise_start) / (params.rise_end - params.rise_start))
    height = params.stand_height + (params.grasp_height - params.stand_height) * (s_squat - s_rise)

    waist_cmd = state[C.S_COMMAND][:3]  # previous commanded roll, pitch, yaw
    waist_q = jnp.stack([waist_cmd[2], waist_cmd[0], waist_cmd[1]])  # joint order yaw, roll, pitch
    offset = _episode_offset(params, priv["obj_pos0"])
    # Until the lift starts the grasp tracks the box where it stands; from then on it is anchored to the
    # box's initial pose (a held box must not drag its own target along).
    ref_pos = jnp.where(t < params.close_end, priv["obj_pos"], priv["obj_pos0"])
    ref_quat = priv.get("obj_quat0", priv["obj_quat"])
    ref_quat = jnp.where(t < params.close_end, priv["obj_quat"], ref_quat)
    g_pos, g_rot = grasp_pose(params, ref_pos, ref_quat, offset)
    up = jnp.array([0.0, 0.0, 1.0])
    above = g_pos + params.pregrasp_up * up
    pre_pos = above - params.pregrasp_back * g_rot[:, 0]

    seed = jnp.asarray(ARM_SEED, jnp.float32)

    # Predicted pelvis pose per row: System-0's height and lean schedule applied to the measured pose.
    s0 = system0.System0Params()
    pelvis_pos, pelvis_quat = priv["pelvis_pos"], priv["pelvis_quat"]
    now_h = pelvis_pos[2] + params.height_sag
    pelvis_z = height - params.height_sag
    dpitch = system0.pelvis_pitch_reference(s0, height) - system0.pelvis_pitch_reference(s0, now_h)
    dq = jnp.stack([jnp.cos(dpitch / 2), jnp.zeros_like(dpitch), jnp.sin(dpitch / 2), jnp.zeros_like(dpitch)], -1)
    pelvis_quat_rows = jax.vmap(lambda q: _quat_mul(q, pelvis_quat))(dq)  # world-frame pitch increment
    pelvis_pos_rows = jnp.concatenate([jnp.tile(pelvis_pos[None, :2], (HORIZON, 1)), pelvis_z[:, None]], axis=1)

    def ik(target, ppos, pquat):
        return K.solve_arm_ik(chain, ppos, pquat, waist_q, seed, target, g_rot, iters=IK_ITERS)

    # Targets per row: before the reach, the pre-grasp pose; then down the line; then lift.
    r = params.reach_split
    s_fwd = jnp.clip(s_reach / r, 0.0, 1.0)[:, None]
    s_down = jnp.clip((s_reach - r) / (1.0 - r), 0.0, 1.0)[:, None]
    reach_pos = pre_pos[None] + (above - pre_pos)[None] * s_fwd + (g_pos - above)[None] * s_down
    lift_pos = g_pos[None] + params.lift_dz * s_lift[:, None] * up[None]
    target = jnp.where((tau < params.close_end)[:, None], reach_pos, lift_pos)
    arm_ik = jax.vmap(ik)(target, pelvis_pos_rows, pelvis_quat_rows)  # [30, 7]
    keyframe = jnp.asarray(C.DEFAULT_JOINT_POS[C.RIGHT_ARM])
    blend = jnp.where(tau < params.squat_end, s_squat, 1.0)[:, None]
    arm = keyframe[None] + (arm_ik - keyframe[None]) * blend

    hand_key = jnp.asarray(C.DEFAULT_JOINT_POS[C.STATE_TO_JOINT[C.S_RIGHT_HAND]])
    hand_pre = jnp.asarray(HAND_PREGRASP, jnp.float32)
    hand_closed = jnp.asarray(HAND_CLOSED, jnp.float32)
    hand = hand_key[None] + (hand_pre - hand_key)[None] * s_squat[:, None]
    hand = hand + (hand_closed - hand_pre)[None] * s_close[:, None]

    base = jnp.asarray(C.default_action())
    actions = jnp.tile(base[None], (HORIZON, 1))
    actions = actions.at[:, C.S_RIGHT_ARM].set(arm)
    actions = actions.at[:, C.S_RIGHT_HAND].set(hand)
    bent = s_squat - s_rise
    actions = actions.at[:, C.A_WAIST.start + 1].set(params.waist_pitch * bent)
    actions = actions.at[:, C.A_HEIGHT].set(height)

    noise = params.noise_level * params.action_noise * jax.random.normal(key, (HORIZON, 14))
    actions = actions.at[:, C.S_RIGHT_HAND.start : C.S_RIGHT_HAND.stop].add(noise[:, :7])
    actions = actions.at[:, C.S_RIGHT_ARM].add(noise[:, 7:])
    return actions.astype(jnp.float32)


def expert_act(
    params: ExpertConfig, obs: dict, prompt_ids: jax.Array, key: jax.Array, *, beta: float = 1.0
) -> jax.Array:
    """Batched expert chunks.

    Args:
      params: ``ExpertConfig``.
      obs: batched obs dict (leading axis B): ``"state"`` f32[B, 32] and ``"privileged"`` with ``obj_pos``
        f32[B, 3], ``obj_quat`` f32[B, 4], ``obj_pos0`` f32[B, 3], ``pelvis_pos`` f32[B, 3],
        ``pelvis_quat`` f32[B, 4], ``t`` i32[B].
      prompt_ids: ignored (i32[B, L]); key: PRNG key (joint-target noise); beta: ignored.

    Returns:
      f32[B, 30, 36] absolute action targets.
    """
    del prompt_ids, beta
    if "privileged" not in obs:
        raise ValueError("the scripted expert needs obs['privileged'] (object and pelvis poses, t)")
    state = obs["state"]
    if state.ndim != 2 or state.shape[-1] != C.STATE_SIZE:
        raise ValueError(f"obs['state'] must be f32[B, {C.STATE_SIZE}], got shape {state.shape}")
    keys = jax.random.split(key, state.shape[0])
    return jax.vmap(_plan_one, in_axes=(None, 0, 0))(params, obs, keys)


def dart_act(
    params: ExpertConfig, obs: dict, prompt_ids: jax.Array, key: jax.Array, *, beta: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """DART-style demonstrations (Laskey et al., 2017): (noised chunk to execute, clean chunk to record).

    The noised expert (``params``, its ``noise_level``) drives the robot off the clean expert's path; the
    label is what the clean expert (``noise_level = 0``) commands from the *same* observation, so the
    data covers perturbed states with corrective actions. The expert is closed-loop (IK against the
    measured pelvis and box) and keyed to the control step, so its clean chunk from a perturbed state is a
    recovery. Both f32[B, 30, 36]; use with ``recap_jax.rollout`` (which executes the first and records
    the second).
    """
    noisy = expert_act(params, obs, prompt_ids, key, beta=beta)
    clean = expert_act(params.replace(noise_level=jnp.zeros_like(params.noise_level)), obs, prompt_ids, key)
    return noisy, clean


def hand_closed_targets() -> np.ndarray:
    """f32[7] the closed right-hand targets (Psi0 state order)."""
    return np.asarray(HAND_CLOSED, np.float32)


def rollout_records(env, params: ExpertConfig, keys: jax.Array, n_steps: int, act_key: jax.Array | None = None) -> dict:
    """Runs the expert on ``len(keys)`` vmapped envs for ``n_steps`` control steps (rounded up to whole chunks;
    24 of every 30 actions executed, then re-query) and records every step. Jit it with ``env`` closed over.

    Args:
      env: a ``G1BendPick`` env; params: ``ExpertConfig``; keys: reset keys [B]; n_steps: control steps;
      act_key: the key of the expert's noise (default ``PRNGKey(7)``).

    Returns:
      dict of [T, B] arrays (T = n_steps rounded up to a multiple of 24): ``lift``, ``contact`` (hand-box),
      ``fell``, ``nan`` f32, and ``rel`` f32[T, B, 3] (box position minus right-palm position).
    """
    state = jax.vmap(env.reset)(keys)
    step = jax.vmap(env.step)

    def chunk(carry, _):
        state, key = carry
        key, k = jax.random.split(key)
        actions = expert_act(params, state.obs, None, k)  # [B, 30, 36]

        def inner(s, a):
            s = step(s, a)
            priv = s.obs["privileged"]
            return s, {
                "lift": s.metrics["lift"],
                "contact": s.metrics["hand_contact"],
                "fell": s.metrics["fell"],
                "nan": s.metrics["nan"],
                "rel": priv["obj_pos"] - priv["palm_pos"],
            }

        state, rec = jax.lax.scan(inner, state, jnp.swapaxes(actions[:, :EXECUTE], 0, 1))
        return (state, key), rec

    key0 = jax.random.PRNGKey(7) if act_key is None else act_key
    _, rec = jax.lax.scan(chunk, (state, key0), None, length=-(-n_steps // EXECUTE))
    return jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), rec)


def rollout_stats(env, params: ExpertConfig, keys: jax.Array, *, max_steps: int | None = None) -> dict:
    """Runs the expert on ``len(keys)`` vmapped envs (24 of every 30 actions executed, then re-query).

    A ``lax.while_loop`` over chunks stops once every env is done or ``max_steps`` (default: the env's
    ``episode_length``) control steps have run. Jit it with ``env`` closed over.

    Args:
      env: a ``G1BendPick`` env; params: ``ExpertConfig``; keys: PRNG keys [B] (reset + noise).

    Returns:
      dict of [B] arrays: ``success`` bool, ``fell`` bool, ``steps`` int32 (control steps until done, or
      the steps run), ``lift`` f32 (final lift fraction).
    """
    limit = int(max_steps or env.config.episode_length)
    n_chunks = -(-limit // EXECUTE)
    reset_keys, act_keys = jax.vmap(lambda k: jax.random.split(k))(keys).transpose(1, 0, 2)
    state = jax.vmap(env.reset)(reset_keys)
    step = jax.vmap(env.step)

    def chunk_body(carry):
        i, state, key, steps = carry
        key, k = jax.random.split(key)
        actions = expert_act(params, state.obs, None, k)  # [B, 30, 36]

        def one(s, a):
            return step(s, a), None

        def inner(c, j):
            s, n = c
            s, _ = one(s, actions[:, j])
            n = n + (s.done == 0).astype(jnp.int32)
            return (s, n), None

        (state, steps), _ = jax.lax.scan(inner, (state, steps), jnp.arange(EXECUTE))
        return i + 1, state, key, steps

    def cond(carry):
        i, state, _, _ = carry
        return (i < n_chunks) & jnp.any(state.done == 0)

    steps0 = jnp.zeros(keys.shape[0], jnp.int32)
    _, state, _, steps = jax.lax.while_loop(cond, chunk_body, (0, state, act_keys[0], steps0))
    return {
        "success": state.metrics["success"] > 0,
        "fell": state.metrics["fell"] > 0,
        "steps": jnp.minimum(steps + 1, limit),
        "lift": state.metrics["lift"],
    }
