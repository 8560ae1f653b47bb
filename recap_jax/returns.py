"""Returns and N-step advantages for RECAP.

Two return definitions live here:

* :func:`time_to_completion_returns` — Eq. (1) of RECAP-Ψ, one value per stored VLA decision point
  (query) of an episode: r_i = −(n_steps − 1)/(max_steps − 1) · (1 − i/(Q − 1)) for a success, −1 for
  a failure. All values are in [−1, 0].
* :func:`step_rewards` / :func:`monte_carlo_returns` — the π*0.6 form: −1 per step, 0 at a successful
  end, −C_fail at a failed end, normalised so returns lie in [−1, 0] (see :func:`step_rewards`).

:func:`n_step_advantages` bootstraps with V after n stored decision points; :func:`returns_to_rewards`
turns per-decision returns into the per-decision rewards it consumes.

Padded rows: functions that take ``max_queries`` / ``max_len`` produce fixed-length rows plus a bool mask
(True on the valid prefix), so they jit once and ``vmap`` over a batch of episodes whose lengths are
traced. Arguments that are concrete (plain Python/numpy values) are validated eagerly with ``ValueError``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

MAX_STEPS = 600


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_finite(x, name: str) -> None:
    if _concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def _check_static_int(x, name: str, minimum: int) -> int:
    """A Python/numpy int (or a concrete integer 0-d array) ≥ minimum, as a Python int."""
    if _concrete(x) and not isinstance(x, bool | np.bool_):
        arr = np.asarray(x)
        if arr.shape == () and np.issubdtype(arr.dtype, np.integer) and int(arr) >= minimum:
            return int(arr)
    raise ValueError(f"{name} must be a static int >= {minimum}, got {x!r}")


def time_to_completion_returns(
    num_queries,
    n_steps,
    success,
    max_steps: int = MAX_STEPS,
    max_queries: int | None = None,
):
    """Eq. (1): normalised negative time-to-completion at each decision point of one episode.

    For a successful episode with Q = ``num_queries`` uniformly spaced decision points,
    ``r_i = −(n_steps − 1)/(max_steps − 1) · (1 − i/(Q − 1))``, i = 0..Q−1 (so r_{Q−1} = 0, just before
    success); a failed episode gets −1 everywhere. Values are clipped to [−1, 0].

    Q == 1: the single decision point is the start of the episode, so it gets the i = 0 value
    −(n_steps − 1)/(max_steps − 1) (the factor (1 − i/(Q − 1)) is taken as 1), not 0.

    Args:
      num_queries: Q ≥ 1 decision points. A static int when ``max_queries`` is None; may be a traced int
        when ``max_queries`` is given.
      n_steps: control steps the episode took (1 ≤ n_steps ≤ max_steps); int or traced int.
      success: bool (or traced bool/float, nonzero = success).
      max_steps: T, the episode step limit (paper: 600); static int ≥ 2.
      max_queries: optional static padded length.

    Returns:
      ``max_queries`` None: float32 [Q].
      otherwise: (values float32 [max_queries], mask bool [max_queries]); entries i ≥ Q have value 0 and
      mask False.
    """
    max_steps = _check_static_int(max_steps, "max_steps", 2)
    if max_queries is None:
        length = _check_static_int(num_queries, "num_queries", 1)
    else:
        length = _check_static_int(max_queries, "max_queries", 1)
        if _concrete(num_queries):
            q = _check_static_int(int(np.asarray(num_queries)), "num_queries", 1)
            if q > length:
                raise ValueError(f"num_queries={q} exceeds max_queries={length}")
    if _concrete(n_steps):
        ns = np.asarray(n_steps)
        if ns.shape != () or not 1 <= int(ns) <= max_steps:
            raise ValueError(f"n_steps must be a scalar in [1, max_steps={max_steps}], got {n_steps!r}")
    values, mask = _ttc_row(num_queries, n_steps, success, max_steps=max_steps, length=length)
    return values if max_queries is None else (values, mask)


@partial(jax.jit, static_argnames=("max_steps", "length"))
def _ttc_row(num_queries, n_steps, success, max_steps, length):
    q = jnp.asarray(num_queries, jnp.int32)
    i = jnp.arange(length, dtype=jnp.float32)
    remaining = jnp.where(q > 1, 1.0 - i / jnp.maximum(q - 1, 1).astype(jnp.float32), 1.0)
    scale = (jnp.asarray(n_steps, jnp.float32) - 1.0) / (max_steps - 1)
    ok = jnp.asarray(success).astype(bool)
    values = jnp.clip(jnp.where(ok, -scale * remaining, -1.0), -1.0, 0.0)
    mask = jnp.arange(length) < q
    return jnp.where(mask, values, 0.0), mask


def step_rewards(length, success, c_fail, max_len: int):
    """π*0.6 per-control-step rewards of one episode, normalised, padded to ``max_len``.

    Raw rewards: −1 at every step t < length − 1; at the last step t = length − 1, 0 on success and
    −C_fail on failure. They are divided by S = (max_len − 1) + C_fail, the magnitude of the worst
    possible episode (a failure at the step limit), so every return lies in [−1, 0]: a failure at the limit
    has return −1, an immediate success 0. With C_fail = 0 and success, the returns equal Eq. (1)
    evaluated at each control step (r_t = −(length − 1 − t)/(max_len − 1)).

    Args:
      length: steps taken, 1 ≤ length ≤ max_len (int or traced int).
      success: bool (or traced).
      c_fail: failure penalty C_fail ≥ 0 (float or traced).
      max_len: static padded length (the episode step limit T).

    Returns: (rewards float32 [max_len], mask bool [max_len]); rewards are 0 where mask is False.
    """
    max_len = _check_static_int(max_len, "max_len", 1)
    if _concrete(length) and not 1 <= int(np.asarray(length)) <= max_len:
        raise ValueError(f"length must be in [1, max_len={max_len}], got {length!r}")
    if _concrete(c_fail):
        _check_finite(c_fail, "c_fail")
        if float(np.asarray(c_fail)) < 0:
            raise ValueError(f"c_fail must be >= 0, got {c_fail!r}")
    return _step_rewards(length, success, c_fail, max_len=max_len)


@partial(jax.jit, static_argnames=("max_len",))
def _step_rewards(length, success, c_fail, max_len):
    length = jnp.asarray(length, jnp.int32)
    c = jnp.asarray(c_fail, jnp.float32)
    t = jnp.arange(max_len)
    mask = t < length
    last = jnp.where(jnp.asarray(success).astype(bool), 0.0, -c)
    raw = jnp.where(t == length - 1, last, -1.0)
    scale = jnp.maximum((max_len - 1) + c, 1e-12)
    return jnp.where(mask, raw / scale, 0.0), mask


def monte_carlo_returns(rewards, mask=None, discount: float = 1.0):
    """Reward-to-go G_t = Σ_{k ≥ t} γ^{k−t} r_k along the last axis (entries with mask False count as 0).

    Args:
      rewards: float [..., T].
      mask: optional bool [..., T]; masked rewards are ignored and their returns set to 0.
      discount: γ in (0, 1].

    Returns: float32 [..., T].
    """
    rewards = jnp.asarray(rewards)
    if rewards.ndim < 1:
        raise ValueError(f"rewards must have a time axis, got shape {rewards.shape}")
    if not 0.0 < discount <= 1.0:
        raise ValueError(f"discount must be in (0, 1], got {discount!r}")
    _check_finite(rewards, "rewards")
    if mask is not None and jnp.shape(mask) != rewards.shape:
        raise ValueError(f"mask shape {jnp.shape(mask)} must equal rewards shape {rewards.shape}")
    return _reward_to_go(rewards, mask, discount=float(discount))


@partial(jax.jit, static_argnames=("discount",))
def _reward_to_go(rewards, mask, discount):
    rewards = rewards.astype(jnp.float32)
    if mask is not None:
        rewards = jnp.where(mask, rewards, 0.0)

    def body(g, r):
        g = r + discount * g
        return g, g

    xs = jnp.moveaxis(rewards, -1, 0)
    _, g = jax.lax.scan(body, jnp.zeros(xs.shape[1:], jnp.float32), xs, reverse=True)
    g = jnp.moveaxis(g, 0, -1)
    return g if mask is None else jnp.where(mask, g, 0.0)


def returns_to_rewards(returns, mask=None):
    """Per-decision rewards whose (undiscounted) reward-to-go is ``returns``: r_i = G_i − G_{i+1}, G_Q = 0.

    Use it to feed Eq. (1) returns to :func:`n_step_advantages`; the n-step sum of these rewards then
    telescopes to G_i − G_{i+n}.

    Args:
      returns: float [..., Q].
      mask: optional bool [..., Q] valid prefix; masked entries are treated as 0 and give reward 0.

    Returns: float32 [..., Q].
    """
    g = jnp.asarray(returns)
    if g.ndim < 1:
        raise ValueError(f"returns must have a decision axis, got shape {g.shape}")
    if mask is not None and jnp.shape(mask) != g.shape:
        raise ValueError(f"mask shape {jnp.shape(mask)} must equal returns shape {g.shape}")
    _check_finite(g if mask is None or not _concrete(mask) else np.where(np.asarray(mask), g, 0.0), "returns")
    return _returns_to_rewards(g, mask)


@jax.jit
def _returns_to_rewards(g, mask):
    g = g.astype(jnp.float32)
    if mask is not None:
        g = jnp.where(mask, g, 0.0)
    nxt = jnp.concatenate([g[..., 1:], jnp.zeros_like(g[..., :1])], axis=-1)
    r = g - nxt
    return r if mask is None else jnp.where(mask, r, 0.0)


def _n_step_row(rewards, values, length, n):
    q = rewards.shape[-1]
    idx = jnp.arange(q)
    valid = idx < length
    r = jnp.where(valid, rewards, 0.0)
    v = jnp.where(valid, values, 0.0)
    csum = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(r)])  # csum[k] = Σ_{j<k} r_j
    end = jnp.minimum(idx + n, length)
    boot_idx = idx + n
    boot = jnp.where(boot_idx < length, v[jnp.minimum(boot_idx, q - 1)], 0.0)
    adv = csum[end] - csum[jnp.minimum(idx, length)] + boot - v
    return jnp.where(valid, adv, 0.0)


def n_step_advantages(rewards, values, n: int, *, mask=None, length=None):
    """N-step advantages A_t = Σ_{k=t}^{t+n−1} r_k + V(o_{t+n}) − V(o_t) over stored decision points.

    Indices count stored decision points (one every Ta = 24 control steps), so ``rewards[t]`` is the reward
    collected between decision points t and t + 1 (e.g. :func:`returns_to_rewards` of Eq. (1) returns, or
    the sum of :func:`step_rewards` over that chunk) and ``n`` = 1 s at 50 Hz with Ta = 24 is n ≈ 2.
    Episode ends are terminal: rewards past the last valid decision point are 0 and the bootstrap
    V(o_{t+n}) is 0 when t + n is at or past the end, so for n ≥ Q the advantage is G_t − V(o_t).

    Args:
      rewards: float [..., Q].
      values: float [..., Q] V̂ at each decision point.
      n: static int ≥ 1.
      mask: optional bool [..., Q] valid *prefix* of each row (True then False).
      length: optional int [...] valid length of each row (alternative to ``mask``; not both).

    Returns: float32 [..., Q]; 0 at invalid entries.
    """
    n = _check_static_int(n, "n", 1)
    rewards, values = jnp.asarray(rewards), jnp.asarray(values)
    if rewards.shape != values.shape or rewards.ndim < 1:
        raise ValueError(f"shape mismatch: rewards {rewards.shape} vs values {values.shape} (want equal [..., Q])")
    if mask is not None and length is not None:
        raise ValueError("pass either mask or length, not both")
    q = rewards.shape[-1]
    if mask is not None:
        if jnp.shape(mask) != rewards.shape:
            raise ValueError(f"mask shape {jnp.shape(mask)} must equal rewards shape {rewards.shape}")
        if _concrete(mask):
            m = np.asarray(mask, bool)
            length = m.sum(-1).astype(np.int32)
            if not np.array_equal(m, np.arange(q) < length[..., None]):
                raise ValueError("mask must be a valid prefix (True entries first, then False) in every row")
        else:
            length = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    elif length is None:
        length = np.full(rewards.shape[:-1], q, np.int32)
    else:
        if jnp.shape(length) != rewards.shape[:-1]:
            raise ValueError(f"length shape {jnp.shape(length)} must equal the leading shape {rewards.shape[:-1]}")
        if _concrete(length) and not np.all((np.asarray(length) >= 0) & (np.asarray(length) <= q)):
            raise ValueError(f"length must lie in [0, {q}], got {np.asarray(length)}")
    if _concrete(length):
        valid = np.arange(q) < np.asarray(length)[..., None]
        _check_finite(np.where(valid, rewards, 0.0) if _concrete(rewards) else rewards, "rewards")
        _check_finite(np.where(valid, values, 0.0) if _concrete(values) else values, "values")
    return _n_step(rewards, values, length, n=n)


@partial(jax.jit, static_argnames=("n",))
def _n_step(rewards, values, length, n):
    row = jnp.vectorize(lambda r, v, L: _n_step_row(r, v, L, n), signature="(q),(q),()->(q)")
    return row(rewards.astype(jnp.float32), values.astype(jnp.float32), jnp.asarray(length, jnp.int32))
