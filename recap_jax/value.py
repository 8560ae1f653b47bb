"""Categorical (distributional) value head targets: bins, discretisation, cross-entropy, expectation.

Returns live in [v_min, v_max] = [−1, 0] by default (Eq. (1) of the paper and the π*0.6 normalisation)
and are represented on ``num_bins`` = 201 uniformly spaced bin *centres* b_k = v_min + k·Δ,
Δ = (v_max − v_min)/(num_bins − 1), so both ends are bins. Returns outside the range are clipped to it.
Every function takes ``(…, num_bins=201, v_min=-1.0, v_max=0.0)`` in this positional order.

Inputs are checked eagerly when they are concrete (outside ``jit``): a non-finite return raises
``ValueError``. Under ``jit`` no data-dependent check is possible; non-finite returns then produce NaN.
Each public function validates in Python and then calls one module-level jitted kernel (static bin
support), so an eager call compiles once per shape rather than once per primitive.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

NUM_BINS = 201
V_MIN = -1.0
V_MAX = 0.0
TARGET_KINDS = ("nearest", "two_hot")


def _check_support(num_bins: int, v_min: float, v_max: float) -> None:
    if not isinstance(num_bins, int | np.integer) or num_bins < 2:
        raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
    if not (np.isfinite(v_min) and np.isfinite(v_max) and v_min < v_max):
        raise ValueError(f"need finite v_min < v_max, got v_min={v_min!r}, v_max={v_max!r}")


def _check_finite(x: jax.Array, name: str) -> None:
    """Raises ValueError on non-finite entries of a concrete array; a no-op under tracing."""
    if isinstance(x, jax.core.Tracer):
        return
    if not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def bin_centers(num_bins: int = NUM_BINS, v_min: float = V_MIN, v_max: float = V_MAX) -> jax.Array:
    """Bin centres b_k = v_min + k·(v_max − v_min)/(num_bins − 1).

    Returns: float32 [num_bins], b_0 = v_min, b_{K−1} = v_max.
    """
    _check_support(num_bins, v_min, v_max)
    return jnp.asarray(np.linspace(v_min, v_max, num_bins), jnp.float32)


_STATIC = ("num_bins", "v_min", "v_max")


def _scaled(returns: jax.Array, num_bins: int, v_min: float, v_max: float) -> jax.Array:
    """Continuous bin coordinate u = (clip(r) − v_min)/Δ ∈ [0, K − 1] (traceable, no checks)."""
    r = jnp.clip(returns.astype(jnp.float32), v_min, v_max)
    return (r - v_min) * ((num_bins - 1) / (v_max - v_min))


@partial(jax.jit, static_argnames=_STATIC)
def _discretize(returns, num_bins, v_min, v_max):
    return jnp.clip(jnp.round(_scaled(returns, num_bins, v_min, v_max)), 0, num_bins - 1).astype(jnp.int32)


@partial(jax.jit, static_argnames=_STATIC)
def _two_hot(returns, num_bins, v_min, v_max):
    u = _scaled(returns, num_bins, v_min, v_max)
    lo = jnp.clip(jnp.floor(u), 0, num_bins - 2)
    w_hi = u - lo
    lo_i = lo.astype(jnp.int32)
    return (
        jax.nn.one_hot(lo_i, num_bins) * (1.0 - w_hi)[..., None] + jax.nn.one_hot(lo_i + 1, num_bins) * w_hi[..., None]
    )


def _checked_returns(returns, num_bins, v_min, v_max) -> jax.Array:
    _check_support(num_bins, v_min, v_max)
    _check_finite(returns, "returns")
    return jnp.asarray(returns)


def discretize(returns: jax.Array, num_bins: int = NUM_BINS, v_min: float = V_MIN, v_max: float = V_MAX) -> jax.Array:
    """Index of the nearest bin centre to each (clipped) return; halfway ties round to even.

    Args: returns: float [...] scalar returns.
    Returns: int32 [...] in [0, num_bins − 1].
    """
    r = _checked_returns(returns, num_bins, v_min, v_max)
    return _discretize(r, num_bins=num_bins, v_min=float(v_min), v_max=float(v_max))


def two_hot(returns: jax.Array, num_bins: int = NUM_BINS, v_min: float = V_MIN, v_max: float = V_MAX) -> jax.Array:
    """Two-hot projection: weight split between the two bins bracketing each (clipped) return.

    The weights are non-negative, sum to 1 and have mean Σ_k p_k b_k equal to the clipped return.

    Args: returns: float [...].
    Returns: float32 [..., num_bins].
    """
    r = _checked_returns(returns, num_bins, v_min, v_max)
    return _two_hot(r, num_bins=num_bins, v_min=float(v_min), v_max=float(v_max))


@partial(jax.jit, static_argnames=(*_STATIC, "target", "reduction"))
def _categorical_loss(logits, returns, w, num_bins, v_min, v_max, target, reduction):
    # Zero the logits of weight-0 rows first, so padding (even NaN) reaches neither the loss nor its gradient.
    logits = jnp.where((w != 0)[..., None], logits.astype(jnp.float32), 0.0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if target == "nearest":
        idx = _discretize(returns, num_bins=num_bins, v_min=v_min, v_max=v_max)
        loss = -jnp.take_along_axis(logp, idx[..., None], axis=-1)[..., 0]
    else:
        loss = -jnp.sum(_two_hot(returns, num_bins=num_bins, v_min=v_min, v_max=v_max) * logp, axis=-1)
    loss = jnp.where(w != 0, loss, 0.0) * w
    if reduction == "mean":
        return jnp.sum(loss) / jnp.maximum(jnp.sum(w), 1e-12)
    return loss


def categorical_loss(
    logits: jax.Array,
    returns: jax.Array,
    num_bins: int = NUM_BINS,
    v_min: float = V_MIN,
    v_max: float = V_MAX,
    *,
    weights: jax.Array | None = None,
    target: str = "nearest",
    reduction: str = "none",
) -> jax.Array:
    """Cross-entropy of the predicted return distribution against the discretised return.

    Args:
      logits: float [..., num_bins] value-head logits.
      returns: float [...] Monte-Carlo returns (clipped to [v_min, v_max]).
      weights: optional bool/float [...] per-example mask or weights (same shape as ``returns``).
      target: "nearest" (π*0.6 / the paper: one-hot on :func:`discretize`) or "two_hot".
      reduction: "none" → float32 [...] per-example loss times the weight (exactly 0 where the weight
        is 0, even if those logits are non-finite); "mean" → float32 [] = Σ w·ℓ / Σ w (0 if Σ w = 0).

    Returns: float32 [...] or float32 [].
    """
    logits = jnp.asarray(logits)
    returns = _checked_returns(returns, num_bins, v_min, v_max)
    if logits.ndim < 1 or logits.shape[-1] != num_bins:
        raise ValueError(f"logits last axis must be num_bins={num_bins}, got shape {logits.shape}")
    if logits.shape[:-1] != returns.shape:
        raise ValueError(f"shape mismatch: logits {logits.shape} vs returns {returns.shape} (want [..., K] vs [...])")
    if target not in TARGET_KINDS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGET_KINDS}")
    if reduction not in ("none", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}; expected 'none' or 'mean'")
    if weights is None:
        w = jnp.ones(returns.shape, jnp.float32)
    else:
        w = jnp.asarray(weights)
        if w.shape != returns.shape:
            raise ValueError(f"weights shape {w.shape} must equal returns shape {returns.shape}")
        w = w.astype(jnp.float32)
    return _categorical_loss(
        logits,
        returns,
        w,
        num_bins=num_bins,
        v_min=float(v_min),
        v_max=float(v_max),
        target=target,
        reduction=reduction,
    )


@partial(jax.jit, static_argnames=_STATIC)
def _expected_value(logits, num_bins, v_min, v_max):
    centers = jnp.asarray(np.linspace(v_min, v_max, num_bins), jnp.float32)  # same values as bin_centers()
    return jnp.sum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * centers, axis=-1)


def expected_value(
    logits: jax.Array, num_bins: int = NUM_BINS, v_min: float = V_MIN, v_max: float = V_MAX
) -> jax.Array:
    """V̂(o) = Σ_k softmax(logits)_k · b_k (Eq. (2)).

    Args: logits: float [..., num_bins].
    Returns: float32 [...] in [v_min, v_max].
    """
    _check_support(num_bins, v_min, v_max)
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] != num_bins:
        raise ValueError(f"logits last axis must be num_bins={num_bins}, got shape {logits.shape}")
    return _expected_value(logits, num_bins=num_bins, v_min=float(v_min), v_max=float(v_max))
