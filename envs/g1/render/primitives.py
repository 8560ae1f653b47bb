"""Analytic ray–primitive intersection and surface normals, in each geom's local frame.

Distance functions are elementwise: ``origin``, ``direction`` (the ray in the geom frame) and
``size`` (MuJoCo's ``geom_size``) are each a 3-tuple of broadcastable float32 arrays [...] (x, y, z
components: structure-of-arrays, so that under ``vmap`` XLA fuses the whole test into the
min-reduction over geoms instead of materialising [..., 3] temporaries).
They return float32 [...]: the smallest ``t > EPS`` at which the
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
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _entering(t):
    """``t`` where it is a hit in front of the ray origin (> EPS), else inf."""
    return jnp.where(t > EPS, t, jnp.inf)


def _quadratic_near_root(a, b, c):
    """Smaller root of ``a t^2 + 2 b t + c = 0`` (a >= 0), inf when there is none."""
    det = b * b - a * c
    ok = (det >= 0) & (a > _TINY)
    t0 = (-b - jnp.sqrt(jnp.maximum(det, 0.0))) / jnp.where(ok, a, 1.0)
    return jnp.where(ok, t0, jnp.inf)


def _safe_recip(x):
    return 1.0 / jnp.where(jnp.abs(x) < _TINY, jnp.where(x < 0, -_TINY, _TINY), x)


def ray_plane(origin, direction, size):
    """Distance to a plane z = 0 (front face only), within ``|x| <= size[0]``, ``|y| <= size[1]``."""
    front = direction[2] < -_TINY
    t = jnp.where(front, -origin[2] * _safe_recip(direction[2]), jnp.inf)
    t_hit = jnp.where(front, t, 0.0)
    half_x = jnp.where(size[0] > 0, size[0], jnp.inf)  # 0 = infinite
    half_y = jnp.where(size[1] > 0, size[1], jnp.inf)
    inside = (jnp.abs(origin[0] + t_hit * direction[0]) <= half_x) & (
        jnp.abs(origin[1] + t_hit * direction[1]) <= half_y
    )
    return jnp.where(front & inside, _entering(t), jnp.inf)


def ray_sphere(origin, direction, size):
    """Distance to a sphere of radius ``size[0]`` centred at the origin."""
    r = size[0]
    return _entering(
        _quadratic_near_root(_dot(direction, direction), _dot(origin, direction), _dot(origin, origin) - r * r)
    )


def ray_ellipsoid(origin, direction, size):
    """Distance to an ellipsoid with semi-axes ``size``."""
    o = tuple(origin[i] / size[i] for i in range(3))
    d = tuple(direction[i] / size[i] for i in range(3))
    return _entering(_quadratic_near_root(_dot(d, d), _dot(o, d), _dot(o, o) - 1.0))


def _cylinder_side(origin, direction, radius, half):
    """Entering distance to the side of a z-aligned cylinder, accepting only hits with |z| <= half."""
    a = direction[0] * direction[0] + direction[1] * direction[1]
    b = origin[0] * direction[0] + origin[1] * direction[1]
    c = origin[0] * origin[0] + origin[1] * origin[1] - radius * radius
    t0 = _quadratic_near_root(a, b, c)
    z = origin[2] + jnp.where(jnp.isfinite(t0), t0, 0.0) * direction[2]
    return _entering(jnp.where(jnp.abs(z) <= half, t0, jnp.inf))


def ray_capsule(origin, direction, size):
    """Distance to a z-aligned capsule (radius ``size[0]``, half-length ``size[1]``)."""
    r, h = size[0], size[1]
    t_side = _cylinder_side(origin, direction, r, h)
    top = (origin[0], origin[1], origin[2] - h)
    bottom = (origin[0], origin[1], origin[2] + h)
    return jnp.minimum(t_side, jnp.minimum(ray_sphere(top, direction, size), ray_sphere(bottom, direction, size)))


def ray_cylinder(origin, direction, size):
    """Distance to a z-aligned closed cylinder (radius ``size[0]``, half-length ``size[1]``)."""
    r, h = size[0], size[1]
    t_side = _cylinder_side(origin, direction, r, h)
    # Only the cap facing the ray can be entered: the top one (z = h) when the ray goes down.
    z = jnp.where(direction[2] < 0, h, -h)
    t = (z - origin[2]) * _safe_recip(direction[2])
    t_xy = jnp.where(jnp.abs(t) < 1e30, t, 0.0)
    x, y = origin[0] + t_xy * direction[0], origin[1] + t_xy * direction[1]
    t_cap = jnp.where(x * x + y * y <= r * r, _entering(t), jnp.inf)
    return jnp.minimum(t_side, t_cap)


def ray_box(origin, direction, size):
    """Distance to an axis-aligned box with half-sizes ``size`` (slab method)."""
    t_near, t_far = -jnp.inf, jnp.inf
    for i in range(3):
        inv = _safe_recip(direction[i])
        t1 = (-size[i] - origin[i]) * inv
        t2 = (size[i] - origin[i]) * inv
        t_near = jnp.maximum(t_near, jnp.minimum(t1, t2))
        t_far = jnp.minimum(t_far, jnp.maximum(t1, t2))
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
