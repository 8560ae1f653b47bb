"""Flow matching for the action expert: interpolant, target, loss, σ sampling, Euler sampler, CFG.

Flow-time convention (Ψ0's, the only one used in this package):

    σ = 1 is pure noise, σ = 0 is data;   x_σ = (1 − σ)·x + σ·ε;   velocity target v = dx_σ/dσ = ε − x.

Sampling integrates dx/dσ = v from σ = 1 (x = ε ~ N(0, I)) down to σ = 0 with Euler steps
``x ← x + (σ_next − σ)·v(x, σ)`` on Ψ0's grid (``sigma_grid``).

Per-example parameters (``sigma``, ``beta``, a chunk ``mask``) are *leading-aligned*: an array with fewer
axes than the actions is matched against the leading axes and broadcast over the trailing ones, so σ of
shape [B] goes with actions [B, H, D], and a mask [B, H] masks whole time steps of a chunk. An action-dim
mask [D] is passed separately as ``dim_mask`` (trailing-aligned).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_KINDS = ("uniform", "beta")
LOSS_REDUCTIONS = ("mean", "per_example", "psi0", "psi0_per_example")
SAMPLER_GRIDS = ("psi0", "uniform")
PSI0_TRAIN_STEPS = 1000  # diffusers FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000), no shift
# openpi's π0 draws t ~ Beta(1.5, 1) and maps it to t·0.999 + 0.001 so that σ never hits 0 exactly.
BETA_ALPHA = 1.5
BETA_BETA = 1.0
BETA_SIGMA_MIN = 0.001


def _check_lead(x, shape: tuple[int, ...], name: str) -> None:
    """Raises unless ``x`` (scalar or leading-aligned, e.g. [B] for [B, H, D]) broadcasts to ``shape``."""
    xs = jnp.shape(x)
    if len(xs) > len(shape) or any(a not in (1, b) for a, b in zip(xs, shape)):
        raise ValueError(f"{name} shape {xs} is not leading-aligned with shape {tuple(shape)}")


def _lead_align(x: jax.Array, ndim: int) -> jax.Array:
    """Appends trailing singleton axes so ``x`` (scalar or leading-aligned) broadcasts to rank ``ndim``."""
    x = jnp.asarray(x)
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _check_same_shape(**arrays: jax.Array) -> None:
    shapes = {k: jnp.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {', '.join(f'{k}={s}' for k, s in shapes.items())}")


def interpolate(actions: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
    """Straight-line interpolant x_σ = (1 − σ)·x + σ·ε.

    Args:
      actions: float [..., H, D] data x (normalised actions).
      noise: float, same shape as ``actions``: ε.
      sigma: float scalar or leading-aligned (e.g. [B] for actions [B, H, D]); σ = 1 is noise.

    Returns: float [..., H, D] (dtype of ``actions``).
    """
    _check_same_shape(actions=actions, noise=noise)
    _check_lead(sigma, jnp.shape(actions), "sigma")
    return _interpolate(actions, noise, sigma)


@jax.jit
def _interpolate(actions, noise, sigma):
    s = _lead_align(sigma, actions.ndim).astype(actions.dtype)
    return (1.0 - s) * actions + s * noise


def velocity_target(actions: jax.Array, noise: jax.Array) -> jax.Array:
    """Velocity target of the interpolant, d x_σ / dσ = ε − x.

    Args: actions, noise: float [..., H, D] of equal shape.
    Returns: float [..., H, D].
    """
    _check_same_shape(actions=actions, noise=noise)
    return jnp.subtract(noise, actions)


def flow_matching_loss(
    pred: jax.Array,
    actions: jax.Array,
    noise: jax.Array,
    mask: jax.Array | None = None,
    *,
    dim_mask: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Masked MSE between the predicted velocity and the target ε − x.

    Args:
      pred: float [B, H, D] predicted velocity v_θ(x_σ, σ, o).
      actions: float [B, H, D] clean actions x.
      noise: float [B, H, D] the ε used to build x_σ.
      mask: optional bool/float validity mask. With fewer axes than ``pred`` it is leading-aligned
        (e.g. the loader's ``action_mask`` bool [B, H], False past the episode end, or [B] per example);
        with the same rank it broadcasts the numpy way (e.g. [B, H, D] or [1, 1, D]).
      dim_mask: optional bool/float [D] action-dimension mask (trailing-aligned), e.g. False on padded
        action dimensions. Combined with ``mask`` by multiplication.
      reduction: "mean" → float32 [] = Σ m·(pred − target)² / Σ m over every (b, h, d) entry;
        "per_example" → float32 [B], the same ratio taken per leading index (0 where nothing is valid);
        "psi0" → float32 [], Ψ0's fine-tuning loss: m·(pred − target)² summed over the chunk's time
        steps, mean over the batch, then a weighted sum over the D dims with weight 1/D each, i.e.
        Σ m·err / (B·D) (not normalised by the number of valid entries);
        "psi0_per_example" → float32 [B], Ψ0's loss per example (Σ_{h,d} m·err / D; its batch mean is "psi0").

    Masked entries are removed with ``where`` (not multiplied), so padding may hold any finite or
    non-finite value without leaking into the loss or its gradient. An all-masked batch gives 0.

    Returns: float32 [] or float32 [B].
    """
    _check_same_shape(pred=pred, actions=actions, noise=noise)
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {LOSS_REDUCTIONS}")
    ndim = jnp.ndim(pred)
    if ndim < 1:
        raise ValueError(f"pred must have at least one axis, got shape {jnp.shape(pred)}")
    if mask is not None:
        m_shape = jnp.shape(mask)
        aligned = m_shape + (1,) * (ndim - len(m_shape)) if len(m_shape) < ndim else m_shape
        try:
            if len(m_shape) > ndim:
                raise ValueError
            jnp.broadcast_shapes(aligned, pred.shape)
        except ValueError as e:
            raise ValueError(f"mask shape {m_shape} does not broadcast to pred shape {pred.shape}") from e
    if dim_mask is not None and jnp.shape(dim_mask) != pred.shape[-1:]:
        raise ValueError(f"dim_mask must have shape [{pred.shape[-1]}] (action dim), got {jnp.shape(dim_mask)}")
    return _masked_mse(pred, actions, noise, mask, dim_mask, reduction=reduction)


@partial(jax.jit, static_argnames=("reduction",))
def _masked_mse(pred, actions, noise, mask, dim_mask, reduction):
    weight = jnp.ones(pred.shape, jnp.float32)
    if mask is not None:
        weight = weight * _lead_align(mask, pred.ndim).astype(jnp.float32)
    if dim_mask is not None:
        weight = weight * dim_mask.astype(jnp.float32)
    diff = pred.astype(jnp.float32) - (noise.astype(jnp.float32) - actions.astype(jnp.float32))
    err = jnp.square(jnp.where(weight > 0, diff, 0.0)) * weight  # where before the square: finite gradients
    axes = tuple(range(1, pred.ndim))
    if reduction in ("psi0", "psi0_per_example"):
        per_example = jnp.sum(err, axis=axes) / pred.shape[-1]
        return jnp.mean(per_example) if reduction == "psi0" else per_example
    if reduction == "mean":
        return jnp.sum(err) / jnp.maximum(jnp.sum(weight), 1e-12)
    return jnp.sum(err, axis=axes) / jnp.maximum(jnp.sum(weight, axis=axes), 1e-12)


def sample_sigma(key: jax.Array, shape: tuple[int, ...], kind: str = "uniform") -> jax.Array:
    """Draws flow times σ for training.

    Args:
      key: PRNG key.
      shape: static output shape, e.g. (B,).
      kind: "uniform" → σ ~ U[0, 1) (Ψ0's choice);
        "beta" → σ = 0.001 + 0.999·b with b ~ Beta(1.5, 1) (openpi's π0 schedule; density ∝ b^0.5,
        weighted towards the noisy end σ → 1), so σ ∈ [0.001, 1] ⊂ (0, 1].

    Returns: float32 ``shape``.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if kind == "uniform":
        return jax.random.uniform(key, shape, jnp.float32)
    if kind == "beta":
        b = jax.random.beta(key, BETA_ALPHA, BETA_BETA, shape, jnp.float32)
        return BETA_SIGMA_MIN + (1.0 - BETA_SIGMA_MIN) * b
    raise ValueError(f"unknown sigma kind {kind!r}; expected one of {SIGMA_KINDS}")


def sigma_grid(num_steps: int, grid: str = "psi0") -> jax.Array:
    """The sampler's σ grid, float32 [num_steps + 1], from 1 down to 0.

    "psi0" (default): Ψ0's grid, diffusers' ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)``
    without shift: σ_k = 1 − k·(1 − 1/1000)/(N − 1) for k < N, then σ_N = 0 (10 steps: 1.0, 0.889, …,
    0.112, 0.001, 0; t fed to the model = 1000·σ_k = 1000, 889, …, 112, 1). For N = 1: [1, 0].
    "uniform": σ_k = 1 − k/N (the grid this package used before; kept as an explicit option).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if grid == "uniform":
        return jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32)
    if grid != "psi0":
        raise ValueError(f"unknown sampler grid {grid!r}; expected one of {SAMPLER_GRIDS}")
    # diffusers: timesteps = linspace(1000, 1, N); sigmas = timesteps / 1000; then a final 0.
    t = np.linspace(float(PSI0_TRAIN_STEPS), 1.0, num_steps, dtype=np.float64)
    sig = (t / PSI0_TRAIN_STEPS).astype(np.float32)
    return jnp.asarray(np.concatenate([sig, np.zeros(1, np.float32)]))


def euler_sample(
    velocity_fn: Callable[[jax.Array, jax.Array], jax.Array],
    noise: jax.Array,
    num_steps: int = 10,
    prefix: jax.Array | None = None,
    *,
    prefix_valid: jax.Array | None = None,
    grid: str = "psi0",
) -> jax.Array:
    """Integrates dx/dσ = v(x, σ) from σ = 1 (x = noise) to σ = 0 with ``num_steps`` Euler steps.

    The grid is Ψ0's by default (``sigma_grid``: diffusers' flow-match Euler scheduler with 1000 train
    steps and no shift, σ_k = 1 − k·(1 − 1/1000)/(N − 1), then 0); ``grid="uniform"`` gives σ_k = 1 − k/N.
    Step k evaluates ``v = velocity_fn(x, σ)`` and updates x ← x + (σ_{k+1} − σ_k)·v. Runs as a
    ``lax.scan``, so the compiled size does not grow with ``num_steps`` (a static int).

    Real-time chunking as Ψ0 does it (``prefix`` given): before **every** step the first d actions of
    the sample are replaced by the clean prefix and ``velocity_fn`` gets a per-token σ [B, H] that is 0
    on those d tokens and σ_k elsewhere; the prefix is not re-imposed after the last step (the returned
    first d actions are the prefix moved by the last update, as in Ψ0).

    Args:
      velocity_fn: (x float [B, H, D], sigma float32) → float [B, H, D]; σ is a scalar [] without
        ``prefix`` and [B, H] with it (broadcast inside ``velocity_fn`` as needed).
      noise: float [B, H, D] starting point ε at σ = 1.
      num_steps: static number of Euler steps, ≥ 1.
      prefix: optional float [B or 1, d, D] clean (normalised) actions for the first d ≤ H steps.
      prefix_valid: optional bool [B] (with ``prefix``): rows where it is False get no prefix and σ_k on
        every token, i.e. exactly the plain sampler (a batch mixing first queries with later ones).
      grid: "psi0" (default) or "uniform".

    Returns: float [B, H, D] (dtype of ``noise``), the sample at σ = 0.
    """
    sigmas = sigma_grid(num_steps, grid)
    if prefix is None:

        def body(x, s):
            sigma, sigma_next = s
            v = velocity_fn(x, sigma)
            return (x + (sigma_next - sigma) * v).astype(x.dtype), None

    else:
        if noise.ndim != 3:
            raise ValueError(f"with prefix, noise must be [B, H, D], got {noise.shape}")
        b, h, d_act = noise.shape
        p = jnp.asarray(prefix)
        if p.ndim != 3 or p.shape[0] not in (1, b) or p.shape[1] > h or p.shape[2] != d_act:
            raise ValueError(f"prefix must be [{b} or 1, d ≤ {h}, {d_act}], got {p.shape}")
        d = p.shape[1]
        full = jnp.pad(jnp.broadcast_to(p, (b, d, d_act)).astype(noise.dtype), [(0, 0), (0, h - d), (0, 0)])
        in_prefix = jnp.broadcast_to(jnp.arange(h) < d, (b, h))  # bool [B, H]
        if prefix_valid is not None:
            if jnp.shape(prefix_valid) != (b,):
                raise ValueError(f"prefix_valid must be bool [{b}], got {jnp.shape(prefix_valid)}")
            in_prefix = in_prefix & jnp.asarray(prefix_valid, bool)[:, None]

        def body(x, s):
            sigma, sigma_next = s
            x = jnp.where(in_prefix[..., None], full, x)
            tok_sigma = jnp.where(in_prefix, 0.0, sigma).astype(jnp.float32)
            v = velocity_fn(x, tok_sigma)
            return (x + (sigma_next - sigma) * v).astype(x.dtype), None

    x, _ = jax.lax.scan(body, noise, (sigmas[:-1], sigmas[1:]))
    return x


def cfg_velocity(v_cond: jax.Array, v_uncond: jax.Array, beta: jax.Array | float) -> jax.Array:
    """Classifier-free guidance: v = v_uncond + β·(v_cond − v_uncond).

    β = 1 returns the conditional velocity, β = 0 the unconditional one, β > 1 extrapolates.

    Args:
      v_cond: float [..., H, D] velocity with the "advantage: high" prompt.
      v_uncond: float [..., H, D] velocity with the bare instruction.
      beta: float scalar or leading-aligned (e.g. [B]).

    Returns: float [..., H, D].
    """
    _check_same_shape(v_cond=v_cond, v_uncond=v_uncond)
    _check_lead(beta, jnp.shape(v_cond), "beta")
    return _cfg(v_cond, v_uncond, beta)


@jax.jit
def _cfg(v_cond, v_uncond, beta):
    b = _lead_align(beta, v_cond.ndim).astype(v_cond.dtype)
    return v_uncond + b * (v_cond - v_uncond)
