"""The wrapper stack (Vmap -> Episode -> AutoReset) on a tiny pure-JAX env with G1BendPick's State contract.

The wrappers only see the State pytree, so a toy env exercises all their logic in milliseconds; the toy
follows the real env's conventions (done envs are frozen, ``info["step"/"truncated"/"terminated"]``). One test
runs the auto-reset on the real G1 env (2 envs; two MJX programs to compile, persistent-cached).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
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


def test_auto_reset_on_the_g1_env():
    """The real env under the full stack (2 envs, 3-step episodes, camera off): a done env restarts from its
    pre-stabilised pool state, the other env's step is untouched. One reset and one step program to compile;
    20 stabilisation steps instead of 60 (the reset's stand loop is most of the run time once compiled)."""
    g1 = envs.make("G1BendPick-v0", stabilize_steps=20)
    env = wrappers.wrap_for_training(g1, batch_size=2, episode_length=3, pool_size=1)
    s0 = jax.jit(env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    pool = s0.info["pool"]  # leaves [B=2, K=1, ...]: stabilised resets (standing, step counter 0)
    np.testing.assert_array_equal(pool.info["step"], [[0], [0]])
    assert (np.asarray(pool.data.qpos[:, 0, 2]) > 0.6).all()  # pelvis up: standing after stabilisation
    assert not np.allclose(pool.data.qpos[0, 0], s0.data.qpos[0])  # the pool is not the current episode
    actions = jnp.tile(env.unwrapped.default_action[None], (2, 1))

    # Env 0 ends (non-finite physics -> terminated) on the first step; env 1 keeps going.
    poisoned = s0.replace(data=s0.data.replace(qvel=s0.data.qvel.at[0, 3].set(jnp.nan)))
    s1, clean = step(poisoned, actions), step(s0, actions)
    np.testing.assert_array_equal(s1.done, [1.0, 0.0])
    np.testing.assert_array_equal(s1.info["terminated"], [1.0, 0.0])
    np.testing.assert_array_equal(s1.metrics["nan"], [1.0, 0.0])  # the terminal step's metrics
    for leaf_new, leaf_pool in zip(jax.tree.leaves((s1.data, s1.obs)), jax.tree.leaves((pool.data, pool.obs))):
        np.testing.assert_array_equal(np.asarray(leaf_new)[0], np.asarray(leaf_pool)[0, 0])  # env 0 = its pool entry
    np.testing.assert_array_equal(s1.info["step"], [0, 1])
    np.testing.assert_array_equal(s1.info["episode_length"], [0, 1])
    np.testing.assert_array_equal(s1.info["pool_next"], [1, 0])
    for leaf_new, leaf_clean in zip(jax.tree.leaves((s1.data, s1.obs)), jax.tree.leaves((clean.data, clean.obs))):
        np.testing.assert_array_equal(np.asarray(leaf_new)[1], np.asarray(leaf_clean)[1])  # env 1 untouched
    assert not np.allclose(s1.data.qvel[1], s0.data.qvel[1])  # ... and it really stepped

    # Two more steps: env 1 truncates at the wrapper's 3-step limit and restarts; env 0 keeps stepping.
    s2 = step(s1, actions)
    s3 = step(s2, actions)
    np.testing.assert_array_equal(s3.done, [0.0, 1.0])
    np.testing.assert_array_equal(s3.info["truncated"], [0.0, 1.0])
    np.testing.assert_array_equal(s3.info["step"], [2, 0])
    np.testing.assert_array_equal(s3.info["pool_next"], [1, 1])
    np.testing.assert_array_equal(s3.data.qpos[1], pool.data.qpos[1, 0])
    assert not np.array_equal(s3.data.qpos[0], s2.data.qpos[0])  # restarted env 0 is not frozen
    assert np.isfinite(np.asarray(s3.data.qvel)).all()
