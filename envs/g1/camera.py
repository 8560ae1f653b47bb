"""Batched, on-device ego-camera rendering for MJX scenes made of primitive geoms.

Technique: analytic ray casting in pure JAX. One primary ray per pixel is intersected with every
visible geom (grouped by type, so each pair runs only its own type's closed-form test: slab test
for boxes, quadratics for spheres/ellipsoids/capsules/cylinders, one division for planes), and a
min-reduction over the geom axis gives depth and geom id. The normal is computed once per pixel, for
the winning geom only, and shading is Lambert diffuse from the model's directional lights plus
MuJoCo's headlight and ambient term, with an optional hard shadow for the first light (a second,
any-hit pass from the hit point). A checker pattern on planes gives the floor texture.

Why this technique (measured by ``benchmarks/render_throughput.py``, numbers in
``benchmarks/RESULTS.md``): on one 96x160 frame of the G1 scene (55 visible geoms, 52 of them
boxes), ``mjx.ray`` vmapped over pixels took 3-10x longer than this renderer with full shading and
a shadow ray in repeated runs on the shared 2-core CPU (e.g. 60 vs 21 ms), and it returns only depth
and geom id (no normals, so shading would need another pass). ``mjx.render`` (batched ray casting) exists
only for the Warp backend, which is not available here, and rasterising through OpenGL cannot run
inside ``jit``. The kernels here
transform the shared camera origin into each geom frame once per frame, compute normals only for
the winning geom, read only ``geom_xpos``/``geom_xmat``/``cam_xpos``/``cam_xmat`` and need no
MuJoCo at render time (only ``make_scene`` does).

What made it fast (measured under ``vmap`` on CPU, 8 envs): keeping every [pixels x geoms] quantity
as separate x/y/z arrays (no [..., 3] axes, no einsum) and packing the geom index into the low
mantissa bits of the distance so that one plain ``min`` gives both (``_min_with_index``). XLA then
fuses frame transform, intersection test and reduction into one loop per geom type and never
materialises the [batch x pixels x geoms] tile: 15x faster than the first einsum/argmin version.
Shadow rays of a directional light share one direction, rotated into each geom frame once.

Memory: nothing of size pixels x geoms is stored; row bands (``row_chunks``, default
``auto_row_chunks``: ~2K pixels per band, traced one after another with ``lax.map``) bound the
per-pixel shading temporaries to ``batch x band x ~40`` floats (4096 envs: ~1.3 GB per band) plus
the outputs (4096 x 180 x 320: 0.7 GB rgb, 0.9 GB each depth and segmentation).

Frames: MuJoCo cameras look along their local -z with +y up and +x right; ``cam_xmat`` maps camera
to world. ``fovy`` is the vertical field of view in degrees (Ψ0's 110° horizontal at 16:9 is 77.6°
vertical). Depth is z-depth (distance along the optical axis, metres), ``far`` where nothing is hit;
segmentation is the MuJoCo geom id (int32, -1 for background).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs.g1.render import primitives as prim

DEFAULT_LIGHT_DIR = (-0.3, -0.2, -1.0)  # direction the light travels, world frame
SHADOW_FACTOR = 0.35  # fraction of the direct light left inside a shadow


@struct.dataclass
class Scene:
    """Static description of what the camera sees (built once from an ``mjModel``).

    Array fields are pytree leaves (so a ``Scene`` can be closed over or passed to ``jit``); sizes,
    camera and switches are static. ``ngeom`` is the model's geom count; visible geoms are listed in
    ``groups`` by MuJoCo type code.
    """

    groups: dict[int, jax.Array]  # type code -> int32 [n_t] visible geom ids of that type
    geom_type: jax.Array  # int32 [ngeom]
    geom_size: jax.Array  # float32 [ngeom, 3]
    geom_rgb: jax.Array  # float32 [ngeom, 3] default colours in [0, 1]
    geom_bodyid: jax.Array  # int32 [ngeom]
    light_dir: jax.Array  # float32 [L, 3] unit directions the lights travel (world)
    light_rgb: jax.Array  # float32 [L, 3] diffuse intensity
    ambient: jax.Array  # float32 [3] ambient (lights + headlight)
    headlight: jax.Array  # float32 [3] diffuse intensity of a light at the camera
    sky: jax.Array  # float32 [2, 3] background colour at the horizon and straight up
    camera_id: int = struct.field(pytree_node=False, default=0)
    height: int = struct.field(pytree_node=False, default=96)
    width: int = struct.field(pytree_node=False, default=160)
    fovy: float = struct.field(pytree_node=False, default=77.6)
    shadows: bool = struct.field(pytree_node=False, default=True)
    row_chunks: int = struct.field(pytree_node=False, default=1)
    far: float = struct.field(pytree_node=False, default=20.0)
    checker: float = struct.field(pytree_node=False, default=0.25)

    @property
    def ngeom(self) -> int:
        return self.geom_type.shape[0]


def _geom_colour(model, i: int) -> np.ndarray:
    """MuJoCo's rule: a material's colour wins unless the geom rgba was changed from the default."""
    rgba = np.asarray(model.geom_rgba[i], np.float32)
    mat = int(model.geom_matid[i])
    if mat >= 0 and np.allclose(rgba, [0.5, 0.5, 0.5, 1.0]):
        rgba = np.asarray(model.mat_rgba[mat], np.float32)
    return rgba


def auto_row_chunks(height: int, width: int, band_pixels: int = 2048) -> int:
    """The fewest row bands (a divisor of ``height``) with at most ``band_pixels`` pixels each.

    Measured on CPU (benchmarks/render_throughput.py): bands of ~2K pixels keep the per-band
    [pixels x geoms] work in cache and bound device memory at large batches.
    """
    for bands in range(1, height + 1):
        if height % bands == 0 and height * width // bands <= band_pixels:
            return bands
    return height


def make_scene(
    model,
    *,
    camera: str | int = "ego",
    image_size: tuple[int, int] = (96, 160),
    geom_groups: tuple[int, ...] = (0, 1, 2),
    shadows: bool = True,
    row_chunks: int | None = None,
    far: float = 20.0,
    checker: float = 0.25,
) -> Scene:
    """Builds a ``Scene`` from a ``mujoco.MjModel`` (host side, once).

    A geom is visible when its group is in ``geom_groups`` and its alpha (material alpha if it has a
    material) is > 0, the same rule as ``mujoco.mj_ray`` with that group mask. ``row_chunks`` (a
    divisor of H) splits the image into row bands traced one after another with ``lax.map``; ``None``
    picks ``auto_row_chunks(H, W)``. Raises ``ValueError`` for a visible geom of a type other than
    plane/sphere/capsule/ellipsoid/cylinder/box, an unknown
    camera, or a bad image size / ``row_chunks``.
    """
    import mujoco  # host-only dependency: rendering itself needs no MuJoCo

    height, width = (int(s) for s in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    if row_chunks is None:
        row_chunks = auto_row_chunks(height, width)
    if row_chunks <= 0 or height % row_chunks:
        raise ValueError(f"row_chunks={row_chunks} must be a positive divisor of the image height {height}")
    cam = camera if isinstance(camera, int) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if not 0 <= cam < model.ncam:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        raise ValueError(f"camera {camera!r} not in the model; cameras: {names}")

    rgba = np.stack([_geom_colour(model, i) for i in range(model.ngeom)]) if model.ngeom else np.zeros((0, 4))
    visible = np.isin(model.geom_group, geom_groups) & (rgba[:, 3] > 0)
    bad = sorted({int(t) for t in model.geom_type[visible]} - set(prim.SUPPORTED))
    if bad:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, i) for i in np.flatnonzero(visible)]
        raise ValueError(
            f"visible geoms of unsupported types {bad} (supported: {sorted(prim.SUPPORTED.values())}); "
            f"move them to a hidden group or give them alpha 0. Visible geoms: {names}"
        )
    groups = {
        t: jnp.asarray(np.flatnonzero(visible & (model.geom_type == t)), jnp.int32)
        for t in prim.SUPPORTED
        if np.any(visible & (model.geom_type == t))
    }

    # Lights: the model's directional lights (fixed direction), else one default key light.
    dirs, diffuse, ambient = [], [], np.asarray(model.vis.headlight.ambient, np.float32).copy()
    for i in range(model.nlight):
        directional = bool(model.light_type[i] == mujoco.mjtLightType.mjLIGHT_DIRECTIONAL)
        if directional and model.light_active[i]:
            dirs.append(model.light_dir[i])
            diffuse.append(model.light_diffuse[i])
            ambient += model.light_ambient[i]
    if not dirs:
        dirs, diffuse = [DEFAULT_LIGHT_DIR], [(0.7, 0.7, 0.7)]
    dirs = np.asarray(dirs, np.float32)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)

    return Scene(
        groups=groups,
        geom_type=jnp.asarray(model.geom_type, jnp.int32),
        geom_size=jnp.asarray(model.geom_size, jnp.float32),
        geom_rgb=jnp.asarray(rgba[:, :3], jnp.float32),
        geom_bodyid=jnp.asarray(model.geom_bodyid, jnp.int32),
        light_dir=jnp.asarray(dirs),
        light_rgb=jnp.asarray(np.asarray(diffuse, np.float32)),
        ambient=jnp.asarray(np.clip(ambient, 0.0, 1.0)),
        headlight=jnp.asarray(np.asarray(model.vis.headlight.diffuse, np.float32)),
        sky=jnp.asarray([[0.72, 0.76, 0.80], [0.42, 0.55, 0.72]], jnp.float32),
        camera_id=int(cam),
        height=height,
        width=width,
        fovy=float(model.cam_fovy[cam]),
        shadows=bool(shadows),
        row_chunks=int(row_chunks),
        far=float(far),
        checker=float(checker),
    )


def camera_rays(height: int, width: int, fovy: float) -> jax.Array:
    """Unit ray directions through pixel centres, camera frame: float32 [H, W, 3] (row 0 = top)."""
    half_h = math.tan(math.radians(fovy) / 2.0)
    half_w = half_h * width / height
    x = (2.0 * (jnp.arange(width) + 0.5) / width - 1.0) * half_w
    y = (1.0 - 2.0 * (jnp.arange(height) + 0.5) / height) * half_h
    d = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None], -jnp.ones((height, width))), axis=-1)
    return d / jnp.linalg.norm(d, axis=-1, keepdims=True)


def project(points: jax.Array, cam_pos: jax.Array, cam_mat: jax.Array, scene: Scene) -> jax.Array:
    """Pinhole projection of world points to continuous pixel coords (row, col): float32 [..., 2].

    ``points`` float32 [..., 3]; pixel (r, c) has its centre at (r + 0.5, c + 0.5).
    """
    p = (points - cam_pos) @ cam_mat  # camera frame
    f = (scene.height / 2.0) / math.tan(math.radians(scene.fovy) / 2.0)
    col = scene.width / 2.0 + f * p[..., 0] / -p[..., 2]
    row = scene.height / 2.0 - f * p[..., 1] / -p[..., 2]
    return jnp.stack([row, col], axis=-1)


def _to_local(v, rot: jax.Array):
    """``rot^T v`` as a 3-tuple of components; ``v`` a 3-tuple of arrays [...], rot float32 [..., 3, 3].

    Written as multiply-adds on separate components on purpose: XLA then fuses the transform, the
    intersection test and the min-reduction into one loop, so [pixels x geoms] temporaries are never
    materialised (measured: an einsum or [..., 3]-shaped arrays cost 3-4x under vmap on CPU).
    """
    return tuple(v[0] * rot[..., 0, j] + v[1] * rot[..., 1, j] + v[2] * rot[..., 2, j] for j in range(3))


def _min_with_index(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(min over the last axis, its index) of non-negative float32 [..., n] in ONE min-reduction.

    The index is packed into the low mantissa bits of the (monotone) int32 view of ``t``, so ``t``
    has a single consumer and XLA fuses its computation into the reduction. Costs a relative depth
    error below 2**-(23 - bits) (bits = ceil(log2 n); 1e-5 for 50 geoms, ~20 um at 2 m).
    """
    n = t.shape[-1]
    mask = (1 << max(1, (n - 1).bit_length())) - 1
    key = (jax.lax.bitcast_convert_type(t, jnp.int32) & ~mask) | jnp.arange(n, dtype=jnp.int32)
    best = jnp.min(key, axis=-1)
    return jax.lax.bitcast_convert_type(best & ~mask, jnp.float32), best & mask


def _nearest(scene: Scene, xpos, xmat, origins, dirs, with_id: bool = True):
    """Nearest visible hit along rays. origins, dirs float32 [3] (shared) or [P, 3] -> (t [P], geom id [P]).

    ``t`` is inf and the id -1 where nothing is hit; with ``with_id=False`` the id is None (any-hit
    queries such as shadow rays).
    """
    best_t, best_id = [], []
    for gtype, ids in scene.groups.items():
        pos, rot, size = xpos[ids], xmat[ids], scene.geom_size[ids]
        if origins.ndim == 1:  # shared origin: transform once per geom -> components [1, n]
            o = _to_local(tuple(origins[i] - pos[None, :, i] for i in range(3)), rot[None])
        else:  # components [P, n]
            o = _to_local(tuple(origins[:, None, i] - pos[None, :, i] for i in range(3)), rot[None])
        if dirs.ndim == 1:  # shared direction (shadow rays of a directional light) -> [1, n]
            d = _to_local(tuple(jnp.broadcast_to(dirs[i], (1, 1)) for i in range(3)), rot[None])
        else:  # components [P, n]
            d = _to_local(tuple(dirs[:, None, i] for i in range(3)), rot[None])
        t = prim.RAY_FUNCTIONS[gtype](o, d, tuple(size[None, :, i] for i in range(3)))  # [P, n]
        if with_id:
            t, k = _min_with_index(t)
            best_id.append(ids[k])
        else:
            t = jnp.min(t, axis=-1)
        best_t.append(t)
    n = max(origins.shape[0] if origins.ndim == 2 else 1, dirs.shape[0] if dirs.ndim == 2 else 1)
    if not best_t:
        return jnp.full((n,), jnp.inf), (jnp.full((n,), -1, jnp.int32) if with_id else None)
    t = jnp.stack(best_t, -1)
    if not with_id:
        return jnp.min(t, axis=-1), None
    k = jnp.argmin(t, axis=-1)
    t = jnp.take_along_axis(t, k[:, None], axis=-1)[:, 0]
    gid = jnp.take_along_axis(jnp.stack(best_id, -1), k[:, None], axis=-1)[:, 0]
    return t, jnp.where(jnp.isfinite(t), gid, -1)


def _shade_band(scene: Scene, xpos, xmat, cam_pos, dirs, geom_rgb, light_dir, light_rgb):
    """Traces and shades one band of rays. dirs float32 [P, 3] world -> (rgb u8 [P, 3], t [P], gid [P])."""
    t, gid = _nearest(scene, xpos, xmat, cam_pos, dirs)
    hit = gid >= 0
    g = jnp.maximum(gid, 0)
    t_hit = jnp.where(hit, t, 0.0)
    point = cam_pos + t_hit[:, None] * dirs
    rot = xmat[g]
    local = jnp.einsum("pk,pkj->pj", point - xpos[g], rot)
    gtype = scene.geom_type[g]
    normal = jnp.einsum("pij,pj->pi", rot, prim.local_normal(gtype, local, scene.geom_size[g]))
    normal = jnp.where(jnp.sum(normal * dirs, -1, keepdims=True) > 0, -normal, normal)  # face the camera

    base = geom_rgb[g]
    if scene.checker > 0:
        cell = jnp.floor(local[:, :2] / scene.checker).astype(jnp.int32).sum(-1) % 2
        contrast = 0.15 * jnp.clip((4.0 - t_hit) / 2.5, 0.0, 1.0)  # fade out far away (less aliasing)
        shade = 1.0 - contrast + 2.0 * contrast * cell
        base = jnp.where((gtype == prim.PLANE)[:, None], base * shade[:, None], base)

    lambert = jnp.maximum(-normal @ light_dir.T, 0.0)  # [P, L]
    if scene.shadows:
        # One shared direction for all shadow rays: rotated into each geom frame once, not per pixel.
        t_shadow, _ = _nearest(scene, xpos, xmat, point + 1e-3 * normal, -light_dir[0], with_id=False)
        lit = jnp.where(jnp.isfinite(t_shadow), SHADOW_FACTOR, 1.0)
        lambert = lambert.at[:, 0].multiply(lit)
    facing = -jnp.sum(normal * dirs, -1, keepdims=True)  # >= 0 after the flip above
    light = scene.ambient + lambert @ light_rgb + scene.headlight * facing
    colour = base * light
    up = jnp.clip(dirs[:, 2:3], 0.0, 1.0)
    sky = scene.sky[0] * (1.0 - up) + scene.sky[1] * up
    rgb = jnp.round(jnp.clip(jnp.where(hit[:, None], colour, sky), 0.0, 1.0) * 255.0).astype(jnp.uint8)
    return rgb, t, gid


def render_all(
    scene: Scene,
    geom_xpos: jax.Array,
    geom_xmat: jax.Array,
    cam_pos: jax.Array,
    cam_mat: jax.Array,
    *,
    geom_rgb: jax.Array | None = None,
    light_dir: jax.Array | None = None,
    light_rgb: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Renders one view. Pure; ``jax.vmap`` over a leading env axis for batches.

    Args:
      scene: static scene description from ``make_scene``.
      geom_xpos: float32 [ngeom, 3] geom positions (``mjx.Data.geom_xpos``).
      geom_xmat: float32 [ngeom, 3, 3] (or [ngeom, 9]) geom orientations (``mjx.Data.geom_xmat``).
      cam_pos: float32 [3] camera position; cam_mat: float32 [3, 3] (or [9]) camera-to-world rotation.
      geom_rgb: optional float32 [ngeom, 3] per-geom colours in [0, 1] (default: the model's).
      light_dir: optional float32 [L, 3] unit light directions (default: the model's).
      light_rgb: optional float32 [L, 3] light diffuse intensities (default: the model's).
    Returns:
      {"rgb": uint8 [H, W, 3], "depth": float32 [H, W] z-depth in metres (``scene.far`` on a miss),
       "segmentation": int32 [H, W] geom id (-1 background)}.
    """
    if geom_xpos.shape != (scene.ngeom, 3):
        raise ValueError(f"geom_xpos must be [{scene.ngeom}, 3], got {geom_xpos.shape}")
    geom_xpos = jnp.asarray(geom_xpos, jnp.float32)
    xmat = jnp.reshape(jnp.asarray(geom_xmat, jnp.float32), (scene.ngeom, 3, 3))
    cam_pos = jnp.asarray(cam_pos, jnp.float32)
    cam_mat = jnp.reshape(jnp.asarray(cam_mat, jnp.float32), (3, 3))
    geom_rgb = scene.geom_rgb if geom_rgb is None else geom_rgb
    light_dir = scene.light_dir if light_dir is None else light_dir
    light_rgb = scene.light_rgb if light_rgb is None else light_rgb
    h, w, bands = scene.height, scene.width, scene.row_chunks

    rays_cam = camera_rays(h, w, scene.fovy)  # [H, W, 3]
    rays = (rays_cam.reshape(-1, 3) @ cam_mat.T).reshape(bands, -1, 3)
    shade = lambda d: _shade_band(scene, geom_xpos, xmat, cam_pos, d, geom_rgb, light_dir, light_rgb)
    rgb, t, gid = shade(rays[0]) if bands == 1 else jax.lax.map(shade, rays)
    rgb, t, gid = rgb.reshape(h, w, 3), t.reshape(h, w), gid.reshape(h, w)
    depth = jnp.where(gid >= 0, t * -rays_cam[..., 2], scene.far)
    return {
        "rgb": rgb,
        "depth": depth.astype(jnp.float32),
        "segmentation": gid.astype(jnp.int32),
    }


def body_segmentation(scene: Scene, segmentation: jax.Array) -> jax.Array:
    """Geom-id segmentation int32 [..., H, W] -> MuJoCo body ids int32 [..., H, W] (-1 background)."""
    return jnp.where(segmentation >= 0, scene.geom_bodyid[jnp.maximum(segmentation, 0)], -1)


@struct.dataclass
class Appearance:
    """Per-episode look of one env (randomised at reset, kept in the env state)."""

    geom_rgb: jax.Array  # float32 [ngeom, 3] colours in [0, 1]
    light_dir: jax.Array  # float32 [L, 3] unit directions the lights travel
    light_rgb: jax.Array  # float32 [L, 3] diffuse intensities
    cam_offset: jax.Array  # float32 [3] camera position offset, camera frame (metres)
    cam_rotation: jax.Array  # float32 [3, 3] camera rotation jitter, camera frame


def default_appearance(scene: Scene) -> Appearance:
    """The model's own colours and lights and the nominal camera pose."""
    return Appearance(
        geom_rgb=scene.geom_rgb,
        light_dir=scene.light_dir,
        light_rgb=scene.light_rgb,
        cam_offset=jnp.zeros(3, jnp.float32),
        cam_rotation=jnp.eye(3, dtype=jnp.float32),
    )


def rotvec_to_matrix(rotvec: jax.Array) -> jax.Array:
    """Rotation matrix float32 [3, 3] of a rotation vector float32 [3] (axis * angle, rad; Rodrigues)."""
    angle = jnp.sqrt(jnp.sum(rotvec * rotvec) + 1e-24)
    axis = rotvec / angle
    skew = jnp.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return jnp.eye(3) + jnp.sin(angle) * skew + (1.0 - jnp.cos(angle)) * skew @ skew


def _small_rotation(key: jax.Array, max_angle: float) -> jax.Array:
    """A rotation about a uniformly random axis by an angle uniform in [-max_angle, max_angle] (rad)."""
    k_axis, k_angle = jax.random.split(key)
    axis = jax.random.normal(k_axis, (3,))
    axis = axis / jnp.linalg.norm(axis)
    return rotvec_to_matrix(axis * jax.random.uniform(k_angle, (), minval=-max_angle, maxval=max_angle))


def sample_appearance(
    scene: Scene,
    key: jax.Array,
    level: int,
    *,
    colour_jitter: float = 0.3,
    light_angle_deg: float = 25.0,
    light_scale: tuple[float, float] = (0.6, 1.3),
    cam_offset_m: float = 0.01,
    cam_angle_deg: float = 2.0,
) -> Appearance:
    """Randomised appearance. Pure and jit-able; ``level`` is a static int.

    Level 0: the defaults. Level >= 1: every geom colour scaled per channel by a factor in
    [1 - colour_jitter, 1 + colour_jitter] (clipped to [0, 1]). Level 2 also rotates each light by up
    to ``light_angle_deg`` (kept pointing downwards), scales its intensity within ``light_scale``, and
    jitters the camera by up to ``cam_offset_m`` per axis and ``cam_angle_deg``.
    """
    if level not in (0, 1, 2):
        raise ValueError(f"randomisation level must be 0, 1 or 2, got {level}")
    out = default_appearance(scene)
    if level == 0:
        return out
    k_col, k_light, k_int, k_off, k_rot = jax.random.split(key, 5)
    factor = jax.random.uniform(k_col, out.geom_rgb.shape, minval=1.0 - colour_jitter, maxval=1.0 + colour_jitter)
    out = out.replace(geom_rgb=jnp.clip(out.geom_rgb * factor, 0.0, 1.0))
    if level == 1:
        return out
    n_lights = scene.light_dir.shape[0]
    rots = jax.vmap(lambda k: _small_rotation(k, math.radians(light_angle_deg)))(jax.random.split(k_light, n_lights))
    light_dir = jnp.einsum("lij,lj->li", rots, scene.light_dir)
    light_dir = light_dir.at[:, 2].set(jnp.minimum(light_dir[:, 2], -0.2))
    light_dir = light_dir / jnp.linalg.norm(light_dir, axis=-1, keepdims=True)
    scale = jax.random.uniform(k_int, (n_lights, 1), minval=light_scale[0], maxval=light_scale[1])
    return out.replace(
        light_dir=light_dir,
        light_rgb=scene.light_rgb * scale,
        cam_offset=jax.random.uniform(k_off, (3,), minval=-cam_offset_m, maxval=cam_offset_m),
        cam_rotation=_small_rotation(k_rot, math.radians(cam_angle_deg)),
    )


def camera_pose(scene: Scene, data: Any, offset: jax.Array | None = None, rotation: jax.Array | None = None):
    """The scene camera's (position float32 [3], rotation float32 [3, 3]) from ``mjx.Data``.

    ``offset`` float32 [3] (camera frame, metres) and ``rotation`` float32 [3, 3] (applied in the
    camera frame) jitter the pose, e.g. for level-2 randomisation.
    """
    pos = jnp.asarray(data.cam_xpos[scene.camera_id], jnp.float32)
    mat = jnp.reshape(jnp.asarray(data.cam_xmat[scene.camera_id], jnp.float32), (3, 3))
    if offset is not None:
        pos = pos + mat @ offset
    if rotation is not None:
        mat = mat @ rotation
    return pos, mat


def render_data(scene: Scene, data: Any, appearance: Appearance | None = None) -> dict[str, jax.Array]:
    """``render_all`` from the scene camera of an ``mjx.Data`` (or anything with the same fields).

    Returns {"rgb": uint8 [H, W, 3], "depth": float32 [H, W], "segmentation": int32 [H, W]}.
    """
    if appearance is None:
        pos, mat = camera_pose(scene, data)
        return render_all(scene, data.geom_xpos, data.geom_xmat, pos, mat)
    pos, mat = camera_pose(scene, data, appearance.cam_offset, appearance.cam_rotation)
    return render_all(
        scene,
        data.geom_xpos,
        data.geom_xmat,
        pos,
        mat,
        geom_rgb=appearance.geom_rgb,
        light_dir=appearance.light_dir,
        light_rgb=appearance.light_rgb,
    )


def render_rgb(scene: Scene, data: Any, appearance: Appearance | None = None) -> jax.Array:
    """The ego RGB image only: uint8 [H, W, 3] (what ``env.render`` returns)."""
    return render_data(scene, data, appearance)["rgb"]
