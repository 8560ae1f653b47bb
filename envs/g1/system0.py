"""System-0: the lower-body controller (12 leg joints + 3 waist joints), called once per 50 Hz control step.

First version (joint space, no balance feedback): both legs get the planar two-link IK that puts the
pelvis at the commanded base height above flat feet with an upright pelvis (hip pitch and ankle pitch
split the knee bend), hip roll/yaw and ankle roll stay at 0, and the waist joints take the commanded
torso roll, pitch and yaw. Velocity commands (vx, vy, turning flag, target yaw) are ignored.

The signature is fixed: ``lower_body_targets(params, data, command) -> f32[15]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class System0Params:
    """Geometry of the G1 leg (metres), measured on the MJCF at the zero pose.

    thigh: hip-pitch axis to knee axis; shin: knee axis to ankle-pitch axis; hip_drop: pelvis origin to
    hip-pitch axis (vertical); ankle_to_sole: ankle-pitch axis to the sole (foot-sphere bottoms).
    min_leg: the shortest hip-to-ankle distance the IK will command.
    """

    thigh: float = 0.3366
    shin: float = 0.3000
    hip_drop: float = 0.1027
    ankle_to_sole: float = 0.0526
    min_leg: float = 0.30


def default_params() -> System0Params:
    """The default System-0 parameters."""
    return System0Params()


def lower_body_targets(params: System0Params, data, command: jax.Array) -> jax.Array:
    """Position targets for the lower body.

    Args:
      params: ``System0Params``.
      data: the ``mjx.Data`` of one env (unused by this version).
      command: f32[8] = action[28:36]: waist roll, pitch, yaw, base height, vx, vy, turning flag, target yaw.

    Returns:
      f32[15]: targets for the 12 leg joints (left then right: hip pitch, roll, yaw, knee, ankle pitch,
      roll) then the 3 waist joints (yaw, roll, pitch), in Psi0's joint order.
    """
    del data
    command = jnp.asarray(command, jnp.float32)
    if command.shape != (8,):
        raise ValueError(f"command must be f32[8], got shape {command.shape}")
    l1, l2 = params.thigh, params.shin
    leg = command[3] - params.hip_drop - params.ankle_to_sole
    leg = jnp.clip(leg, params.min_leg, l1 + l2 - 1e-4)
    cos_knee = (leg**2 - l1**2 - l2**2) / (2.0 * l1 * l2)
    knee = jnp.arccos(jnp.clip(cos_knee, -1.0, 1.0))
    sin_knee = jnp.sin(knee)
    hip_pitch = -jnp.arcsin(jnp.clip(l2 * sin_knee / leg, -1.0, 1.0))
    ankle_pitch = -(knee + hip_pitch)
    zero = jnp.zeros_like(knee)
    one_leg = jnp.stack([hip_pitch, zero, zero, knee, ankle_pitch, zero])
    waist = jnp.stack([command[2], command[0], command[1]])  # joint order: yaw, roll, pitch
    return jnp.concatenate([one_leg, one_leg, waist]).astype(jnp.float32)
