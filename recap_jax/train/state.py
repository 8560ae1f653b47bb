"""The train state pytree, the optimizers, and which parameter leaves are trained.

``params`` may be any pytree (a flax struct dataclass holding an NNX graphdef as a static field and an
``nnx.State``, a dict, ...). Its *trainable* leaves are the floating-point arrays whose path does not
pass through a frozen key (``norm_stats`` by default: normalisation statistics are frozen at SFT time).
Everything else (integer leaves, PRNG keys, frozen subtrees) is carried along unchanged. The optimizer
state is built over the trainable leaves only; frozen positions hold ``None``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any
DEFAULT_FROZEN = ("norm_stats",)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer settings. ``kind="adamw"`` defaults are Ψ0's task fine-tuning recipe.

    Attributes:
      kind: "adamw" (AdamW, warm-up + cosine decay to ``end_lr_ratio * lr``) or "adam" (plain Adam,
        constant lr after the warm-up; the value function uses lr 3e-4).
      lr: peak learning rate.
      b1, b2, eps: Adam moments.
      weight_decay: decoupled weight decay (AdamW only), applied to trainable leaves of rank >= 2.
      warmup_steps: linear warm-up from 0 to ``lr``.
      total_steps: schedule length (cosine decay ends here); required for "adamw".
      end_lr_ratio: final lr as a fraction of ``lr`` (Ψ0: 0).
      clip_norm: global-norm gradient clipping threshold (None = off).
    """

    kind: str = "adamw"
    lr: float = 1e-4
    b1: float = 0.95
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-6
    warmup_steps: int = 1000
    total_steps: int = 40_000
    end_lr_ratio: float = 0.0
    clip_norm: float | None = 1.0

    @staticmethod
    def psi0(total_steps: int = 40_000, **overrides) -> OptimizerConfig:
        """Ψ0 fine-tuning: AdamW lr 1e-4, betas (0.95, 0.999), wd 1e-6, 1000 warm-up, cosine to 0, clip 1."""
        return OptimizerConfig(total_steps=total_steps, **overrides)

    @staticmethod
    def value(**overrides) -> OptimizerConfig:
        """Value function: plain Adam lr 3e-4 (betas 0.9/0.999), short warm-up, clip 1."""
        defaults = dict(kind="adam", lr=3e-4, b1=0.9, b2=0.999, weight_decay=0.0, warmup_steps=100)
        return OptimizerConfig(**(defaults | overrides))


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Learning rate as a function of the step (int32 [] -> float32 [])."""
    warmup = max(int(cfg.warmup_steps), 0)
    if cfg.kind == "adam":
        if warmup == 0:
            return optax.constant_schedule(cfg.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup]
        )
    if cfg.total_steps <= warmup:
        raise ValueError(f"total_steps ({cfg.total_steps}) must exceed warmup_steps ({warmup}) for a cosine schedule")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=cfg.total_steps,
        end_value=cfg.lr * cfg.end_lr_ratio,
    )


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Builds the optax chain: global-norm clipping, then Adam/AdamW with the schedule.

    Raises ``ValueError`` for an unknown ``kind`` or inconsistent settings.
    """
    if cfg.kind not in ("adamw", "adam"):
        raise ValueError(f"unknown optimizer kind {cfg.kind!r}; expected 'adamw' or 'adam'")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}")
    schedule = learning_rate_schedule(cfg)
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.kind == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
            )
        )
    else:
        parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    return optax.chain(*parts)


# ------------------------------------------------------------------ trainable leaves


def _path_names(path) -> list[str]:
    names = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
    return names


def trainable_mask(params: PyTree, frozen: Sequence[str] = DEFAULT_FROZEN) -> PyTree:
    """Bool pytree (same structure as ``params``): True on floating-point array leaves whose path
    contains none of the ``frozen`` names."""
    frozen = set(frozen)

    def is_trainable(path, x) -> bool:
        dtype = getattr(x, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            return False
        return not frozen.intersection(_path_names(path))

    return jax.tree_util.tree_map_with_path(is_trainable, params)


def partition(tree: PyTree, mask: PyTree) -> tuple[PyTree, PyTree]:
    """Splits ``tree`` into (selected, rest) by a bool ``mask``; unselected positions hold None."""
    sel = jax.tree.map(lambda x, m: x if m else None, tree, mask)
    rest = jax.tree.map(lambda x, m: None if m else x, tree, mask)
    return sel, rest


def combine(selected: PyTree, rest: PyTree) -> PyTree:
    """Inverse of ``partition``."""
    return jax.tree.map(lambda a, b: b if a is None else a, selected, rest, is_leaf=lambda x: x is None)


# ------------------------------------------------------------------ the train state


@struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly (a pytree; checkpointed whole).

    Attributes:
      params: the model parameters (float32 master copy of the trainable leaves).
      opt_state: optax state over the trainable leaves.
      step: int32 [], number of updates applied.
      rng: uint32 [2], the run's base key; the step key is ``fold_in(rng, step)``.
      ema_params: EMA of the trainable leaves (frozen positions None), or None when EMA is off.
      nonfinite_step: int32 [], the first step whose loss or gradient norm was non-finite (-1 = none);
        that step's update is skipped and the host loop raises naming it.
      mask: static bool pytree of trainable leaves (hashable tuple of leaves + treedef).
    """

    params: PyTree
    opt_state: PyTree
    step: jax.Array
    rng: jax.Array
    ema_params: PyTree | None
    nonfinite_step: jax.Array
    mask_leaves: tuple = struct.field(pytree_node=False, default=())

    @property
    def mask(self) -> PyTree:
        return jax.tree.unflatten(jax.tree.structure(self.params), self.mask_leaves)

    @property
    def inference_params(self) -> PyTree:
        """EMA params merged with the frozen leaves when EMA is on, else ``params``."""
        if self.ema_params is None:
            return self.params
        _, rest = partition(self.params, self.mask)
        return combine(self.ema_params, rest)

    @classmethod
    def create(
        cls,
        params: PyTree,
        tx: optax.GradientTransformation,
        rng: jax.Array,
        *,
        ema: bool = False,
        frozen: Sequence[str] = DEFAULT_FROZEN,
        mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    ) -> TrainState:
        """A fresh state at step 0.

        Args:
          params: parameter pytree (trainable leaves are cast to float32 master copies).
          tx: from ``make_optimizer``.
          rng: a raw uint32 [2] key (``jax.random.PRNGKey``) or a typed key (converted to raw data).
          ema: keep an exponential moving average of the trainable leaves.
          frozen: path names whose leaves are never trained.
          mask: optional bool pytree (or a function ``params -> bool pytree``, e.g.
            ``recap_jax.policy.trainable_mask``) further restricting the trained leaves; it is
            intersected with the floating/frozen rule above.
        """
        base = trainable_mask(params, frozen)
        if mask is not None:
            extra = mask(params) if callable(mask) else mask
            base = jax.tree.map(lambda a, b: bool(a) and bool(b), base, extra)
        mask = base
        params = jax.tree.map(lambda x, m: x.astype(jnp.float32) if m else x, params, mask)
        trainable, _ = partition(params, mask)
        if jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        return cls(
            params=params,
            opt_state=tx.init(trainable),
            step=jnp.zeros((), jnp.int32),
            rng=jnp.asarray(rng, jnp.uint32),
            ema_params=jax.tree.map(jnp.copy, trainable) if ema else None,
            nonfinite_step=jnp.full((), -1, jnp.int32),
            mask_leaves=tuple(bool(m) for m in jax.tree.leaves(mask)),
        )


def count_params(params: PyTree, mask: PyTree | None = None) -> int:
    """Number of scalars in the (trainable, when ``mask`` is given) array leaves."""
    if mask is not None:
        params, _ = partition(params, mask)
    return int(sum(x.size for x in jax.tree.leaves(params)))


def step_key(state: TrainState) -> jax.Array:
    """The per-step key: ``fold_in(rng, step)`` (uint32 [2])."""
    return jax.random.fold_in(state.rng, state.step)
