"""G1 BendPick on MJX: bend down, grasp the cracker box with the right Dex3 hand, lift it 10 cm.

A frozen config, a ``State`` pytree and two pure functions, ``reset(key)`` and ``step(state, action)``,
both for ONE env (``jax.vmap`` them, or use ``envs.wrappers``).

Timing: physics dt 0.002 s, ``substeps`` = 10 per 50 Hz control step (a ``lax.scan``), 60 control steps of
standing still at reset (a ``lax.fori_loop``), ``episode_length`` control steps (600 as in RECAP-Psi0;
400 as in SIMPLE by config).

Physics: Euler integration with joint damping integrated explicitly (``eulerdamp=False``) and the Newton
solver at 1 iteration / 4 line-search steps. With MuJoCo's implicit damping on, the task needed >= 3 Newton
iterations (fewer dropped the grasp or the robot); with it off, Newton 1/4 keeps it (200/200 expert successes,
grasp holds under 1 cm) at 1.8x the old default's (Newton 4/8, eulerdamp on) speed on CPU. Measurements:
``benchmarks/RESULTS.md`` sections ``env_solver_validation``, ``env_solver_sweep_cpu``, ``expert_success``.

Action f32[36] (Psi0's absolute targets, layout in ``envs.g1.constants``): [0:28] hand/arm joint targets,
[28:31] torso roll/pitch/yaw, [31] base height, [32:36] vx, vy, turning flag, target yaw. System-0
(``envs.g1.system0.lower_body_targets``) turns [28:36] into the 15 leg/waist targets once per control
step. Velocity commands are NOT supported (the robot stands in place): a non-zero [32:36] is ignored and
flagged in ``metrics["unsupported_command"]`` (the rollout/host should warn on it).

Observation: ``obs["state"]`` f32[32] (measured hand/arm joint positions in Psi0's layout + the previous
command [roll, pitch, yaw, height], starting at 0, 0, 0, 0.75), ``obs["image"]`` u8[H, W, 3] when
``camera=True``, ``obs["privileged"]`` (for the scripted expert only): ``obj_pos`` f32[3], ``obj_quat``
f32[4] (w, x, y, z), ``obj_pos0`` f32[3] (after stabilisation), ``pelvis_pos`` f32[3], ``pelvis_quat``
f32[4], ``palm_pos`` f32[3] (right palm centre), ``hand_contact`` f32[] and ``t`` int32[] (control steps).

Termination: success (lift = clip((z - z0) / 0.10, 0, 1) >= 0.9 with the box touching the right hand),
fall (pelvis below ``fall_height`` or its z axis tilted more than ``fall_tilt`` rad from vertical), or
non-finite physics (the env keeps its last finite data and gets ``metrics["nan"] = 1``). Truncation at
``episode_length`` sets ``info["truncated"] = 1``. ``done`` is 1.0 for any of them; a done env is frozen
(``step`` returns it unchanged) until it is reset.

Randomisation levels (seeded by the reset key): 0 poses only (box +-``box_xy_range`` m and
+-``box_yaw_range`` rad yaw, distractors +-``distractor_xy_range`` m and any yaw); 1 adds colours (box,
distractors, table, floor), box mass and friction (the box-table sliding friction: the table's 0.5 is lower;
hand-box contacts keep the hand's friction 1.2 and impedance, its geoms having contact priority); 2 adds
lighting and camera jitter. All per-episode values live in ``info["scene"]`` (the camera reads
colours/light/jitter from there).

Scene simplifications (for MJX speed): only the feet (4 spheres each) touch the floor and only the
right hand (palm + finger capsules) touches the box; the table top is an infinite plane that only the box
touches (a box under it is drawn); distractors are contact-free mocap bodies.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct
from mujoco import mjx

from envs.g1 import constants as C
from envs.g1 import system0

SOLVERS = {"newton": mujoco.mjtSolver.mjSOL_NEWTON, "cg": mujoco.mjtSolver.mjSOL_CG}  # config.solver -> opt.solver


@dataclasses.dataclass(frozen=True)
class BendPickConfig:
    """Static configuration of ``G1BendPick-v0`` (fields are the ``envs.make`` overrides)."""

    episode_length: int = 600  # control steps (SIMPLE: 400)
    substeps: int = 10  # physics steps per control step (dt 0.002 -> 50 Hz)
    stabilize_steps: int = 60  # control steps of standing still at reset
    randomization_level: int = 0  # 0 poses, 1 + colours/mass/friction, 2 + lighting/camera jitter
    camera: bool = False
    image_size: tuple[int, int] = (96, 160)  # (H, W)
    table_height: float = 0.20  # m, top of the low table the box stands on
    box_xy_range: float = 0.03  # m, +- around the nominal box position
    box_yaw_range: float = 0.15  # rad
    distractor_xy_range: float = 0.05  # m
    lift_height: float = 0.10  # m for lift = 1
    success_lift: float = 0.9
    contact_tol: float = 0.002  # m: hand-box distance that counts as contact
    fall_height: float = 0.30  # m, pelvis height below which the robot has fallen
    fall_tilt: float = 1.0  # rad, pelvis tilt beyond which the robot has fallen
    solver: str = "newton"  # MuJoCo constraint solver: "newton" or "cg"
    solver_iterations: int = 1  # 1/4 validated with eulerdamp off (see the module docstring)
    ls_iterations: int = 4
    # Implicit joint damping in the Euler integrator (MuJoCo's eulerdamp flag). False integrates damping
    # explicitly and skips one factorisation of M + dt * diag(damping) per physics step (MJX's speed advice);
    # explicit damping is stable here: every joint has armature 0.01, and dt * damping / M_ii <= 0.63 at the stand
    # (ankle pitch; < 2 is the explicit-Euler limit).
    eulerdamp: bool = False
    success_reward: float = 1.0  # reward term weights: reward = sum_k weight_k * term_k
    lift_reward: float = 0.0
    box_mass_range: tuple[float, float] = (0.3, 0.5)  # kg, level >= 1
    box_friction_range: tuple[float, float] = (0.6, 1.2)  # level >= 1
    camera_pos_jitter: float = 0.01  # m, level >= 2
    camera_rot_jitter: float = 0.03  # rad, level >= 2

    def validate(self) -> None:
        """Raises ValueError on an inconsistent config."""
        if self.randomization_level not in (0, 1, 2):
            raise ValueError(f"randomization_level must be 0, 1 or 2, got {self.randomization_level}")
        for name in ("episode_length", "substeps", "solver_iterations", "ls_iterations"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}")
        if self.stabilize_steps < 0:
            raise ValueError(f"stabilize_steps must be >= 0, got {self.stabilize_steps}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with positive entries, got {self.image_size}")
        if not 0.0 <= self.table_height <= 0.6:
            raise ValueError(f"table_height must be in [0, 0.6] m, got {self.table_height}")


class Physics(NamedTuple):
    """A physics setting: the ``G1BendPick-v0`` overrides ``solver``, ``solver_iterations``, ``ls_iterations``
    and ``eulerdamp`` (``overrides()``), written ``solver:iterations:ls_iterations[:eulerdamp|:noeulerdamp]``."""

    solver: str
    iterations: int
    ls_iterations: int
    eulerdamp: bool

    def overrides(self) -> dict[str, Any]:
        return {
            "solver": self.solver,
            "solver_iterations": self.iterations,
            "ls_iterations": self.ls_iterations,
            "eulerdamp": self.eulerdamp,
        }

    def label(self) -> str:
        """E.g. ``NEWTON 4/8`` (eulerdamp on) or ``NEWTON 1/4 no-eulerdamp``."""
        return f"{self.solver.upper()} {self.iterations}/{self.ls_iterations}" + (
            "" if self.eulerdamp else " no-eulerdamp"
        )


def parse_physics(text: str) -> Physics:
    """``"newton:4:8"`` or ``"newton:1:4:noeulerdamp"`` -> ``Physics``; raises ValueError naming the problem.

    Without the fourth field, eulerdamp is the default config's (``BendPickConfig.eulerdamp``).
    """
    parts = text.strip().lower().split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("eulerdamp", "noeulerdamp")):
        raise ValueError(
            f"physics config {text!r} is not solver:iterations:ls_iterations[:eulerdamp|:noeulerdamp] (e.g. newton:4:8)"
        )
    try:
        iters, ls = int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"physics config {text!r}: iterations and ls_iterations must be integers") from None
    eulerdamp = BendPickConfig.eulerdamp if len(parts) == 3 else parts[3] == "eulerdamp"
    physics = Physics(parts[0], iters, ls, eulerdamp)
    dataclasses.replace(BendPickConfig(), **physics.overrides()).validate()  # unknown solver, iterations < 1
    return physics


def describe_physics(m: mujoco.MjModel) -> str:
    """One line naming a compiled model's solver, its iteration caps and integrator, e.g.
    ``NEWTON 1 iterations / 4 line-search, EULER (eulerdamp off)``."""
    return (
        f"{mujoco.mjtSolver(m.opt.solver).name.removeprefix('mjSOL_')} "
        f"{m.opt.iterations} iterations / {m.opt.ls_iterations} line-search, "
        f"{mujoco.mjtIntegrator(m.opt.integrator).name.removeprefix('mjINT_')}"
        + (" (eulerdamp off)" if m.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_EULERDAMP else "")
    )


def default_config() -> BendPickConfig:
    """The study's configuration of G1BendPick-v0."""
    return BendPickConfig()


@struct.dataclass
class State:
    """One env's state (add a leading batch axis under ``jax.vmap``).

    data: mjx.Data; obs: {"state": f32[32], "image": u8[H, W, 3] (camera on), "privileged": {...}};
    reward: f32[]; done: f32[] (1 = terminated or truncated); metrics: {"success", "lift", "fell", "nan",
    "hand_contact", "unsupported_command", "reward/<term>"} all f32[]; info: {"step": i32[], "truncated":
    f32[], "terminated": f32[], "command": f32[4], "obj_pos0": f32[3], "rng": u32[2], "scene": {...}}.
    """

    data: mjx.Data
    obs: dict[str, Any]
    reward: jax.Array
    done: jax.Array
    metrics: dict[str, jax.Array]
    info: dict[str, Any]


def hand_box_contact(data: mjx.Data, hand_geoms: jax.Array, box_geom: int, tol: float = 0.002) -> jax.Array:
    """Whether any right-hand collision geom touches the box (contact distance < ``tol``).

    Args:
      data: one env's ``mjx.Data`` (after collision detection, i.e. any stepped/forwarded data).
      hand_geoms: int32[G] geom ids of the right hand's collision geoms.
      box_geom: the box's geom id.
      tol: metres.

    Returns: bool[].
    """
    contact = data._impl.contact
    g1, g2 = contact.geom[:, 0], contact.geom[:, 1]
    hand1 = jnp.any(g1[:, None] == hand_geoms[None, :], axis=1)
    hand2 = jnp.any(g2[:, None] == hand_geoms[None, :], axis=1)
    pair = (hand1 & (g2 == box_geom)) | (hand2 & (g1 == box_geom))
    return jnp.any(pair & (contact.dist < tol))


def _yaw_quat(yaw: jax.Array) -> jax.Array:
    """f32[...] -> f32[..., 4] (w, x, y, z) rotation about world z."""
    return jnp.stack([jnp.cos(yaw / 2), jnp.zeros_like(yaw), jnp.zeros_like(yaw), jnp.sin(yaw / 2)], axis=-1)


def _tilt(quat: jax.Array) -> jax.Array:
    """Angle (rad) between a body's z axis and world z, from its quaternion f32[4] (w, x, y, z)."""
    x, y = quat[1], quat[2]
    zz = 1.0 - 2.0 * (x * x + y * y)  # R[2, 2]
    return jnp.arccos(jnp.clip(zz, -1.0, 1.0))


def _tree_where(cond: jax.Array, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _as_raw_key(key: jax.Array) -> jax.Array:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


class G1BendPick:
    """The G1 BendPick environment (single env). Holds only static model data and the config."""

    action_size = C.ACTION_SIZE
    state_size = C.STATE_SIZE

    def __init__(self, config: BendPickConfig | None = None, **overrides: Any):
        config = config or default_config()
        if overrides:
            names = {f.name for f in dataclasses.fields(BendPickConfig)}
            unknown = sorted(set(overrides) - names)
            if unknown:
                raise ValueError(f"unknown G1BendPick config field(s) {unknown}; valid: {sorted(names)}")
            config = dataclasses.replace(config, **overrides)
        config.validate()
        self.config = config
        self.system0_params = system0.default_params()
        self.mj_model = self._build_mj_model(config)
        self.mjx_model = mjx.put_model(self.mj_model, impl="jax")
        m = self.mj_model
        self.pelvis_id = m.body(C.PELVIS).id
        self.box_body_id = m.body(C.BOX_BODY).id
        self.box_geom_id = m.geom(C.BOX_GEOM).id
        self.palm_site_id = m.site(C.RIGHT_PALM_SITE).id
        self.hand_geom_ids = np.array([m.geom(n).id for n in C.RIGHT_HAND_GEOMS], np.int32)
        self.distractor_geom_ids = np.array([m.geom(f"{n}_geom").id for n in C.DISTRACTOR_BODIES], np.int32)
        self.init_qpos = self._standing_qpos(m)  # f64[57]
        self.default_action = jnp.asarray(C.default_action())
        self._state_to_joint = jnp.asarray(C.STATE_TO_JOINT)
        from envs.g1 import camera  # the ego-camera renderer (built even with camera=False: rollouts call render)

        self.camera_scene = camera.make_scene(m, camera="ego", image_size=config.image_size)

    # ------------------------------------------------------------------ model
    @staticmethod
    def _build_mj_model(config: BendPickConfig) -> mujoco.MjModel:
        m = mujoco.MjModel.from_xml_path(str(C.SCENE_XML))
        h = float(config.table_height)
        m.geom_pos[m.geom("table_top").id, 2] = h
        table = m.geom("table").id
        m.geom_size[table, 2] = max(h / 2, 0.005)
        m.geom_pos[table, 2] = max(h / 2, 0.005)
        box_jnt = m.joint("box_joint")
        m.qpos0[box_jnt.qposadr[0] + 2] = h + m.geom_size[m.geom(C.BOX_GEOM).id, 2]
        for name in C.DISTRACTOR_BODIES:  # rest the distractors on the table top
            gid = m.geom(f"{name}_geom").id
            half_height = {
                mujoco.mjtGeom.mjGEOM_CYLINDER: m.geom_size[gid, 1],
                mujoco.mjtGeom.mjGEOM_BOX: m.geom_size[gid, 2],
            }.get(m.geom_type[gid], m.geom_size[gid, 0])
            m.body_pos[m.body(name).id, 2] = h + half_height
        m.opt.solver = SOLVERS[config.solver]
        m.opt.iterations = int(config.solver_iterations)
        m.opt.ls_iterations = int(config.ls_iterations)
        if not config.eulerdamp:
            m.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_EULERDAMP)
        return m

    def _standing_qpos(self, m: mujoco.MjModel) -> np.ndarray:
        """qpos with the nominal stand (System-0 at the nominal command) and the feet just on the floor."""
        d = mujoco.MjData(m)
        command = jnp.asarray([*C.INITIAL_COMMAND, 0.0, 0.0, 0.0, 0.0], jnp.float32)
        joints = C.DEFAULT_JOINT_POS.copy()
        joints[C.LOWER_BODY] = np.asarray(system0.lower_body_targets(self.system0_params, None, command))
        d.qpos[:] = m.qpos0
        d.qpos[C.QPOS_JOINTS] = joints
        d.qpos[2] = 1.0
        mujoco.mj_kinematics(m, d)
        feet = [i for i in range(m.ngeom) if "_foot" in (m.geom(i).name or "")]
        sole = min(d.geom_xpos[i, 2] - m.geom_size[i, 0] for i in feet)
        d.qpos[2] -= sole - 1e-4
        return d.qpos.copy()

    def default_config(self) -> BendPickConfig:
        return default_config()

    # ------------------------------------------------------------------ randomisation
    def _sample_scene(self, key: jax.Array) -> dict[str, jax.Array]:
        """Per-episode randomisation (level-dependent; fixed structure). All leaves f32."""
        cfg = self.config
        m = self.mj_model
        ks = jax.random.split(key, 8)
        lvl1 = cfg.randomization_level >= 1
        lvl2 = cfg.randomization_level >= 2
        base_rgba = {
            "box_rgba": m.geom_rgba[self.box_geom_id],
            "distractor_rgba": m.geom_rgba[self.distractor_geom_ids],
            "table_rgba": m.geom_rgba[m.geom("table").id],
            "floor_rgba": m.geom_rgba[m.geom("floor").id],
        }
        scene: dict[str, jax.Array] = {}
        for i, (name, rgba) in enumerate(base_rgba.items()):
            rgba = jnp.asarray(rgba, jnp.float32)
            if lvl1:
                jitter = jax.random.uniform(ks[i], (*rgba.shape[:-1], 3), minval=-0.25, maxval=0.25)
                rgb = jnp.clip(rgba[..., :3] + jitter, 0.0, 1.0)
                rgba = jnp.concatenate([rgb, rgba[..., 3:]], axis=-1)
            scene[name] = rgba
        box_mass = float(m.body_mass[self.box_body_id])
        box_friction = float(m.geom_friction[self.box_geom_id, 0])
        if lvl1:
            box_mass = jax.random.uniform(ks[4], (), minval=cfg.box_mass_range[0], maxval=cfg.box_mass_range[1])
            box_friction = jax.random.uniform(
                ks[5], (), minval=cfg.box_friction_range[0], maxval=cfg.box_friction_range[1]
            )
        scene["box_mass"] = jnp.asarray(box_mass, jnp.float32)
        scene["box_friction"] = jnp.asarray(box_friction, jnp.float32)
        light_dir = jnp.asarray(m.light_dir[0], jnp.float32)
        light_diffuse = jnp.asarray(m.light_diffuse[0], jnp.float32)
        cam_pos = jnp.zeros(3, jnp.float32)
        cam_rot = jnp.zeros(3, jnp.float32)
        if lvl2:
            k_ld, k_li, k_cp, k_cr = jax.random.split(ks[6], 4)
            light_dir = light_dir + jax.random.uniform(k_ld, (3,), minval=-0.3, maxval=0.3)
            light_dir = light_dir / jnp.linalg.norm(light_dir)
            light_diffuse = light_diffuse * jax.random.uniform(k_li, (), minval=0.6, maxval=1.3)
            cam_pos = jax.random.uniform(k_cp, (3,), minval=-1.0, maxval=1.0) * cfg.camera_pos_jitter
            cam_rot = jax.random.uniform(k_cr, (3,), minval=-1.0, maxval=1.0) * cfg.camera_rot_jitter
        scene["light_dir"] = light_dir
        scene["light_diffuse"] = light_diffuse
        scene["camera_pos_offset"] = cam_pos  # metres, in the camera frame
        scene["camera_rot_offset"] = cam_rot  # rad (roll, pitch, yaw) in the camera frame
        return scene

    def _model(self, scene: dict[str, jax.Array]) -> mjx.Model:
        """The MJX model with this episode's box mass and friction (identity at level 0)."""
        mx = self.mjx_model
        if self.config.randomization_level < 1:
            return mx
        b, g = self.box_body_id, self.box_geom_id
        scale = scene["box_mass"] / mx.body_mass[b]
        return mx.replace(
            body_mass=mx.body_mass.at[b].set(scene["box_mass"]),
            body_inertia=mx.body_inertia.at[b].multiply(scale),
            geom_friction=mx.geom_friction.at[g, 0].set(scene["box_friction"]),
        )

    # ------------------------------------------------------------------ physics
    def _ctrl(self, data: mjx.Data, action: jax.Array) -> jax.Array:
        """Actuator targets f32[43] from a Psi0 action f32[36] (System-0 fills the lower body)."""
        lower = system0.lower_body_targets(self.system0_params, data, action[C.A_COMMAND])
        ctrl = jnp.zeros(C.NU, jnp.float32).at[self._state_to_joint].set(action[C.A_JOINTS])
        return ctrl.at[C.LOWER_BODY].set(lower)

    def _physics(self, model: mjx.Model, data: mjx.Data, action: jax.Array) -> mjx.Data:
        """One control step: System-0 once, then ``substeps`` physics steps in a lax.scan."""
        data = data.replace(ctrl=self._ctrl(data, action))

        def substep(d, _):
            return mjx.step(model, d), None

        data, _ = jax.lax.scan(substep, data, None, length=self.config.substeps)
        return data

    # ------------------------------------------------------------------ observations
    def _obs(self, data: mjx.Data, command: jax.Array, obj_pos0: jax.Array, contact: jax.Array) -> dict:
        joints = data.qpos[C.QPOS_JOINTS]
        state = jnp.concatenate([joints[self._state_to_joint], command]).astype(jnp.float32)
        privileged = {
            "obj_pos": data.xpos[self.box_body_id].astype(jnp.float32),
            "obj_quat": data.xquat[self.box_body_id].astype(jnp.float32),
            "obj_pos0": obj_pos0.astype(jnp.float32),
            "pelvis_pos": data.xpos[self.pelvis_id].astype(jnp.float32),
            "pelvis_quat": data.xquat[self.pelvis_id].astype(jnp.float32),
            "palm_pos": data.site_xpos[self.palm_site_id].astype(jnp.float32),
            "hand_contact": contact.astype(jnp.float32),
            "t": jnp.zeros((), jnp.int32),
        }
        return {"state": state, "privileged": privileged}

    def _render_obs(self, data: mjx.Data, key: jax.Array, scene: dict[str, jax.Array] | None = None) -> jax.Array:
        """Ego-camera image of one env, u8[H, W, 3] (``config.image_size``), by ``envs.g1.camera``.

        ``scene`` is the episode's ``info["scene"]`` (colours, light, camera jitter); without it the model's
        own look is drawn. ``key`` is unused: the renderer is deterministic.
        """
        from envs.g1 import camera

        del key
        look = camera.default_appearance(self.camera_scene)
        if scene is not None:
            m = self.mj_model
            rgb = look.geom_rgb.at[self.box_geom_id].set(scene["box_rgba"][:3])
            rgb = rgb.at[self.distractor_geom_ids].set(scene["distractor_rgba"][:, :3])
            rgb = rgb.at[m.geom("table").id].set(scene["table_rgba"][:3])
            rgb = rgb.at[m.geom("floor").id].set(scene["floor_rgba"][:3])
            look = look.replace(
                geom_rgb=rgb,
                light_dir=look.light_dir.at[0].set(scene["light_dir"]),
                light_rgb=look.light_rgb.at[0].set(scene["light_diffuse"]),
                cam_offset=scene["camera_pos_offset"],
                cam_rotation=camera.rotvec_to_matrix(scene["camera_rot_offset"]),
            )
        return camera.render_rgb(self.camera_scene, data, look)

    def render(self, state: State) -> jax.Array:
        """u8[H, W, 3] ego-camera image of one env's state (works with ``camera=False`` too)."""
        return self._render_obs(state.data, state.info["rng"], state.info["scene"])

    # ------------------------------------------------------------------ API
    def reset(self, key: jax.Array) -> State:
        """A new episode (poses seeded by ``key``), after ``stabilize_steps`` control steps standing still."""
        cfg = self.config
        key = _as_raw_key(key)
        k_box, k_dist, k_scene, k_rng = jax.random.split(key, 4)
        scene = self._sample_scene(k_scene)
        model = self._model(scene)

        qpos = jnp.asarray(self.init_qpos, jnp.float32)
        kb1, kb2 = jax.random.split(k_box)
        dxy = jax.random.uniform(kb1, (2,), minval=-cfg.box_xy_range, maxval=cfg.box_xy_range)
        yaw = jax.random.uniform(kb2, (), minval=-cfg.box_yaw_range, maxval=cfg.box_yaw_range)
        qpos = qpos.at[C.QPOS_BOX_POS.start : C.QPOS_BOX_POS.start + 2].add(dxy)
        qpos = qpos.at[C.QPOS_BOX_QUAT].set(_yaw_quat(yaw))

        kd1, kd2 = jax.random.split(k_dist)
        n_d = len(C.DISTRACTOR_BODIES)
        mocap_pos = jnp.asarray(self.mj_model.body_pos[[self.mj_model.body(n).id for n in C.DISTRACTOR_BODIES]])
        mocap_pos = mocap_pos.at[:, :2].add(
            jax.random.uniform(kd1, (n_d, 2), minval=-cfg.distractor_xy_range, maxval=cfg.distractor_xy_range)
        )
        mocap_quat = _yaw_quat(jax.random.uniform(kd2, (n_d,), minval=-jnp.pi, maxval=jnp.pi))

        data = mjx.make_data(model)
        data = data.replace(qpos=qpos, mocap_pos=mocap_pos, mocap_quat=mocap_quat)
        action = self.default_action
        data = data.replace(ctrl=self._ctrl(data, action))
        data = mjx.forward(model, data)
        data = jax.lax.fori_loop(0, cfg.stabilize_steps, lambda _, d: self._physics(model, d, action), data)

        command = jnp.asarray(C.INITIAL_COMMAND, jnp.float32)
        obj_pos0 = data.xpos[self.box_body_id]
        contact = hand_box_contact(data, jnp.asarray(self.hand_geom_ids), self.box_geom_id, cfg.contact_tol)
        obs = self._obs(data, command, obj_pos0, contact)
        zero = jnp.zeros((), jnp.float32)
        info = {
            "step": jnp.zeros((), jnp.int32),
            "truncated": zero,
            "terminated": zero,
            "command": command,
            "obj_pos0": obj_pos0.astype(jnp.float32),
            "rng": k_rng,
            "scene": scene,
        }
        metrics = {
            "success": zero,
            "lift": zero,
            "fell": zero,
            "nan": zero,
            "hand_contact": contact.astype(jnp.float32),
            "unsupported_command": zero,
            "reward/success": zero,
            "reward/lift": zero,
        }
        state = State(data=data, obs=obs, reward=zero, done=zero, metrics=metrics, info=info)
        if cfg.camera:
            state = state.replace(obs={**obs, "image": self.render(state)})
        return state

    def step(self, state: State, action: jax.Array) -> State:
        """One 50 Hz control step of one env. ``action``: f32[36] absolute targets. A done env is frozen."""
        cfg = self.config
        action = jnp.asarray(action, jnp.float32)
        if action.shape != (C.ACTION_SIZE,):
            raise ValueError(f"action must be f32[{C.ACTION_SIZE}] for one env, got shape {action.shape}")
        model = self._model(state.info["scene"])
        data = self._physics(model, state.data, action)

        finite = jnp.all(jnp.isfinite(data.qpos)) & jnp.all(jnp.isfinite(data.qvel))
        data = _tree_where(finite, data, state.data)  # never let NaN into the batch
        nan = ~finite

        t = state.info["step"] + 1
        obj_pos0 = state.info["obj_pos0"]
        contact = hand_box_contact(data, jnp.asarray(self.hand_geom_ids), self.box_geom_id, cfg.contact_tol)
        lift = jnp.clip((data.xpos[self.box_body_id, 2] - obj_pos0[2]) / cfg.lift_height, 0.0, 1.0)
        success = (lift >= cfg.success_lift) & contact & finite
        pelvis_z = data.xpos[self.pelvis_id, 2]
        fell = ((pelvis_z < cfg.fall_height) | (_tilt(data.xquat[self.pelvis_id]) > cfg.fall_tilt)) & finite
        terminated = success | fell | nan
        truncated = (t >= cfg.episode_length) & ~terminated

        terms = {"success": success.astype(jnp.float32), "lift": lift.astype(jnp.float32)}
        reward = cfg.success_reward * terms["success"] + cfg.lift_reward * terms["lift"]
        command = action[C.A_WAIST.start : C.A_HEIGHT + 1]  # previous torso roll, pitch, yaw, height
        f32 = lambda x: jnp.asarray(x, jnp.float32)
        obs = self._obs(data, command, obj_pos0, contact)
        obs["privileged"]["t"] = t
        rng, k_img = jax.random.split(state.info["rng"])
        metrics = {
            "success": f32(success),
            "lift": f32(lift),
            "fell": f32(fell),
            "nan": f32(nan),
            "hand_contact": f32(contact),
            "unsupported_command": f32(jnp.any(action[C.A_UNSUPPORTED] != 0.0)),
            "reward/success": f32(cfg.success_reward * terms["success"]),
            "reward/lift": f32(cfg.lift_reward * terms["lift"]),
        }
        info = {
            **state.info,
            "step": t,
            "truncated": f32(truncated),
            "terminated": f32(terminated),
            "command": command,
            "rng": rng,
        }
        if cfg.camera:
            obs["image"] = self._render_obs(data, k_img, state.info["scene"])
        new = State(
            data=data, obs=obs, reward=f32(reward), done=f32(terminated | truncated), metrics=metrics, info=info
        )
        return _tree_where(state.done > 0, state, new)
