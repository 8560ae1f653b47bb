"""Generates ``g1_bendpick.xml``: the Unitree G1 (29 body joints + two Dex3 hands) in the BendPick scene.

Run from the repository root: ``python envs/g1/assets/make_scene.py`` (rewrites the XML next to this
file). The numbers come from ``g1_kinematics.json`` beside it (kinematics, inertias, joint ranges,
armature, friction loss and torque limits of MuJoCo Menagerie's ``g1_with_hands.xml``, BSD-3-Clause,
(c) Unitree Robotics, see ``G1_LICENSE.txt``); the geometry and actuation are this project's own.

Modelling choices (all chosen for MJX speed; see ``docs`` in ``envs/g1/bendpick.py``):

* Every original mesh becomes a visual-only box (its bounding box), ``contype = conaffinity = 0``.
* Collisions (bit masks, ``a`` and ``b`` collide when ``a.contype & b.conaffinity`` or vice versa):
  floor plane (contype 1), 4 spheres per foot (conaffinity 1), the table top (contype 8, an
  infinite plane that only the target box touches: box-box pairs are what costs in MJX; its friction 0.5 is
  below the box's, so the box's own friction sets the sliding friction, MuJoCo taking the max), the target
  box (contype 4, conaffinity 8), right-hand palm and finger capsules (conaffinity 4; ``priority`` 1 with a
  stiffer impedance ``HAND_SOLIMP``, so a pinched box does not creep). That gives
  8 foot-floor + 1 box-table + 9 hand-box = 18 candidate pairs. Distractors are mocap bodies with
  visual geoms only (posed per episode, contact-free).
* Joints are driven by MuJoCo position actuators (``kp``) with the PD damping as joint damping,
  which the Euler integrator treats implicitly, and armature 0.01: stable for the light finger links
  at dt 0.002. ``forcerange`` is the real robot's torque limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "g1_kinematics.json"
TARGET = HERE / "g1_bendpick.xml"

# --- PD gains (position actuator kp, joint damping kd), keyed by a substring of the joint name. ---
# Legs/waist are stiffer than Psi0's AMO gains (hip 150, knee 300, ankle 80/20): AMO is a learned balance
# controller, while System-0 here is a joint-space controller that must hold the robot up by stiffness.
GAINS: list[tuple[str, float, float]] = [
    ("hip_pitch", 300.0, 6.0),
    ("hip_roll", 300.0, 6.0),
    ("hip_yaw", 200.0, 4.0),
    ("knee", 400.0, 8.0),
    ("ankle_pitch", 300.0, 4.0),
    ("ankle_roll", 150.0, 2.0),
    ("waist", 400.0, 15.0),
    ("shoulder", 100.0, 4.0),
    ("elbow", 100.0, 4.0),
    ("wrist_roll", 40.0, 1.5),
    ("wrist_pitch", 20.0, 1.0),
    ("wrist_yaw", 20.0, 1.0),
    # Dex3 fingers: Psi0's hand kp 80/40/40/60/40/40/40, kd 1.
    ("thumb_0", 80.0, 1.0),
    ("thumb_1", 40.0, 1.0),
    ("thumb_2", 40.0, 1.0),
    ("middle_0", 60.0, 1.0),
    ("middle_1", 40.0, 1.0),
    ("index_0", 40.0, 1.0),
    ("index_1", 40.0, 1.0),
]

# Link colours (rgba) by name pattern, first match wins: distinct per limb so a camera can tell them apart.
COLOURS: list[tuple[str, tuple[float, ...]]] = [
    ("right_hand", (0.90, 0.55, 0.15, 1.0)),
    ("left_hand", (0.30, 0.65, 0.35, 1.0)),
    ("right_wrist", (0.80, 0.45, 0.20, 1.0)),
    ("left_wrist", (0.25, 0.55, 0.30, 1.0)),
    ("right_", (0.25, 0.35, 0.70, 1.0)),
    ("left_", (0.55, 0.30, 0.65, 1.0)),
    ("waist", (0.30, 0.30, 0.33, 1.0)),
    ("torso", (0.75, 0.75, 0.78, 1.0)),
    ("pelvis", (0.20, 0.20, 0.22, 1.0)),
]
HEAD_RGBA = (0.12, 0.12, 0.14, 1.0)

# Scene layout (robot pelvis starts above the origin, facing +x).
TABLE_CENTER = (0.45, 0.0)
TABLE_HALF = (0.20, 0.45)
TABLE_HEIGHT = 0.20  # default; the env config can move it (``table_height``)
BOX_HALF = (0.03, 0.08, 0.105)  # cracker box 0.06 x 0.16 x 0.21 m, wide face towards the robot
BOX_MASS = 0.4
BOX_XY = (0.36, -0.12)  # nominal target position, in front of the right hand
DISTRACTORS = [  # name, geom type, size, rgba, nominal xy
    ("can", "cylinder", "0.033 0.06", (0.15, 0.35, 0.85, 1.0), (0.42, 0.12)),
    ("ball", "sphere", "0.045", (0.20, 0.75, 0.25, 1.0), (0.55, -0.25)),
    ("brick", "box", "0.05 0.035 0.03", (0.95, 0.85, 0.15, 1.0), (0.58, 0.05)),
]
# Hand-box contacts take the hand's parameters (``priority`` 1: its friction 1.2 and this impedance, no
# mixing with the box's; box-table and foot contacts keep MuJoCo's defaults). Impedance d = 0.99 instead of
# the default 0.9-0.95: a soft friction constraint lets a held object creep at a speed proportional to
# (1 - d) / d, and with the default the pinched box slid ~1.1 cm down through the fingers in 2 s. Measured in
# C MuJoCo with the scripted expert (24 seeds): box motion in the palm frame over the 2 s hold 1.3 cm -> 0.4 cm
# max, grasp success unchanged (24/24). impratio = 10 also stops the creep but makes the pinch eject the box.
HAND_SOLIMP = (0.99, 0.99, 0.001, 0.5, 2.0)
EGO_PITCH = 0.75  # rad below horizontal
EGO_FOVY = 77.6  # deg: 110 deg horizontal at 640x360


def _fmt(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in np.atleast_1d(v))


def _quat_to_mat(q) -> np.ndarray:
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _gains(joint: str) -> tuple[float, float]:
    for key, kp, kd in GAINS:
        if key in joint:
            return kp, kd
    raise ValueError(f"no PD gains for joint {joint!r}")


def _colour(body: str) -> tuple[float, ...]:
    for key, rgba in COLOURS:
        if key in body:
            return rgba
    raise ValueError(f"no colour for body {body!r}")


def _link_aabb(geom: dict) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (centre, half) in the link frame enclosing a mesh's oriented bounding box."""
    rot = _quat_to_mat(geom["quat"])
    centre = np.asarray(geom["pos"]) + rot @ np.asarray(geom["aabb_center"])
    half = np.abs(rot) @ np.asarray(geom["aabb_half"])
    return centre, half


def _visual_geoms(body: dict, indent: str) -> list[str]:
    out = []
    for g in body["geoms"]:
        if g["type"] != "mesh" or g["collision"]:
            continue
        rgba = HEAD_RGBA if g["mesh"] == "head_link" else _colour(body["name"])
        rot = _quat_to_mat(g["quat"])
        pos = np.asarray(g["pos"]) + rot @ np.asarray(g["aabb_center"])
        out.append(
            f'{indent}<geom name="{g["mesh"]}_vis" class="visual" type="box" size="{_fmt(g["aabb_half"])}" '
            f'pos="{_fmt(pos)}" quat="{_fmt(g["quat"])}" rgba="{_fmt(rgba)}"/>'
        )
    return out


def _hand_collision_geoms(body: dict, indent: str) -> list[str]:
    """Capsules along the longest axis of each right-hand link's visual bounding box (palm: its slab)."""
    out = []
    for g in body["geoms"]:
        if g["type"] != "mesh" or g["collision"] or not g["mesh"].startswith("right_hand"):
            continue
        centre, half = _link_aabb(g)
        axis = int(np.argmax(half))
        others = [half[i] for i in range(3) if i != axis]
        radius = float(min(min(others), 0.012))
        half_len = max(float(half[axis]) - radius, 0.002)
        d = np.zeros(3)
        d[axis] = half_len
        name = g["mesh"].replace("_link", "")
        out.append(
            f'{indent}<geom name="{name}_col" class="hand_col" type="capsule" size="{radius:.4f}" '
            f'fromto="{_fmt(centre - d)} {_fmt(centre + d)}"/>'
        )
    return out


def _foot_geoms(body: dict, indent: str) -> list[str]:
    out = []
    for i, g in enumerate(gg for gg in body["geoms"] if gg["type"] == "sphere"):
        pos = np.asarray(g["pos"]) + np.array([0.0, 0.0, 0.005])  # radius 0.01 instead of 0.005: same sole
        out.append(f'{indent}<geom name="{body["name"].split("_")[0]}_foot{i}" class="foot" pos="{_fmt(pos)}"/>')
    return out


def _body_xml(bodies: list[dict], name: str, depth: int, actuated: list[str]) -> list[str]:
    body = next(b for b in bodies if b["name"] == name)
    ind = "  " * depth
    lines = [f'{ind}<body name="{name}" pos="{_fmt(body["pos"])}" quat="{_fmt(body["quat"])}">']
    ind2 = ind + "  "
    lines.append(
        f'{ind2}<inertial pos="{_fmt(body["inertial_pos"])}" quat="{_fmt(body["inertial_quat"])}" '
        f'mass="{body["mass"]:.6g}" diaginertia="{_fmt(body["diag_inertia"])}"/>'
    )
    for j in body["joints"]:
        if j["type"] == "free":
            lines.append(f'{ind2}<freejoint name="{j["name"]}"/>')
            continue
        _, kd = _gains(j["name"])
        lines.append(
            f'{ind2}<joint name="{j["name"]}" axis="{_fmt(j["axis"])}" range="{_fmt(j["range"])}" '
            f'armature="{j["armature"]:.6g}" frictionloss="{j["frictionloss"]:.6g}" damping="{kd:.6g}" '
            f'actuatorfrcrange="{-j["torque_limit"]:.6g} {j["torque_limit"]:.6g}"/>'
        )
        actuated.append(j["name"])
    lines += _visual_geoms(body, ind2)
    if name.endswith("ankle_roll_link"):
        lines += _foot_geoms(body, ind2)
    if name.startswith("right_hand") or name == "right_wrist_yaw_link":
        lines += _hand_collision_geoms(body, ind2)
    if name == "right_wrist_yaw_link":
        palm = next(g for g in body["geoms"] if g.get("mesh") == "right_hand_palm_link" and not g["collision"])
        centre, _ = _link_aabb(palm)
        lines.append(f'{ind2}<site name="right_palm" pos="{_fmt(centre)}" size="0.01" rgba="1 0 0 0.5" group="4"/>')
    if name == "torso_link":
        c, s = np.cos(EGO_PITCH), np.sin(EGO_PITCH)
        lines.append(
            f'{ind2}<camera name="ego" pos="0.07 0 0.44" xyaxes="0 -1 0 {s:.6f} 0 {c:.6f}" fovy="{EGO_FOVY}"/>'
        )
    if name == "pelvis":
        lines.append(f'{ind2}<site name="pelvis_imu" size="0.01" group="4"/>')
    for child in (b["name"] for b in bodies if b["parent"] == name):
        lines += _body_xml(bodies, child, depth + 1, actuated)
    lines.append(f"{ind}</body>")
    return lines


def build_xml(spec: dict) -> str:
    """Returns the scene's MJCF text."""
    bodies = spec["bodies"]
    actuated: list[str] = []
    robot = _body_xml(bodies, "pelvis", 2, actuated)
    joint_by_name = {j["name"]: j for b in bodies for j in b["joints"]}
    actuators = []
    for jname in actuated:
        kp, _ = _gains(jname)
        j = joint_by_name[jname]
        actuators.append(
            f'    <position name="{jname.removesuffix("_joint")}" joint="{jname}" kp="{kp:.6g}" '
            f'ctrlrange="{_fmt(j["range"])}" forcerange="{-j["torque_limit"]:.6g} {j["torque_limit"]:.6g}"/>'
        )
    tx, ty = TABLE_CENTER
    bx, by = BOX_XY
    box_z = TABLE_HEIGHT + BOX_HALF[2]
    distractors = []
    for name, gtype, size, rgba, (x, y) in DISTRACTORS:
        distractors.append(
            f'    <body name="{name}" mocap="true" pos="{x} {y} {TABLE_HEIGHT + 0.06:.4f}">\n'
            f'      <geom name="{name}_geom" class="visual" type="{gtype}" size="{size}" rgba="{_fmt(rgba)}"/>\n'
            f"    </body>"
        )
    return "\n".join(
        [
            "<!-- Generated by envs/g1/assets/make_scene.py; do not edit by hand. -->",
            "<!-- Unitree G1 numbers from MuJoCo Menagerie g1_with_hands.xml, BSD-3-Clause, (c) Unitree",
            "     Robotics: see G1_LICENSE.txt. Geometry, actuation and scene are recap_jax's own. -->",
            '<mujoco model="g1_bendpick">',
            '  <compiler angle="radian" autolimits="true"/>',
            '  <option timestep="0.002" integrator="Euler" cone="pyramidal" solver="Newton" iterations="4"',
            '          ls_iterations="8">',
            '    <flag energy="disable"/>',
            "  </option>",
            '  <size memory="4M"/>',
            '  <visual><global offwidth="640" offheight="360"/><headlight ambient="0.3 0.3 0.3"/></visual>',
            "  <default>",
            '    <geom contype="0" conaffinity="0" condim="3" friction="1 0.005 0.0001"/>',
            '    <default class="visual"><geom contype="0" conaffinity="0" group="2" density="0"/></default>',
            '    <default class="foot"><geom type="sphere" size="0.01" contype="0" conaffinity="1" friction="0.8"'
            ' rgba="0.1 0.1 0.1 1" group="3"/></default>',
            '    <default class="hand_col"><geom contype="0" conaffinity="4" friction="1.2" density="0"'
            f' priority="1" solimp="{_fmt(HAND_SOLIMP)}" rgba="0.9 0.55 0.15 0.4" group="3"/></default>',
            '    <position forcelimited="true" ctrllimited="true"/>',
            "  </default>",
            "  <worldbody>",
            '    <light name="key" pos="0.5 0.5 3" dir="-0.2 -0.2 -1" directional="true" diffuse="0.7 0.7 0.7"'
            ' castshadow="false"/>',
            '    <geom name="floor" type="plane" size="0 0 0.05" contype="1" conaffinity="0" rgba="0.45 0.42 0.38 1"/>',
            f'    <geom name="table_top" type="plane" size="0 0 0.05" pos="0 0 {TABLE_HEIGHT}" contype="8"'
            ' conaffinity="0" friction="0.5 0.005 0.0001" rgba="0 0 0 0" group="3"/>',
            f'    <geom name="table" class="visual" type="box" size="{TABLE_HALF[0]} {TABLE_HALF[1]} '
            f'{TABLE_HEIGHT / 2:.4f}" pos="{tx} {ty} {TABLE_HEIGHT / 2:.4f}" rgba="0.55 0.40 0.25 1"/>',
            *robot,
            f'    <body name="box" pos="{bx} {by} {box_z:.4f}">',
            '      <freejoint name="box_joint"/>',
            f'      <geom name="box_geom" type="box" size="{_fmt(BOX_HALF)}" mass="{BOX_MASS}" contype="4"'
            ' conaffinity="8" friction="1 0.005 0.0001" rgba="0.80 0.15 0.10 1"/>',
            "    </body>",
            *distractors,
            "  </worldbody>",
            "  <actuator>",
            *actuators,
            "  </actuator>",
            "</mujoco>",
            "",
        ]
    )


def main() -> None:
    spec = json.loads(SOURCE.read_text())
    TARGET.write_text(build_xml(spec))
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
