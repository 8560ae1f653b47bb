"""Analytic ray–primitive intersection and surface normals, in each geom's local frame.

Every function here is elementwise over leading axes and broadcasts ``origin`` / ``direction``
(float32 [..., 3], the ray in the geom frame) against ``size`` (float32 [..., 3], MuJoCo's
``geom_size``). A distance function returns float32 [...]: the smallest ``t > EPS`` at which the
ray *enters* the solid (``origin + t * direction`` on the surface), or ``+inf`` for a miss. Back
faces are culled: a ray that starts inside a geom does not see it, so a camera placed inside its
own head geom looks out through it. Directions need not be unit
length; distances are then in units of ``|direction|``. No function produces NaN for any finite
input, so a min-reduction over geoms is safe.

Conventions follow MuJoCo: planes are z = 0 seen only from +z, with half-extents ``size[:2]``
(0 = infinite); spheres ``size[0]`` = radius; capsules and cylinders are z-aligned with radius
``size[0]`` and half-length ``size[1]``; ellipsoids and boxes have semi-axes / half-sizes ``size``.
"""

from __future__ import annotations

import jax.numpy as jnp

# MuJoCo's mjtGeom codes for the supported types.
PLANE, SPHERE, CAPSULE, ELLIPSOID, CYLINDER, BOX = 0, 2, 3, 4, 5, 6
SUPPORTED = {
    PLANE: "plane",
    SPHERE: "sphere",
    CAPSULE: "capsule",
    ELLIPSOID: "ellipsoid",
    CYLINDER: "cylinder",
    BOX: "box",
}

EPS = 1e-6  # smallest accepted hit distance (metres along a unit ray)
_TINY = 1e-12


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def _entering(t):
    """``t`` where it is a hit in front of the ray origin (> EPS), else inf."""
    return jnp.where(t > EPS, t, jnp.inf)


def _quadratic_roots(a, b, c):
    """Roots ``(t0 <= t1)`` of ``a t^2 + 2 b t + c = 0`` (a >= 0); both inf when there are none."""
    det = b * b - a * c
    ok = (det >= 0) & (a > _TINY)
    sq = jnp.sqrt(jnp.maximum(det, 0.0))
    safe_a = jnp.where(ok, a, 1.0)
    t0 = jnp.where(ok, (-b - sq) / safe_a, jnp.inf)
    t1 = jnp.where(ok, (-b + sq) / safe_a, jnp.inf)
    return t0, t1


def _safe_recip(x):
    return 1.0 / jnp.where(jnp.abs(x) < _TINY, jnp.where(x < 0, -_TINY, _TINY), x)


def ray_plane(origin, direction, size):
    """Distance to a plane z = 0 (front face only), within ``|x| <= size[0]``, ``|y| <= size[1]``."""
    dz = direction[..., 2]
    front = dz < -_TINY
    t = jnp.where(front, -origin[..., 2] * _safe_recip(dz), jnp.inf)
    t_hit = jnp.where(jnp.isfinite(t), t, 0.0)
    xy = origin[..., :2] + t_hit[..., None] * direction[..., :2]
    half = jnp.where(size[..., :2] > 0, size[..., :2], jnp.inf)  # 0 = infinite
    inside = (jnp.abs(xy[..., 0]) <= half[..., 0]) & (jnp.abs(xy[..., 1]) <= half[..., 1])
    return jnp.where(front & inside & (t > EPS), t, jnp.inf)


def ray_sphere(origin, direction, size):
    """Distance to a sphere of radius ``size[0]`` centred at the origin."""
    r = size[..., 0]
    t0, _ = _quadratic_roots(_dot(direction, direction), _dot(origin, direction), _dot(origin, origin) - r * r)
    return _entering(t0)


def ray_ellipsoid(origin, direction, size):
    """Distance to an ellipsoid with semi-axes ``size``."""
    o, d = origin / size, direction / size
    t0, _ = _quadratic_roots(_dot(d, d), _dot(o, d), _dot(o, o) - 1.0)
    return _entering(t0)


def _cylinder_side(origin, direction, radius, half):
    """Entering distance to the side of a z-aligned cylinder, accepting only hits with |z| <= half."""
    o2, d2 = origin[..., :2], direction[..., :2]
    t0, _ = _quadratic_roots(_dot(d2, d2), _dot(o2, d2), _dot(o2, o2) - radius * radius)
    z = origin[..., 2] + jnp.where(jnp.isfinite(t0), t0, 0.0) * direction[..., 2]
    return _entering(jnp.where(jnp.abs(z) <= half, t0, jnp.inf))


def ray_capsule(origin, direction, size):
    """Distance to a z-aligned capsule (radius ``size[0]``, half-length ``size[1]``)."""
    r, h = size[..., 0], size[..., 1]
    cap = jnp.stack([jnp.zeros_like(h), jnp.zeros_like(h), h], axis=-1)
    sphere_size = size[..., :1]
    t_side = _cylinder_side(origin, direction, r, h)
    t_top = ray_sphere(origin - cap, direction, sphere_size)
    t_bottom = ray_sphere(origin + cap, direction, sphere_size)
    return jnp.minimum(t_side, jnp.minimum(t_top, t_bottom))


def ray_cylinder(origin, direction, size):
    """Distance to a z-aligned closed cylinder (radius ``size[0]``, half-length ``size[1]``)."""
    r, h = size[..., 0], size[..., 1]
    t_side = _cylinder_side(origin, direction, r, h)
    inv_dz = _safe_recip(direction[..., 2])

    # Only the cap facing the ray can be entered: the top one (z = h) when the ray goes down.
    z = jnp.where(direction[..., 2] < 0, h, -h)
    t = (z - origin[..., 2]) * inv_dz
    xy = origin[..., :2] + jnp.where(jnp.abs(t) < 1e30, t, 0.0)[..., None] * direction[..., :2]
    t_cap = jnp.where(_dot(xy, xy) <= r * r, _entering(t), jnp.inf)
    return jnp.minimum(t_side, t_cap)


def ray_box(origin, direction, size):
    """Distance to an axis-aligned box with half-sizes ``size`` (slab method)."""
    inv = _safe_recip(direction)
    t1 = (-size - origin) * inv
    t2 = (size - origin) * inv
    t_near = jnp.max(jnp.minimum(t1, t2), axis=-1)
    t_far = jnp.min(jnp.maximum(t1, t2), axis=-1)
    return jnp.where(t_near <= t_far, _entering(t_near), jnp.inf)


RAY_FUNCTIONS = {
    PLANE: ray_plane,
    SPHERE: ray_sphere,
    CAPSULE: ray_capsule,
    ELLIPSOID: ray_ellipsoid,
    CYLINDER: ray_cylinder,
    BOX: ray_box,
}


def _normalize(v):
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), _TINY)


def local_normal(geom_type, point, size):
    """Outward unit normal at a surface point, in the geom frame.

    Args:
      geom_type: int32 [...] MuJoCo geom type codes (any code in ``SUPPORTED``).
      point: float32 [..., 3] hit point in the geom frame.
      size: float32 [..., 3] geom sizes.
    Returns:
      float32 [..., 3] unit normals.
    """
    x, y, z = point[..., 0], point[..., 1], point[..., 2]
    zero, one = jnp.zeros_like(x), jnp.ones_like(x)
    r, h = size[..., 0], size[..., 1]
    plane = jnp.stack([zero, zero, one], axis=-1)
    ellipsoid = point / jnp.maximum(size * size, _TINY)
    capsule = jnp.stack([x, y, z - jnp.clip(z, -h, h)], axis=-1)
    radial = jnp.sqrt(x * x + y * y)
    on_cap = jnp.abs(jnp.abs(z) - h) < jnp.abs(radial - r)
    cap_normal = jnp.stack([zero, zero, jnp.where(z >= 0, 1.0, -1.0)], axis=-1)
    cylinder = jnp.where(on_cap[..., None], cap_normal, jnp.stack([x, y, zero], axis=-1))
    # Box: the face whose slab the point is closest to.
    gap = size - jnp.abs(point)
    axis = jnp.argmin(gap, axis=-1)
    box = (jnp.arange(3) == axis[..., None]) * jnp.where(point >= 0, 1.0, -1.0)
    t = geom_type[..., None]
    n = jnp.select(
        [t == PLANE, t == SPHERE, t == CAPSULE, t == ELLIPSOID, t == CYLINDER],
        [plane, point, capsule, ellipsoid, cylinder],
        box,
    )
    return _normalize(n)
