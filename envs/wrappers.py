"""Batched-training wrappers, applied in ONE order (innermost first):

    VmapWrapper(env, batch_size)      reset(key) -> B envs; step(state[B], action f32[B, 36])
    EpisodeWrapper(env, episode_length) truncation (info["truncated"]) kept apart from termination
                                        (info["terminated"]), episode return/length bookkeeping
    AutoResetWrapper(env, pool_size)  a done env restarts from a pool of pre-stabilised initial states

``wrap_for_training(env, batch_size, ...)`` builds exactly that stack. All wrappers are pure: the env
object holds only static data, everything that changes lives in the ``State`` pytree.

Auto-reset uses a cached pool, not a fresh reset: under ``vmap`` both branches of a ``where`` run, so a
fresh reset (60 control steps of stand stabilisation) inside ``step`` would cost 60 control steps on every
step. Each env owns ``pool_size`` initial states (``info["pool"]``, leaves [B, K, ...]) that it cycles
through; ``AutoResetWrapper.refresh_pool(state, key)`` draws a new pool and should be called once per
collection wave (outside the stepping scan), so episodes of different waves start from different states.
On the step where an env is done, the returned state carries that step's ``reward``, ``done``,
``metrics`` and ``info["truncated"/"terminated"]`` but the NEW episode's ``data``/``obs``/other info.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

_POOL_KEYS = ("pool", "pool_next")


def _where_batch(mask: jax.Array, a, b):
    """Per-env select: ``mask`` bool[B] broadcast over each leaf's trailing axes."""

    def sel(x, y):
        return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y)

    return jax.tree.map(sel, a, b)


class Wrapper:
    """Forwards everything it does not override to the wrapped env."""

    def __init__(self, env: Any):
        self.env = env

    def __getattr__(self, name: str) -> Any:
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    @property
    def unwrapped(self) -> Any:
        return getattr(self.env, "unwrapped", self.env)


class VmapWrapper(Wrapper):
    """Batches a single-env ``reset``/``step`` with ``jax.vmap``. ``reset(key)`` splits ``key`` into B envs."""

    def __init__(self, env: Any, batch_size: int):
        super().__init__(env)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)

    def reset(self, key: jax.Array):
        """key: one PRNG key (split into ``batch_size``) or keys u32[B, 2]. Returns a State with leading axis B."""
        keys = key if key.ndim == 2 else jax.random.split(key, self.batch_size)
        if keys.shape[0] != self.batch_size:
            raise ValueError(f"expected {self.batch_size} keys, got {keys.shape[0]}")
        return jax.vmap(self.env.reset)(keys)

    def step(self, state, action: jax.Array):
        """action: f32[B, A]."""
        if action.ndim != 2 or action.shape[0] != self.batch_size:
            raise ValueError(f"action must be [batch={self.batch_size}, {self.env.action_size}], got {action.shape}")
        return jax.vmap(self.env.step)(state, action)


class EpisodeWrapper(Wrapper):
    """Truncates episodes after ``episode_length`` control steps (default: the env config's) and tracks
    ``info["episode_return"]`` f32[B] and ``info["episode_length"]`` i32[B]. Termination (success, fall,
    NaN) stays in ``info["terminated"]``; truncation in ``info["truncated"]``; ``done`` is their union."""

    def __init__(self, env: Any, episode_length: int | None = None):
        super().__init__(env)
        if episode_length is None:
            episode_length = env.unwrapped.config.episode_length
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.episode_length = int(episode_length)

    def reset(self, key: jax.Array):
        state = self.env.reset(key)
        zeros = jnp.zeros_like(state.reward)
        info = {**state.info, "episode_return": zeros, "episode_length": jnp.zeros_like(state.info["step"])}
        return state.replace(info=info)

    def step(self, state, action: jax.Array):
        was_done = state.done > 0
        new = self.env.step(state, action)  # a done env comes back frozen (unchanged)
        terminated = new.info["terminated"] > 0
        truncated = (new.info["truncated"] > 0) | ((new.info["step"] >= self.episode_length) & ~terminated)
        live = (~was_done).astype(new.reward.dtype)
        info = {
            **new.info,
            "truncated": truncated.astype(new.reward.dtype),
            "episode_return": state.info["episode_return"] + live * new.reward,
            "episode_length": state.info["episode_length"] + (~was_done).astype(jnp.int32),
        }
        done = jnp.maximum(new.done, truncated.astype(new.done.dtype))
        return new.replace(info=info, done=done)


class AutoResetWrapper(Wrapper):
    """Restarts done envs from a per-env pool of pre-stabilised initial states (see the module docstring)."""

    def __init__(self, env: Any, pool_size: int = 1):
        super().__init__(env)
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool_size = int(pool_size)

    def _make_pool(self, key: jax.Array):
        """A fresh pool: leaves [B, K, ...] (K = pool_size)."""
        keys = jax.random.split(key, self.pool_size)
        pool = jax.vmap(self.env.reset)(keys)  # leaves [K, B, ...]
        return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), pool)

    def reset(self, key: jax.Array):
        k_state, k_pool = jax.random.split(key)
        # The first states and the pool in ONE batched reset (one copy of the stabilisation loop to compile,
        # not two); the same keys, so the same states as ``env.reset(k_state)`` and ``_make_pool(k_pool)``.
        keys = jnp.concatenate([k_state[None], jax.random.split(k_pool, self.pool_size)])
        both = jax.vmap(self.env.reset)(keys)  # leaves [1 + K, B, ...]
        state = jax.tree.map(lambda x: x[0], both)
        pool = jax.tree.map(lambda x: jnp.swapaxes(x[1:], 0, 1), both)
        batch = state.done.shape[0]
        info = {**state.info, "pool": pool, "pool_next": jnp.zeros(batch, jnp.int32)}
        return state.replace(info=info)

    def refresh_pool(self, state, key: jax.Array):
        """Replaces the pool with freshly stabilised initial states (call between collection waves)."""
        return state.replace(info={**state.info, "pool": self._make_pool(key)})

    def step(self, state, action: jax.Array):
        pool, pool_next = state.info["pool"], state.info["pool_next"]
        inner_info = {k: v for k, v in state.info.items() if k not in _POOL_KEYS}
        # A done env was already restarted: clear its flag so the inner env steps it (and doesn't freeze it).
        inner = state.replace(info=inner_info, done=jnp.zeros_like(state.done))
        new = self.env.step(inner, action)
        done = new.done > 0
        batch = done.shape[0]
        first = jax.tree.map(lambda x: x[jnp.arange(batch), pool_next % self.pool_size], pool)
        keep = {"truncated", "terminated"}
        first_info = {k: v for k, v in first.info.items() if k not in keep}
        new_info = {**new.info, **{k: _where_batch(done, first_info[k], new.info[k]) for k in first_info}}
        restarted = new.replace(
            data=_where_batch(done, first.data, new.data),
            obs=_where_batch(done, first.obs, new.obs),
            info={**new_info, "pool": pool, "pool_next": pool_next + done.astype(jnp.int32)},
        )
        return restarted


def wrap_for_training(env: Any, batch_size: int, episode_length: int | None = None, pool_size: int = 1):
    """``AutoResetWrapper(EpisodeWrapper(VmapWrapper(env, batch_size), episode_length), pool_size)``."""
    return AutoResetWrapper(EpisodeWrapper(VmapWrapper(env, batch_size), episode_length), pool_size)
