"""The pure training step, built once from any ``loss_fn(params, batch, key) -> (loss, metrics)``.

``make_train_step`` returns ``train_step(state, batch) -> (state, metrics)``; wrap it with
``sharding.jit_train_step`` (jit + NamedSharding + donation). Per step:

1. ``key = fold_in(state.rng, state.step)``;
2. the trainable leaves (float32 master copies) are optionally cast to ``compute_dtype`` (bf16) inside
   the differentiated function, so the gradients come back in float32;
3. gradient of the loss w.r.t. the trainable leaves only (frozen leaves, integer leaves and PRNG keys
   pass through untouched), optionally averaged over strided microbatches by a ``lax.scan``
   (``grad_accum_steps``);
4. if the loss or the gradient norm is non-finite the update is skipped and ``state.nonfinite_step``
   records the step (the host loop then raises naming it); else the optax update is applied;
5. optional EMA of the trainable leaves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from recap_jax.train.state import TrainState, combine, partition, step_key

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def loss_and_grad(
    loss_fn: LossFn, compute_dtype: Any, trainable: Any, rest: Any, batch: dict, key: jax.Array
) -> tuple[tuple[jax.Array, dict], Any]:
    """((loss f32 [], metrics), grads w.r.t. ``trainable``) with the forward pass in ``compute_dtype``."""

    def objective(train_leaves):
        if compute_dtype is not None:
            train_leaves = _cast_floats(train_leaves, compute_dtype)
        loss, aux = loss_fn(combine(train_leaves, rest), batch, key)
        return loss.astype(jnp.float32), aux

    return jax.value_and_grad(objective, has_aux=True)(trainable)


def split_microbatches(batch: dict, n: int) -> dict:
    """[B, ...] -> [n, B/n, ...] with microbatch i = rows i, i+n, i+2n, ... (strided, so that each
    microbatch keeps rows on every device of a batch sharded on its leading axis)."""
    b = jax.tree.leaves(batch)[0].shape[0]
    if b % n:
        raise ValueError(f"batch size {b} is not divisible by grad_accum_steps={n}")
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(b // n, n, *x.shape[1:]), 0, 1), batch)


def _accum_body(loss_fn, compute_dtype, trainable, rest, key, carry, xs):
    """One microbatch of ``lax.scan``: adds its loss, metrics and gradients to the running sums."""
    index, micro = xs
    (loss, aux), grads = loss_and_grad(loss_fn, compute_dtype, trainable, rest, micro, jax.random.fold_in(key, index))
    loss_sum, aux_sum, grad_sum = carry
    aux_sum = jax.tree.map(lambda a, b: a + jnp.asarray(b, jnp.float32), aux_sum, aux)
    return (loss_sum + loss, aux_sum, jax.tree.map(jnp.add, grad_sum, grads)), None


def accumulated_loss_and_grad(
    loss_fn: LossFn, compute_dtype: Any, trainable: Any, rest: Any, batch: dict, key: jax.Array, n: int
) -> tuple[tuple[jax.Array, dict], Any]:
    """Mean loss, metrics and gradients over ``n`` microbatches, computed by a ``lax.scan`` (one
    microbatch's activations live at a time). Microbatch i uses the key ``fold_in(key, i)``."""
    micro = split_microbatches(batch, n)
    first = jax.tree.map(lambda x: x[0], micro)
    (_, aux_shape), grad_shape = jax.eval_shape(
        lambda: loss_and_grad(loss_fn, compute_dtype, trainable, rest, first, key)
    )
    zeros = (
        jnp.zeros((), jnp.float32),
        jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), aux_shape),
        jax.tree.map(lambda g: jnp.zeros(g.shape, g.dtype), grad_shape),
    )
    body = functools.partial(_accum_body, loss_fn, compute_dtype, trainable, rest, key)
    (loss, aux, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(n), micro))
    scale = 1.0 / n
    return (loss * scale, jax.tree.map(lambda a: a * scale, aux)), jax.tree.map(lambda g: g * scale, grads)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    lr_schedule: optax.Schedule | None = None,
    compute_dtype: Any = None,
    cast_batch_keys: Sequence[str] = ("state",),
    ema_decay: float | None = None,
    grad_accum_steps: int = 1,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds the pure ``train_step(state, batch) -> (state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss float32 [], metrics dict of scalars)``.
      tx: the optax transformation that built ``state.opt_state`` (``make_optimizer``).
      lr_schedule: when given, ``metrics["lr"]`` reports the learning rate of the step.
      compute_dtype: e.g. ``jnp.bfloat16``: trainable leaves and the floating batch entries named in
        ``cast_batch_keys`` are cast before the forward pass (master params stay float32).
      ema_decay: EMA decay per step; requires a state created with ``ema=True``.
      grad_accum_steps: split the batch into this many strided microbatches and average their
        gradients (a ``lax.scan``; one optimizer update per step). With n > 1 microbatch i draws its
        randomness from ``fold_in(step_key, i)``.

    Returns:
      ``train_step``; its metrics are float32 [] scalars: ``loss``, ``grad_norm``, ``param_norm``,
      ``update_norm``, ``finite`` (1.0 when the update was applied), ``lr`` if a schedule is given, and
      every entry of the loss metrics (a ``"loss"`` entry there is ignored; other clashes raise).
    """
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        mask = state.mask
        trainable, rest = partition(state.params, mask)
        key = step_key(state)
        if compute_dtype is not None:
            batch = {k: (_cast_floats(v, compute_dtype) if k in cast_batch_keys else v) for k, v in batch.items()}
        if grad_accum_steps == 1:
            (loss, aux), grads = loss_and_grad(loss_fn, compute_dtype, trainable, rest, batch, key)
        else:
            (loss, aux), grads = accumulated_loss_and_grad(
                loss_fn, compute_dtype, trainable, rest, batch, key, grad_accum_steps
            )
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state.opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        # Skip the whole update (params and optimizer moments) on a non-finite step.
        new_trainable, new_opt = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), (new_trainable, new_opt), (trainable, state.opt_state)
        )
        ema = state.ema_params
        if ema is not None:
            if ema_decay is None:
                raise ValueError("the state has ema_params but make_train_step got no ema_decay")
            ema = jax.tree.map(lambda e, p: e * ema_decay + p * (1.0 - ema_decay), ema, new_trainable)
        elif ema_decay is not None:
            raise ValueError("ema_decay given but the state was created without ema=True")
        nonfinite_step = jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step).astype(
            jnp.int32
        )
        new_state = state.replace(
            params=combine(new_trainable, rest),
            opt_state=new_opt,
            step=state.step + 1,
            ema_params=ema,
            nonfinite_step=nonfinite_step,
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "param_norm": optax.tree.norm(new_trainable),
            "update_norm": optax.tree.norm(updates),
            "finite": finite.astype(jnp.float32),
        }
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        for k, v in aux.items():
            if k == "loss":  # the loss function's own copy of the loss
                continue
            if k in metrics:
                raise ValueError(f"loss metric {k!r} clashes with a train_step metric")
            metrics[k] = jnp.asarray(v, jnp.float32)
        return new_state, metrics

    return train_step


def make_eval_step(loss_fn: LossFn) -> Callable[[TrainState, dict], dict]:
    """``eval_step(state, batch) -> metrics`` with the inference params and a fixed key (step-folded)."""

    def eval_step(state: TrainState, batch: dict) -> dict:
        loss, aux = loss_fn(state.inference_params, batch, step_key(state))
        return {"loss": jnp.asarray(loss, jnp.float32)} | {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}

    return eval_step
