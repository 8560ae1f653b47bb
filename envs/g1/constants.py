"""Unitree G1 + Dex3 constants: joint order, qpos/qvel/actuator indices, and Psi0's 32-d state / 36-d action layouts.

Joint order (the 43 hinge joints, Psi0/SIMPLE's order, which is also the MJCF's qpos order after the free
base and the actuator order): left leg (6), right leg (6), waist (3), left arm (7), left hand (7:
thumb0-2, middle0-1, index0-1), right arm (7), right hand (7: thumb0-2, middle0-1, index0-1).

Psi0's state/action vectors list the right hand in a different order (thumb0-2, index0-1, middle0-1);
``STATE_JOINTS`` / ``ACTION_JOINTS`` give, for each slot, the joint it holds, and ``STATE_TO_JOINT``
maps the first 28 slots to indices into ``JOINT_NAMES``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"
SCENE_XML = ASSETS / "g1_bendpick.xml"

_LEG = ("hip_pitch", "hip_roll", "hip_yaw", "knee", "ankle_pitch", "ankle_roll")
_ARM = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_roll", "wrist_pitch", "wrist_yaw")
_HAND_43 = ("thumb_0", "thumb_1", "thumb_2", "middle_0", "middle_1", "index_0", "index_1")
_HAND_RIGHT_PSI0 = ("thumb_0", "thumb_1", "thumb_2", "index_0", "index_1", "middle_0", "middle_1")

JOINT_NAMES: tuple[str, ...] = (
    *(f"left_{j}_joint" for j in _LEG),
    *(f"right_{j}_joint" for j in _LEG),
    "waist_yaw_joint",
    "waist_roll_joint",
    "waist_pitch_joint",
    *(f"left_{j}_joint" for j in _ARM),
    *(f"left_hand_{j}_joint" for j in _HAND_43),
    *(f"right_{j}_joint" for j in _ARM),
    *(f"right_hand_{j}_joint" for j in _HAND_43),
)
NUM_JOINTS = len(JOINT_NAMES)  # 43
assert NUM_JOINTS == 43

# Index ranges into the 43 joints (= actuator index = qpos index - 7 = qvel index - 6).
LEGS = slice(0, 12)
LEFT_LEG = slice(0, 6)
RIGHT_LEG = slice(6, 12)
WAIST = slice(12, 15)  # yaw, roll, pitch
LOWER_BODY = slice(0, 15)  # what System-0 drives
LEFT_ARM = slice(15, 22)
LEFT_HAND = slice(22, 29)
RIGHT_ARM = slice(29, 36)
RIGHT_HAND = slice(36, 43)
UPPER_BODY = slice(15, 43)

# The robot's qpos/qvel in the scene (the free base comes first; the target box's free joint after the robot).
QPOS_BASE_POS = slice(0, 3)
QPOS_BASE_QUAT = slice(3, 7)
QPOS_JOINTS = slice(7, 50)
QPOS_BOX_POS = slice(50, 53)
QPOS_BOX_QUAT = slice(53, 57)
QVEL_BASE = slice(0, 6)
QVEL_JOINTS = slice(6, 49)
QVEL_BOX = slice(49, 55)
NQ, NV, NU = 57, 55, 43

# --- Psi0's 32-d state and 36-d action (absolute targets). ---
STATE_SIZE = 32
ACTION_SIZE = 36
S_LEFT_HAND = slice(0, 7)  # thumb0-2, middle0-1, index0-1
S_RIGHT_HAND = slice(7, 14)  # thumb0-2, index0-1, middle0-1 (!)
S_LEFT_ARM = slice(14, 21)
S_RIGHT_ARM = slice(21, 28)
S_JOINTS = slice(0, 28)
S_COMMAND = slice(28, 32)  # previous commanded torso roll, pitch, yaw, base height
A_JOINTS = slice(0, 28)  # same layout as S_JOINTS
A_WAIST = slice(28, 31)  # torso roll, pitch, yaw
A_HEIGHT = 31
A_VEL = slice(32, 34)  # vx, vy (unsupported: must be 0)
A_TURNING = 34  # turning flag (unsupported: must be 0)
A_TARGET_YAW = 35  # target yaw (unsupported: must be 0)
A_COMMAND = slice(28, 36)  # the System-0 command
A_UNSUPPORTED = slice(32, 36)

NOMINAL_HEIGHT = 0.75
INITIAL_COMMAND = (0.0, 0.0, 0.0, NOMINAL_HEIGHT)

STATE_JOINTS: tuple[str, ...] = (
    *(f"left_hand_{j}_joint" for j in _HAND_43),
    *(f"right_hand_{j}_joint" for j in _HAND_RIGHT_PSI0),
    *(f"left_{j}_joint" for j in _ARM),
    *(f"right_{j}_joint" for j in _ARM),
)
ACTION_JOINTS = STATE_JOINTS  # action[0:28] holds targets for the same joints
STATE_TO_JOINT = np.array([JOINT_NAMES.index(n) for n in STATE_JOINTS], dtype=np.int32)  # int32[28]

# Standing keyframe of the upper body (arms slightly out, elbows bent, thumbs tucked), 43-joint order.
_UPPER_KEYFRAME = {
    "left_shoulder_pitch_joint": 0.2,
    "left_shoulder_roll_joint": 0.2,
    "left_elbow_joint": 1.28,
    "left_hand_thumb_1_joint": 1.05,
    "right_shoulder_pitch_joint": 0.2,
    "right_shoulder_roll_joint": -0.2,
    "right_elbow_joint": 1.28,
    "right_hand_thumb_1_joint": -1.05,
}
DEFAULT_JOINT_POS = np.array([_UPPER_KEYFRAME.get(n, 0.0) for n in JOINT_NAMES], dtype=np.float32)  # f32[43]


def default_action() -> np.ndarray:
    """The 'hold still' action: keyframe arm/hand targets and the nominal stand command. f32[36]."""
    a = np.zeros(ACTION_SIZE, np.float32)
    a[A_JOINTS] = DEFAULT_JOINT_POS[STATE_TO_JOINT]
    a[A_HEIGHT] = NOMINAL_HEIGHT
    return a


# Named bodies/geoms/sites of the scene (looked up by name in the env).
PELVIS = "pelvis"
TORSO = "torso_link"
BOX_BODY = "box"
BOX_GEOM = "box_geom"
RIGHT_PALM_SITE = "right_palm"
RIGHT_HAND_GEOMS = (
    "right_hand_palm_col",
    "right_hand_thumb_0_col",
    "right_hand_thumb_1_col",
    "right_hand_thumb_2_col",
    "right_hand_middle_0_col",
    "right_hand_middle_1_col",
    "right_hand_index_0_col",
    "right_hand_index_1_col",
)
DISTRACTOR_BODIES = ("can", "ball", "brick")
EGO_CAMERA = "ego"
