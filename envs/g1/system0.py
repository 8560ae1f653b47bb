"""System-0: the lower-body controller (12 leg joints + 3 waist joints), called once per 50 Hz control step.

A quasi-static whole-body balance controller written as a pure function of the measured ``mjx.Data``:

1. **Squat IK.** Both legs get the same sagittal two-link IK (thigh, shin) that puts the pelvis origin at
   the commanded base height above flat feet, with the pelvis pitched forward by a height-dependent lean
   ``pitch_slope * (pitch_ref_height - h)`` (clipped to ``[0, pitch_max]``): without it the ankle
   dorsiflexion needed in a deep squat exceeds the joint's 50 deg limit.
2. **Centre of mass over the feet.** The hip is placed so that the robot's measured CoM, taken relative
   to the pelvis (it moves as the torso pitches and the arms reach), lands ``com_offset_x`` ahead of the
   ankles (the middle of the sole) and midway between the feet: sagittally through the IK's pelvis-ankle
   offset, laterally by tilting both legs (hip roll, opposite ankle roll) so the pelvis slides sideways.
3. **Feedback.** Ankle pitch/roll correct the residual CoM error over the support centre and the CoM
   velocity (ankle strategy); the IK height gets ``k_height`` times the measured pelvis-height error
   (clipped) to cancel the gravity sag of the position actuators.
4. **Waist.** The waist joints take the commanded torso roll, pitch and yaw, clipped to the joint limits.

Velocity commands (vx, vy, turning flag, target yaw: ``command[4:8]``) are NOT supported: the robot stands
in place. A non-zero one is ignored and the env flags it in ``metrics["unsupported_command"]`` (f32[], 1.0 on
a step whose action had one). That metric is THE way to see it: callers warn on the host from it, outside
the jitted step (e.g. ``warn_unsupported_once(state.metrics["unsupported_command"])`` after a rollout).
``System0Params.warn_unsupported`` (default False) additionally warns from inside the jitted function via a
``jax.debug.callback``; it is off by default because a host callback keeps JAX from writing the env's
compiled programs to the persistent compilation cache (every process would recompile them).

The signature is fixed: ``lower_body_targets(params, data, command) -> f32[15]``; ``data=None`` gives the
feed-forward targets (nominal CoM), used to build the standing keyframe.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from envs.g1 import constants as C

MIN_HEIGHT = 0.45  # m, supported base-height range (pelvis origin above the soles)
MAX_HEIGHT = 0.80
WAIST_LIMIT = (0.52, 0.52, 2.618)  # |roll|, |pitch|, |yaw| joint limits (rad)


@struct.dataclass
class System0Params:
    """Geometry (measured on the MJCF) and gains of System-0. Float fields are pytree leaves.

    Geometry (m): thigh = hip-pitch axis to knee axis; shin = knee axis to ankle-pitch axis; hip_drop =
    pelvis origin to hip-pitch axis; ankle_to_sole = ankle-pitch axis to the soles; ankle_body_to_sole =
    ankle-roll body origin to the soles; nominal_com_x = CoM x minus pelvis x at the standing keyframe.
    """

    thigh: float = 0.3366
    shin: float = 0.3000
    hip_drop: float = 0.1027
    ankle_to_sole: float = 0.0526
    ankle_body_to_sole: float = 0.035
    nominal_com_x: float = 0.03
    min_leg: float = 0.25  # m, shortest hip-to-ankle distance commanded
    min_height: float = MIN_HEIGHT
    max_height: float = MAX_HEIGHT
    pitch_ref_height: float = 0.72  # m: pelvis lean starts below this height
    pitch_slope: float = 1.8  # rad of pelvis pitch per metre of squat
    pitch_max: float = 0.6  # rad
    com_offset_x: float = 0.035  # m: CoM target ahead of the ankle axes (sole centre)
    k_height: float = 1.0  # height-error feedback (m of IK height per m of error)
    height_fb_max: float = 0.03  # m, clip of that feedback
    max_height_step: float = 0.02  # m: IK height stays within this of the measured height (slew limit)
    k_com_x: float = 1.5  # rad of ankle pitch per m of CoM error over the support centre
    k_vel_x: float = 0.05  # rad of ankle pitch per m/s of pelvis velocity
    k_com_y: float = 1.0  # rad of ankle roll per m of lateral CoM error
    max_lateral_tilt: float = 0.35  # rad, hip-roll tilt used to slide the pelvis sideways
    k_pelvis_roll: float = 0.5  # rad of hip roll per rad of pelvis roll error
    k_roll_leg: float = 2.0  # leg-length difference per (hip half-width x sin pelvis roll)
    hip_half_width: float = 0.118  # m, lateral distance pelvis origin to a leg's axis
    k_pelvis_pitch: float = 0.0  # rad of hip pitch per rad of pelvis pitch error
    ankle_min: float = -0.75  # rad: IK ankle pitch below this adds pelvis lean (joint limit -0.87)
    k_ankle_guard: float = 2.0  # rad of extra lean per rad beyond ankle_min
    com_lever: float = 0.15  # m of CoM-vs-pelvis shift per rad of extra pelvis lean
    pelvis_body: int = struct.field(pytree_node=False, default=1)
    left_ankle_body: int = struct.field(pytree_node=False, default=7)
    right_ankle_body: int = struct.field(pytree_node=False, default=13)
    warn_unsupported: bool = struct.field(pytree_node=False, default=False)  # host callback: see the docstring


def params_from_model(model: mujoco.MjModel, **overrides) -> System0Params:
    """``System0Params`` with the leg geometry and body ids measured on ``model`` (the G1 scene)."""
    d = mujoco.MjData(model)
    d.qpos[:] = model.qpos0
    d.qpos[C.QPOS_JOINTS] = 0.0
    mujoco.mj_kinematics(model, d)
    bid = lambda name: model.body(name).id
    anchor = lambda name: d.xanchor[model.body(name).jntadr[0]]
    feet = [i for i in range(model.ngeom) if "_foot" in (model.geom(i).name or "")]
    if not feet:
        raise ValueError("model has no foot geoms (names containing '_foot')")
    sole = min(d.geom_xpos[i, 2] - model.geom_size[i, 0] for i in feet)
    hip, knee, ankle = anchor("left_hip_pitch_link"), anchor("left_knee_link"), anchor("left_ankle_pitch_link")
    pelvis = d.xpos[bid(C.PELVIS)]
    # Nominal CoM offset at the keyframe arm pose.
    d.qpos[C.QPOS_JOINTS] = C.DEFAULT_JOINT_POS
    mujoco.mj_kinematics(model, d)
    mujoco.mj_comPos(model, d)
    geometry = dict(
        thigh=float(np.linalg.norm((knee - hip)[[0, 2]])),
        shin=float(np.linalg.norm((ankle - knee)[[0, 2]])),
        hip_drop=float(pelvis[2] - hip[2]),
        ankle_to_sole=float(ankle[2] - sole),
        ankle_body_to_sole=float(d.xpos[bid("left_ankle_roll_link"), 2] - sole),
        nominal_com_x=float(d.subtree_com[bid(C.PELVIS), 0] - d.xpos[bid(C.PELVIS), 0]),
        pelvis_body=bid(C.PELVIS),
        left_ankle_body=bid("left_ankle_roll_link"),
        right_ankle_body=bid("right_ankle_roll_link"),
    )
    return System0Params(**{**geometry, **overrides})


def default_params() -> System0Params:
    """System-0 parameters measured on the shipped scene XML (``envs/g1/assets/g1_bendpick.xml``)."""
    return params_from_model(mujoco.MjModel.from_xml_path(str(C.SCENE_XML)))


def leg_ik(params: System0Params, height: jax.Array, pelvis_pitch: jax.Array, pelvis_dx: jax.Array) -> jax.Array:
    """Sagittal flat-foot leg IK.

    Args:
      params: ``System0Params`` (thigh, shin, hip_drop, ankle_to_sole, min_leg).
      height: f32[] pelvis-origin height above the soles (m).
      pelvis_pitch: f32[] pelvis pitch about world y (rad, positive leans forward).
      pelvis_dx: f32[] pelvis x minus ankle x, in the heading frame (m).

    Returns:
      f32[3] hip pitch, knee, ankle pitch (rad) with thigh + shin + foot chain ending flat on the floor.
    """
    l1, l2 = params.thigh, params.shin
    hip_x = pelvis_dx - params.hip_drop * jnp.sin(pelvis_pitch)
    hip_z = height - params.hip_drop * jnp.cos(pelvis_pitch)
    vx, vz = -hip_x, params.ankle_to_sole - hip_z  # hip -> ankle-pitch axis
    dist = jnp.clip(jnp.hypot(vx, vz), params.min_leg, l1 + l2 - 1e-4)
    cos_inner = (l1**2 + l2**2 - dist**2) / (2.0 * l1 * l2)
    knee = jnp.pi - jnp.arccos(jnp.clip(cos_inner, -1.0, 1.0))
    psi = jnp.arctan2(-vx, -vz)  # pitch of the hip->ankle line
    thigh_pitch = psi - jnp.arctan2(l2 * jnp.sin(knee), l1 + l2 * jnp.cos(knee))
    return jnp.stack([thigh_pitch - pelvis_pitch, knee, -(thigh_pitch + knee)])


def pelvis_pitch_reference(params: System0Params, height: jax.Array) -> jax.Array:
    """f32[] pelvis forward lean (rad) used at base height ``height`` (m)."""
    return jnp.clip(params.pitch_slope * (params.pitch_ref_height - height), 0.0, params.pitch_max)


def measured_base_height(params: System0Params, data) -> jax.Array:
    """f32[] base height as System-0 tracks it: pelvis origin above the soles (mean ankle height - sole)."""
    ankles_z = 0.5 * (data.xpos[params.left_ankle_body, 2] + data.xpos[params.right_ankle_body, 2])
    return data.xpos[params.pelvis_body, 2] - (ankles_z - params.ankle_body_to_sole)


def _roll_pitch(quat: jax.Array) -> jax.Array:
    """f32[2] roll, pitch (rad) of a w, x, y, z quaternion (z-y-x Euler)."""
    w, x, y, z = quat
    roll = jnp.arctan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    pitch = jnp.arcsin(jnp.clip(2.0 * (w * y - z * x), -1.0, 1.0))
    return jnp.stack([roll, pitch])


def _yaw(quat: jax.Array) -> jax.Array:
    w, x, y, z = quat
    return jnp.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


_WARNED = [False]


def warn_unsupported_once(flag) -> None:
    """Host-side: issues the "velocity commands unsupported" warning (once per process) if any ``flag`` is set.

    ``flag``: array-like of bools/floats, e.g. ``metrics["unsupported_command"]`` of a rollout (any shape).
    """
    if not _WARNED[0] and bool(np.any(np.asarray(flag))):
        _WARNED[0] = True
        warnings.warn(
            "System-0 does not support velocity commands (vx, vy, turning, target yaw): non-zero values are "
            "ignored and the robot stands in place.",
            stacklevel=2,
        )


def lower_body_targets(params: System0Params, data, command: jax.Array) -> jax.Array:
    """Position targets for the lower body.

    Args:
      params: ``System0Params``.
      data: the ``mjx.Data`` of one env (reads qpos, qvel, xpos, xquat, subtree_com), or None for the
        feed-forward targets (nominal CoM, no feedback).
      command: f32[8] = action[28:36]: waist roll, pitch, yaw, base height, vx, vy, turning flag, target yaw.

    Returns:
      f32[15]: targets for the 12 leg joints (left then right: hip pitch, roll, yaw, knee, ankle pitch,
      roll) then the 3 waist joints (yaw, roll, pitch), in Psi0's joint order.
    """
    command = jnp.asarray(command, jnp.float32)
    if command.shape != (8,):
        raise ValueError(f"command must be f32[8], got shape {command.shape}")
    if params.warn_unsupported:
        jax.debug.callback(warn_unsupported_once, jnp.any(command[4:8] != 0.0))
    height = jnp.clip(command[3], params.min_height, params.max_height)
    zero = jnp.zeros((), jnp.float32)
    if data is None:
        com_rel = jnp.stack([jnp.float32(params.nominal_com_x), zero])
        com_err, vel, height_fb, roll_pitch = jnp.zeros(2), jnp.zeros(2), zero, None
    else:
        pelvis = data.xpos[params.pelvis_body]
        quat = data.xquat[params.pelvis_body]
        yaw = _yaw(quat)
        c, s = jnp.cos(yaw), jnp.sin(yaw)
        to_heading = lambda v: jnp.stack([c * v[0] + s * v[1], -s * v[0] + c * v[1]])
        com = data.subtree_com[params.pelvis_body]
        ankles = 0.5 * (data.xpos[params.left_ankle_body] + data.xpos[params.right_ankle_body])
        com_rel = to_heading(com[:2] - pelvis[:2])  # CoM relative to the pelvis, heading frame
        support = ankles[:2] + jnp.stack([c, s]) * params.com_offset_x
        com_err = to_heading(com[:2] - support)  # CoM over the support centre
        vel = to_heading(data.qvel[:2])
        measured = measured_base_height(params, data)
        height = jnp.clip(height, measured - params.max_height_step, measured + params.max_height_step)  # slew
        roll_pitch = _roll_pitch(quat)
        height_fb = jnp.clip(params.k_height * (height - measured), -params.height_fb_max, params.height_fb_max)
    # Sagittal: pelvis placed so the CoM sits com_offset_x ahead of the ankles. A backward waist pitch is
    # matched by more pelvis lean, and so is an IK ankle angle beyond ankle_min (the lean moves the CoM
    # forward, hence the hip back, which straightens the ankle); com_lever predicts that CoM shift.
    lim = jnp.asarray(WAIST_LIMIT, jnp.float32)
    waist_rpy = jnp.clip(command[0:3], -lim, lim)
    pitch = pelvis_pitch_reference(params, height) + jnp.maximum(-waist_rpy[1], 0.0)
    ik_height = height + height_fb
    first = leg_ik(params, ik_height, pitch, params.com_offset_x - com_rel[0])
    extra = jnp.clip(params.k_ankle_guard * jnp.maximum(params.ankle_min - first[2], 0.0), 0.0, params.pitch_max)
    com_x = com_rel[0] + params.com_lever * extra
    # Pelvis roll is levelled by lengthening the leg on the low side (k_roll_leg > 1 beats the legs' sag).
    roll_meas = zero if roll_pitch is None else roll_pitch[0]
    dh = params.k_roll_leg * params.hip_half_width * jnp.sin(roll_meas)
    both = jax.vmap(lambda h: leg_ik(params, h, pitch + extra, params.com_offset_x - com_x))(
        jnp.stack([ik_height - dh, ik_height + dh])
    )  # [2 (left, right), 3]
    hip_pitch, knee, ankle_pitch = both[:, 0], both[:, 1], both[:, 2]
    ankle_pitch = ankle_pitch + params.k_com_x * com_err[0] + params.k_vel_x * vel[0]
    # Lateral: slide the pelvis by -com_rel_y by tilting both legs in the frontal plane.
    leg_drop = jnp.maximum(height - params.hip_drop * jnp.cos(pitch) - params.ankle_to_sole, params.min_leg)
    tilt = jnp.arcsin(jnp.clip(-com_rel[1] / leg_drop, -1.0, 1.0))
    tilt = jnp.clip(tilt, -params.max_lateral_tilt, params.max_lateral_tilt)
    # Pelvis orientation feedback through the hips (measured minus intended roll, pitch).
    tilt_err = jnp.zeros(2) if roll_pitch is None else roll_pitch - jnp.stack([zero, pitch + extra])
    hip_pitch = hip_pitch + params.k_pelvis_pitch * tilt_err[1]
    hip_roll = -tilt + params.k_pelvis_roll * tilt_err[0]
    ankle_roll = tilt - params.k_com_y * com_err[1]
    ones = jnp.ones(2, jnp.float32)
    legs = jnp.stack([hip_pitch, hip_roll * ones, 0.0 * ones, knee, ankle_pitch, ankle_roll * ones], axis=1)
    waist = jnp.stack([waist_rpy[2], waist_rpy[0], waist_rpy[1]])  # joint order: yaw, roll, pitch
    return jnp.concatenate([legs.reshape(12), waist]).astype(jnp.float32)
