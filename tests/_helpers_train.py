"""Shared fixtures for the training, data and checkpoint tests: synthetic episodes and tiny models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from recap_jax.data.store import ACTION_DIM, STATE_DIM, Episode

PROMPT = "bend to pick up the cracker box"


def make_episode(
    episode_id: int,
    n_steps: int = 50,
    stride: int = 8,
    image_hw=(8, 12),
    kind: str = "rollout",
    seed: int | None = None,
) -> Episode:
    """A synthetic episode whose states/actions encode (episode_id, step) so windows can be checked."""
    rng = np.random.default_rng(episode_id if seed is None else seed)
    t = np.arange(n_steps, dtype=np.float32)
    states = rng.normal(size=(n_steps, STATE_DIM)).astype(np.float32)
    states[:, 0] = episode_id
    states[:, 1] = t
    actions = rng.normal(size=(n_steps, ACTION_DIM)).astype(np.float32)
    actions[:, 0] = episode_id
    actions[:, 1] = t
    image_steps = np.arange(0, n_steps, stride, dtype=np.int32)
    images = rng.integers(0, 256, size=(image_steps.size, *image_hw, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = image_steps % 256
    return Episode(
        episode_id=episode_id,
        states=states,
        actions=actions,
        image_steps=image_steps,
        images=images,
        prompt=PROMPT,
        success=bool(episode_id % 2),
        n_steps=n_steps,
        tags={"kind": kind, "policy": "test", "iteration": 0, "seed": episode_id},
    )


class TinyMLP(nnx.Module):
    """state [B, 32] (+ mean image) -> [B, out]."""

    def __init__(self, out: int, hidden: int = 64, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(STATE_DIM + 1, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.l3 = nnx.Linear(hidden, out, rngs=rngs)

    def __call__(self, state, image):
        img = jnp.mean(image.astype(state.dtype), axis=(1, 2, 3))[:, None] / 255.0
        h = jax.nn.gelu(self.l1(jnp.concatenate([state, img], axis=-1)))
        h = jax.nn.gelu(self.l2(h))
        return self.l3(h)


@struct.dataclass
class TinyParams:
    """A policy-like params pytree: NNX graphdef (static) + state + frozen norm stats."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    state: nnx.State
    norm_stats: dict


def init_tiny(key: jax.Array, out: int, hidden: int = 64) -> TinyParams:
    model = TinyMLP(out, hidden, rngs=nnx.Rngs(params=key))
    graphdef, state = nnx.split(model)
    stats = {"state_min": -jnp.ones(STATE_DIM), "state_max": jnp.ones(STATE_DIM)}
    return TinyParams(graphdef, state, stats)


def tiny_policy_loss(params: TinyParams, batch: dict, key: jax.Array):
    """A flow-matching-style loss: predict eps - x for the first action from the noised action."""
    model = nnx.merge(params.graphdef, params.state)
    lo, hi = params.norm_stats["state_min"], params.norm_stats["state_max"]
    state = (batch["state"] - lo) / (hi - lo) * 2 - 1
    x = batch["actions"][:, 0, :]
    k1, k2 = jax.random.split(key)
    eps = jax.random.normal(k1, x.shape, x.dtype)
    sigma = jax.random.uniform(k2, (x.shape[0], 1), x.dtype)
    pred = model(state, batch["image"])
    target = eps - x
    err = (pred - target * (1 - sigma)) ** 2
    w = batch["action_mask"][:, :1].astype(err.dtype)
    loss = jnp.sum(jnp.mean(err, -1, keepdims=True) * w) / jnp.maximum(jnp.sum(w), 1.0)
    return loss.astype(jnp.float32), {"mse": loss}


NUM_BINS = 201


def tiny_value_loss(params: TinyParams, batch: dict, key: jax.Array):
    """201-bin cross-entropy on the (clipped) return in [-1, 0]."""
    del key
    from recap_jax import value

    model = nnx.merge(params.graphdef, params.state)
    logits = model(batch["state"], batch["image"]).astype(jnp.float32)
    loss = jnp.mean(value.categorical_loss(logits, batch["return"]))
    return loss, {"ce": loss}
