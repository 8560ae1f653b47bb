"""Tests for the pure-JAX ray-cast camera (envs/g1/camera.py)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from envs.g1 import camera

# A small scene with every supported primitive, some rotated, a hidden collision geom (group 3), an
# alpha-0 geom, and a "robot" whose torso carries the camera and whose arm can reach down.
SCENE_XML = """
<mujoco>
  <visual><headlight ambient="0.3 0.3 0.3" diffuse="0.3 0.3 0.3"/></visual>
  <worldbody>
    <light name="key" dir="-1 0 -1" directional="true" diffuse="0.8 0.8 0.8"/>
    <geom name="floor" type="plane" size="0 0 0.05" rgba="0.5 0.5 0.45 1"/>
    <geom name="table" type="box" size="0.2 0.35 0.1" pos="0.55 0 0.1" rgba="0.55 0.4 0.25 1"/>
    <body name="target" pos="0.5 -0.05 0.25">
      <freejoint/>
      <geom name="target" type="box" size="0.05 0.05 0.05" quat="0.97 0 0 0.26" rgba="0.8 0.15 0.1 1"/>
    </body>
    <geom name="ball" type="sphere" size="0.05" pos="0.6 0.18 0.25" rgba="0.2 0.75 0.25 1"/>
    <geom name="can" type="cylinder" size="0.035 0.05" pos="0.42 0.2 0.25" quat="0.92 0.38 0 0"
          rgba="0.15 0.35 0.85 1"/>
    <geom name="pill" type="capsule" size="0.025 0.07" pos="0.65 -0.2 0.225" quat="0.71 0 0.71 0" rgba="0.9 0.8 0.1 1"/>
    <geom name="egg" type="ellipsoid" size="0.05 0.03 0.025" pos="0.4 -0.22 0.23" quat="0.9 0.1 0.3 0.2"
          rgba="0.6 0.2 0.7 1"/>
    <geom name="ghost" type="box" size="0.1 0.1 0.1" pos="0.6 0 0.5" group="3"/>
    <geom name="clear" type="sphere" size="0.1" pos="0.5 0.1 0.5" rgba="1 1 1 0"/>
    <body name="torso" pos="0 0 1.0">
      <geom name="torso" type="box" size="0.08 0.12 0.15" rgba="0.7 0.7 0.75 1"/>
      <camera name="ego" pos="0.09 0 0.1" xyaxes="0 -1 0 0.85 0 0.5" fovy="77.6"/>
      <body name="right_upper_arm" pos="0.0 -0.17 0.1">
        <joint name="right_shoulder" axis="0 1 0"/>
        <geom type="capsule" fromto="0 0 0 0 0 -0.25" size="0.035" rgba="0.3 0.4 0.7 1"/>
        <body name="right_hand" pos="0 0 -0.3">
          <geom name="right_hand" type="box" size="0.03 0.04 0.05" rgba="0.9 0.55 0.15 1"/>
        </body>
      </body>
    </body>
  </worldbody>
</mujoco>
"""


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_string(SCENE_XML)


@pytest.fixture(scope="module")
def scene(model):
    return camera.make_scene(model, camera="ego", image_size=(64, 112))


@pytest.fixture(scope="module")
def render_fn(scene):
    return jax.jit(lambda pos, mat, cp, cm: camera.render_all(scene, pos, mat, cp, cm))


def _forward(model, qpos=None):
    data = mujoco.MjData(model)
    if qpos is not None:
        data.qpos[:] = qpos
    mujoco.mj_forward(model, data)
    return data


def _render(render_fn, scene, data):
    out = render_fn(
        jnp.asarray(data.geom_xpos, jnp.float32),
        jnp.asarray(data.geom_xmat, jnp.float32),
        jnp.asarray(data.cam_xpos[scene.camera_id], jnp.float32),
        jnp.asarray(data.cam_xmat[scene.camera_id], jnp.float32),
    )
    return {k: np.asarray(v) for k, v in out.items()}


def _geom(model, name):
    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)


def _centroid(mask):
    rows, cols = np.nonzero(mask)
    return np.array([rows.mean() + 0.5, cols.mean() + 0.5])


def test_depth_and_ids_match_mj_ray(model, scene, render_fn):
    data = _forward(model)
    out = _render(render_fn, scene, data)
    cam_pos, cam_mat = data.cam_xpos[0], data.cam_xmat[0].reshape(3, 3)
    rays = np.asarray(camera.camera_rays(scene.height, scene.width, scene.fovy), np.float64)
    geomgroup = np.array([1, 1, 1, 0, 0, 0], np.uint8)
    geomid = np.zeros(1, np.int32)
    both, disagree, seen = 0, 0, set()
    for r in range(scene.height):
        for c in range(scene.width):
            d_world = cam_mat @ rays[r, c]
            dist = mujoco.mj_ray(model, data, cam_pos, d_world, geomgroup, 1, -1, geomid)
            ours = out["segmentation"][r, c]
            if dist < 0 or ours < 0:
                disagree += (dist < 0) != (ours < 0)
                continue
            both += 1
            seen.add(int(geomid[0]))
            np.testing.assert_allclose(out["depth"][r, c] / -rays[r, c, 2], dist, atol=1e-3)
            disagree += ours != geomid[0]
    assert both > 2000
    assert disagree <= 0.01 * both  # only silhouette pixels may round differently
    # Every primitive type was hit, and the hidden geoms never were.
    types = {int(model.geom_type[g]) for g in seen}
    assert types == {0, 2, 3, 4, 5, 6}
    assert _geom(model, "ghost") not in out["segmentation"] and _geom(model, "clear") not in out["segmentation"]


def test_target_centroid_matches_projection(model, scene, render_fn):
    data = _forward(model)
    out = _render(render_fn, scene, data)
    target = _geom(model, "target")
    mask = out["segmentation"] == target
    assert mask.sum() > 10
    centre = camera.project(
        jnp.asarray(data.geom_xpos[target]),
        jnp.asarray(data.cam_xpos[0]),
        jnp.asarray(data.cam_xmat[0]).reshape(3, 3),
        scene,
    )
    assert np.linalg.norm(_centroid(mask) - np.asarray(centre)) < 2.0
    bodies = np.asarray(camera.body_segmentation(scene, jnp.asarray(out["segmentation"])))
    np.testing.assert_array_equal(bodies == model.body("target").id, mask)
    assert np.all((bodies == -1) == (out["segmentation"] == -1))


def test_box_moves_in_image(model, scene, render_fn):
    target = _geom(model, "target")
    data = _forward(model)
    before = _centroid(_render(render_fn, scene, data)["segmentation"] == target)
    qpos = data.qpos.copy()
    qpos[1] -= 0.20  # world -y is image right for this camera
    moved = _forward(model, qpos)
    after = _centroid(_render(render_fn, scene, moved)["segmentation"] == target)
    expected = np.asarray(
        camera.project(
            jnp.asarray(moved.geom_xpos[target]),
            jnp.asarray(moved.cam_xpos[0]),
            jnp.asarray(moved.cam_xmat[0]).reshape(3, 3),
            scene,
        )
    )
    assert after[1] - before[1] > 5.0
    assert np.linalg.norm(after - expected) < 2.0


def test_hand_enters_frame_when_reaching_down(model, scene, render_fn):
    hand = _geom(model, "right_hand")
    data = _forward(model)
    qpos = data.qpos.copy()
    qpos[-1] = 0.0  # arm hanging at the side: the hand is below and behind the camera's view
    idle = _render(render_fn, scene, _forward(model, qpos))["segmentation"] == hand
    qpos[-1] = -0.9  # shoulder pitch: swing the arm forward and down, in front of the torso
    reach = _render(render_fn, scene, _forward(model, qpos))["segmentation"] == hand
    assert idle.sum() == 0
    assert reach.sum() > 20
    assert _centroid(reach)[1] > scene.width / 2  # robot's right = image right


def test_row_chunks_identical(model, scene, render_fn):
    data = _forward(model)
    assert scene.row_chunks == camera.auto_row_chunks(64, 112) == 4  # 1792-pixel bands
    assert camera.auto_row_chunks(96, 160) == 8 and camera.auto_row_chunks(180, 320) == 30
    banded = camera.make_scene(model, camera="ego", image_size=(64, 112), row_chunks=1)
    a = _render(render_fn, scene, data)
    b = _render(jax.jit(lambda *x: camera.render_all(banded, *x)), banded, data)
    np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
    np.testing.assert_allclose(a["depth"], b["depth"], rtol=1e-5)  # XLA may fuse the bands differently
    assert np.abs(np.asarray(a["rgb"], int) - np.asarray(b["rgb"], int)).max() <= 1


def _world_points(scene, data, depth):
    """World positions of every pixel's hit from the z-depth: float [H, W, 3]."""
    rays = np.asarray(camera.camera_rays(scene.height, scene.width, scene.fovy))
    cam_frame = rays * (depth / -rays[..., 2])[..., None]
    return data.cam_xpos[0] + cam_frame @ data.cam_xmat[0].reshape(3, 3).T


def test_shadow_under_ball(model, scene, render_fn):
    """The light travels towards -x at 45°: the table top 7 cm in front of the ball is in its shadow."""
    data = _forward(model)
    table = _geom(model, "table")
    ball = data.geom_xpos[_geom(model, "ball")]
    others = [data.geom_xpos[_geom(model, n)] for n in ("ball", "target", "can", "pill", "egg")]

    def regions(out):
        pts = _world_points(scene, data, out["depth"])
        on_top = (out["segmentation"] == table) & (np.abs(pts[..., 2] - 0.2) < 1e-3)
        shadow_centre = ball[:2] - np.array([0.07, 0.0])
        shade = on_top & (np.linalg.norm(pts[..., :2] - shadow_centre, axis=-1) < 0.035)
        far = [
            np.linalg.norm(pts[..., :2] - o[:2] + np.array([dx, 0.0]), axis=-1) > 0.1 for o in others for dx in (0, 0.1)
        ]
        clear = on_top & np.all(far, axis=0)
        red = out["rgb"][..., 0].astype(float)
        return shade.sum(), clear.sum(), red[shade].mean(), red[clear].mean()

    n_shade, n_clear, shaded, lit = regions(_render(render_fn, scene, data))
    assert n_shade >= 4 and n_clear >= 30, (n_shade, n_clear)
    assert lit - shaded > 30
    flat = camera.make_scene(model, camera="ego", image_size=(64, 112), shadows=False)
    _, _, shaded_off, lit_off = regions(_render(jax.jit(lambda *a: camera.render_all(flat, *a)), flat, data))
    assert abs(lit_off - shaded_off) < 10


def test_appearance_levels(model, scene):
    key = jax.random.key(0)
    a0 = camera.sample_appearance(scene, key, 0)
    np.testing.assert_array_equal(a0.geom_rgb, scene.geom_rgb)
    a1 = jax.jit(lambda k: camera.sample_appearance(scene, k, 1))(key)
    assert not np.allclose(a1.geom_rgb, scene.geom_rgb)
    np.testing.assert_array_equal(a1.light_dir, scene.light_dir)
    a2 = jax.jit(lambda k: camera.sample_appearance(scene, k, 2))(key)
    assert not np.allclose(a2.light_dir, scene.light_dir)
    np.testing.assert_allclose(np.linalg.norm(a2.light_dir, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a2.cam_rotation @ a2.cam_rotation.T, np.eye(3), atol=1e-5)
    with pytest.raises(ValueError, match="level"):
        camera.sample_appearance(scene, key, 3)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="camera"):
        camera.make_scene(model, camera="nope")
    with pytest.raises(ValueError, match="row_chunks"):
        camera.make_scene(model, image_size=(64, 112), row_chunks=5)
    mesh_xml = """<mujoco><asset><mesh name="t" vertex="0 0 0 1 0 0 0 1 0 0 0 1"/></asset>
      <worldbody><camera name="ego"/><geom type="mesh" mesh="t"/></worldbody></mujoco>"""
    with pytest.raises(ValueError, match="unsupported"):
        camera.make_scene(mujoco.MjModel.from_xml_string(mesh_xml))


def test_batched_render_and_contact_sheet(model, scene, tmp_path: Path):
    """vmap over envs with per-env appearance: shapes/dtypes, distinct frames, a PNG contact sheet."""
    from envs.g1.render.contact_sheet import contact_sheet, save_png

    data = _forward(model)
    batch = 3

    @jax.jit
    def frames(keys):
        looks = jax.vmap(lambda k: camera.sample_appearance(scene, k, 2))(keys)
        return jax.vmap(lambda look: camera.render_data(scene, data, look))(looks)

    out = frames(jax.random.split(jax.random.key(1), batch))
    assert out["rgb"].shape == (batch, 64, 112, 3) and out["rgb"].dtype == jnp.uint8
    assert out["depth"].shape == (batch, 64, 112) and out["depth"].dtype == jnp.float32
    assert out["segmentation"].shape == (batch, 64, 112) and out["segmentation"].dtype == jnp.int32
    assert np.all(np.isfinite(np.asarray(out["depth"])))
    images = np.asarray(out["rgb"])
    assert not np.array_equal(images[0], images[1])
    sheet = contact_sheet(images, columns=2)
    path = save_png(sheet, tmp_path / "sheet.png")
    assert sheet.shape == (2 * 64 + 3 * 2, 2 * 112 + 3 * 2, 3)
    np.testing.assert_array_equal(sheet[2 : 2 + 64, 2 + 112 + 2 : 2 + 2 * 112 + 2], images[1])
    assert path.stat().st_size > 1000


@pytest.fixture(scope="module")
def g1_env():
    import envs

    return envs.make("G1BendPick-v0", image_size=(96, 160))


def test_g1_right_hand_in_frame_when_reaching_down(g1_env):
    """On the real G1 scene (CPU kinematics): arm out to the side -> no hand; bend + reach -> hand, right half."""
    m, scene = g1_env.mj_model, g1_env.camera_scene
    hand = [i for i in range(m.ngeom) if m.geom(i).name.startswith("right_hand") and m.geom(i).name.endswith("_vis")]
    box = g1_env.box_geom_id
    render = jax.jit(lambda *a: camera.render_all(scene, *a))

    def pose(waist_pitch, shoulder_pitch, shoulder_roll):
        data = mujoco.MjData(m)
        data.qpos[:] = g1_env.init_qpos
        for name, value in [
            ("waist_pitch_joint", waist_pitch),
            ("right_shoulder_pitch_joint", shoulder_pitch),
            ("right_shoulder_roll_joint", shoulder_roll),
        ]:
            data.qpos[m.jnt_qposadr[m.joint(name).id]] = value
        mujoco.mj_forward(m, data)
        out = _render(render, scene, data)
        return data, out["segmentation"]

    _, aside = pose(0.0, 0.0, -1.5)
    data, reach = pose(0.5, -0.8, 0.0)
    assert np.isin(aside, hand).sum() == 0
    mask = np.isin(reach, hand)
    assert mask.sum() > 40
    assert _centroid(mask)[1] > scene.width / 2  # the right hand is on the image's right
    assert (reach == box).sum() > 8  # the target box is in view (partly behind the hand)
    palm = camera.project(
        jnp.asarray(data.site_xpos[g1_env.palm_site_id]),
        jnp.asarray(data.cam_xpos[scene.camera_id]),
        jnp.asarray(data.cam_xmat[scene.camera_id]).reshape(3, 3),
        scene,
    )
    assert np.linalg.norm(_centroid(mask) - np.asarray(palm)) < 15.0


def test_packed_min_with_index():
    t = jnp.array([[3.0, 1.5, jnp.inf, 1.5000001], [jnp.inf, jnp.inf, jnp.inf, jnp.inf], [0.2, 9.0, 4.0, 0.1]])
    value, index = camera._min_with_index(t)
    np.testing.assert_array_equal(index, [1, 0, 3])
    np.testing.assert_allclose(np.asarray(value)[[0, 2]], [1.5, 0.1], rtol=1e-5)
    assert np.isinf(value[1])


def test_env_render_uses_episode_scene(g1_env):
    """``G1BendPick._render_obs`` draws the episode's colours: recolouring the box recolours its pixels."""
    from mujoco import mjx

    m = g1_env.mj_model
    data = mujoco.MjData(m)
    data.qpos[:] = g1_env.init_qpos
    mujoco.mj_forward(m, data)
    dx = mjx.put_data(m, data, impl="jax")
    key = jax.random.key(0)
    scene = g1_env._sample_scene(key)
    green = {**scene, "box_rgba": jnp.array([0.0, 1.0, 0.0, 1.0])}
    render = jax.jit(g1_env._render_obs)
    img, img_green = np.asarray(render(dx, key, scene)), np.asarray(render(dx, key, green))
    assert img.shape == (96, 160, 3) and img.dtype == np.uint8
    seg = np.asarray(camera.render_data(g1_env.camera_scene, data)["segmentation"])
    box = seg == g1_env.box_geom_id
    assert box.sum() > 20
    np.testing.assert_array_equal(img[~box], img_green[~box])  # nothing else changed
    assert img_green[box][:, 1].mean() > 2 * img_green[box][:, 0].mean() + 10  # the box is green now
    assert np.asarray(render(dx, key, None)).shape == img.shape
