"""Forward and inverse kinematics of the G1's right arm (pelvis -> waist -> torso -> 7 arm joints -> hand).

Pure JAX on a small chain description measured once from the MJCF (``right_arm_chain()``): each link's
fixed offset (pos, quat) from its parent and its hinge axis. Used by the scripted expert to place the right
hand (the ``right_wrist_yaw_link`` frame) at a world pose given the measured pelvis pose and waist angles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from envs.g1 import constants as C

WAIST_BODIES = ("waist_yaw_link", "waist_roll_link", "torso_link")
RIGHT_ARM_BODIES = (
    "right_shoulder_pitch_link",
    "right_shoulder_roll_link",
    "right_shoulder_yaw_link",
    "right_elbow_link",
    "right_wrist_roll_link",
    "right_wrist_pitch_link",
    "right_wrist_yaw_link",
)


@struct.dataclass
class Chain:
    """A serial chain of 10 hinge links (3 waist + 7 arm) hanging off the pelvis.

    pos: f32[10, 3] and quat: f32[10, 4] (w, x, y, z) offset of each link in its parent; axis: f32[10, 3]
    hinge axis in the link frame; lower/upper: f32[7] the arm joints' ranges; palm: f32[3] the right palm
    site in the last (wrist-yaw) link.
    """

    pos: jax.Array
    quat: jax.Array
    axis: jax.Array
    lower: jax.Array
    upper: jax.Array
    palm: jax.Array


@functools.lru_cache(maxsize=1)
def right_arm_chain() -> Chain:
    """The chain measured on the shipped scene XML (cached)."""
    m = mujoco.MjModel.from_xml_path(str(C.SCENE_XML))
    names = WAIST_BODIES + RIGHT_ARM_BODIES
    ids = [m.body(n).id for n in names]
    jnt = [m.body_jntadr[i] for i in ids]
    arm_jnt = jnt[3:]
    site = m.site(C.RIGHT_PALM_SITE)
    if site.bodyid[0] != ids[-1]:
        raise ValueError("the right palm site must sit on right_wrist_yaw_link")
    f32 = lambda x: np.asarray(x, np.float32)  # numpy: safe to build inside a jit trace
    return Chain(
        pos=f32(m.body_pos[ids]),
        quat=f32(m.body_quat[ids]),
        axis=f32(m.jnt_axis[jnt]),
        lower=f32(m.jnt_range[arm_jnt, 0]),
        upper=f32(m.jnt_range[arm_jnt, 1]),
        palm=f32(site.pos),
    )


def quat_to_mat(q: jax.Array) -> jax.Array:
    """f32[4] (w, x, y, z) -> f32[3, 3] rotation matrix."""
    q = q / jnp.linalg.norm(q)
    w, x, y, z = q
    return jnp.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def axis_angle(axis: jax.Array, angle: jax.Array) -> jax.Array:
    """f32[3, 3] rotation by ``angle`` about unit ``axis`` (Rodrigues)."""
    k = jnp.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return jnp.eye(3) + jnp.sin(angle) * k + (1.0 - jnp.cos(angle)) * (k @ k)


def hand_fk(
    chain: Chain, pelvis_pos: jax.Array, pelvis_quat: jax.Array, waist: jax.Array, arm: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """World pose of the right wrist-yaw link.

    Args:
      chain: ``Chain``.
      pelvis_pos: f32[3]; pelvis_quat: f32[4] (w, x, y, z).
      waist: f32[3] waist joint angles (yaw, roll, pitch); arm: f32[7] right-arm joint angles.

    Returns:
      (pos f32[3], rot f32[3, 3]) of the ``right_wrist_yaw_link`` frame in the world.
    """
    q = jnp.concatenate([waist, arm])
    pos, rot = pelvis_pos, quat_to_mat(pelvis_quat)
    for i in range(q.shape[0]):
        pos = pos + rot @ chain.pos[i]
        rot = rot @ quat_to_mat(chain.quat[i]) @ axis_angle(chain.axis[i], q[i])
    return pos, rot


def rotation_error(current: jax.Array, target: jax.Array) -> jax.Array:
    """f32[3] small-angle orientation error (world frame) that rotates ``current`` onto ``target``."""
    r = target @ current.T
    return 0.5 * jnp.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])


def solve_arm_ik(
    chain: Chain,
    pelvis_pos: jax.Array,
    pelvis_quat: jax.Array,
    waist: jax.Array,
    arm0: jax.Array,
    target_pos: jax.Array,
    target_rot: jax.Array,
    *,
    rot_weight: float = 0.3,
    damping: float = 0.02,
    iters: int = 12,
    posture: jax.Array | None = None,
    posture_weight: float = 0.0,
) -> jax.Array:
    """Damped-least-squares IK for the 7 right-arm joints (``lax.fori_loop``; jit/vmap-able).

    Args:
      chain, pelvis_pos, pelvis_quat, waist: as in ``hand_fk``.
      arm0: f32[7] initial guess; target_pos: f32[3]; target_rot: f32[3, 3] (wrist-yaw link frame).
      rot_weight: metres per radian of orientation error; damping: Levenberg-Marquardt lambda.
      posture: f32[7] optional rest posture, pulled towards with ``posture_weight`` (null-space-like).

    Returns:
      f32[7] joint angles within the joint ranges.
    """
    rest = arm0 if posture is None else posture

    def residual(q):
        p, r = hand_fk(chain, pelvis_pos, pelvis_quat, waist, q)
        return jnp.concatenate([target_pos - p, rot_weight * rotation_error(r, target_rot)])

    def body(_, q):
        e = residual(q)
        jac = -jax.jacfwd(residual)(q)  # d(pose)/dq, f32[6, 7]
        lhs = jac.T @ jac + (damping**2 + posture_weight) * jnp.eye(7)
        dq = jnp.linalg.solve(lhs, jac.T @ e + posture_weight * (rest - q))
        dq = jnp.clip(dq, -0.4, 0.4)
        return jnp.clip(q + dq, chain.lower, chain.upper)

    return jax.lax.fori_loop(0, iters, body, jnp.clip(arm0, chain.lower, chain.upper))
