"""The wrapper stack (Vmap -> Episode -> AutoReset) on a tiny pure-JAX env with G1BendPick's State contract.

The wrappers only see the State pytree, so a toy env exercises all their logic in milliseconds; the toy
follows the real env's conventions (done envs are frozen, ``info["step"/"truncated"/"terminated"]``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import wrappers
from envs.g1.bendpick import State


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    episode_length: int = 6
    goal: float = 4.0


class ToyEnv:
    """x starts at a key-dependent offset in [0, 0.5); each step adds action[0]; terminates at x >= goal."""

    action_size = 1
    state_size = 1

    def __init__(self, **overrides):
        self.config = ToyConfig(**overrides)

    def reset(self, key):
        x = jax.random.uniform(key, (), maxval=0.5)
        zero = jnp.zeros((), jnp.float32)
        info = {"step": jnp.zeros((), jnp.int32), "truncated": zero, "terminated": zero, "start": x}
        return State(
            data={"x": x}, obs={"state": x[None]}, reward=zero, done=zero, metrics={"success": zero}, info=info
        )

    def step(self, state, action):
        x = state.data["x"] + action[0]
        t = state.info["step"] + 1
        success = x >= self.config.goal
        truncated = (t >= self.config.episode_length) & ~success
        f = lambda v: jnp.asarray(v, jnp.float32)
        new = state.replace(
            data={"x": x},
            obs={"state": x[None]},
            reward=f(success),
            done=f(success | truncated),
            metrics={"success": f(success)},
            info={**state.info, "step": t, "truncated": f(truncated), "terminated": f(success)},
        )
        return jax.tree.map(lambda a, b: jnp.where(state.done > 0, a, b), state, new)


def test_order_and_validation():
    env = wrappers.wrap_for_training(ToyEnv(), batch_size=3, pool_size=2)
    assert isinstance(env, wrappers.AutoResetWrapper)
    assert isinstance(env.env, wrappers.EpisodeWrapper)
    assert isinstance(env.env.env, wrappers.VmapWrapper)
    assert env.action_size == 1 and isinstance(env.unwrapped, ToyEnv)
    with pytest.raises(ValueError, match="batch_size"):
        wrappers.VmapWrapper(ToyEnv(), 0)
    with pytest.raises(ValueError, match="pool_size"):
        wrappers.AutoResetWrapper(ToyEnv(), 0)
    with pytest.raises(ValueError, match="action must be"):
        wrappers.VmapWrapper(ToyEnv(), 3).step(None, jnp.zeros((2, 1)))


def test_episode_truncation_apart_from_termination():
    env = wrappers.EpisodeWrapper(wrappers.VmapWrapper(ToyEnv(), 2), episode_length=3)
    s = env.reset(jax.random.PRNGKey(0))
    actions = jnp.array([[2.0], [0.1]])  # env 0 reaches the goal at step 2; env 1 never does
    for _ in range(3):
        s = jax.jit(env.step)(s, actions)
    np.testing.assert_array_equal(s.done, [1.0, 1.0])
    np.testing.assert_array_equal(s.info["terminated"], [1.0, 0.0])
    np.testing.assert_array_equal(s.info["truncated"], [0.0, 1.0])  # by the wrapper's shorter limit
    np.testing.assert_array_equal(s.info["episode_length"], [2, 3])  # env 0 stopped counting when done
    np.testing.assert_allclose(s.info["episode_return"], [1.0, 0.0])


def test_auto_reset_from_pool():
    env = wrappers.wrap_for_training(ToyEnv(), batch_size=3, pool_size=2)
    s = env.reset(jax.random.PRNGKey(1))
    pool_x = np.asarray(s.info["pool"].data["x"])  # [B, K]
    assert pool_x.shape == (3, 2)
    step = jax.jit(env.step)
    actions = jnp.array([[2.5], [0.0], [2.5]])  # envs 0 and 2 succeed at step 2, env 1 truncates at step 6
    s = step(s, actions)
    assert not np.any(s.done)
    s = step(s, actions)
    np.testing.assert_array_equal(s.done, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(s.metrics["success"], [1.0, 0.0, 1.0])  # the terminal step's metrics
    np.testing.assert_array_equal(s.info["terminated"], [1.0, 0.0, 1.0])
    # Restarted envs hold their first pool entry: step counter, episode bookkeeping and data reset.
    np.testing.assert_allclose(s.data["x"][np.array([0, 2])], pool_x[[0, 2], 0])
    np.testing.assert_array_equal(s.info["step"], [0, 2, 0])
    np.testing.assert_array_equal(s.info["episode_length"], [0, 2, 0])
    np.testing.assert_array_equal(s.info["pool_next"], [1, 0, 1])
    np.testing.assert_allclose(s.obs["state"][:, 0], s.data["x"])
    # They keep stepping (not frozen) and the next restart takes the second pool entry.
    s = step(s, actions)
    assert not np.any(s.done)
    np.testing.assert_allclose(s.data["x"][np.array([0, 2])], pool_x[[0, 2], 0] + 2.5)
    s = step(s, actions)
    np.testing.assert_allclose(s.data["x"][np.array([0, 2])], pool_x[[0, 2], 1])
    for _ in range(2):
        s = step(s, actions)
    assert s.done[1] == 1.0 and s.info["truncated"][1] == 1.0 and s.info["terminated"][1] == 0.0
    assert s.info["step"][1] == 0  # restarted
    # A new wave: a fresh pool.
    s2 = jax.jit(env.refresh_pool)(s, jax.random.PRNGKey(2))
    assert not np.allclose(np.asarray(s2.info["pool"].data["x"]), pool_x)
    np.testing.assert_array_equal(s2.data["x"], s.data["x"])
