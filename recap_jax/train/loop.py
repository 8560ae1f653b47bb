"""The host training loop: steps, logging, fail-fast on non-finite values, checkpoints, resume.

The Python loop only feeds batches, logs and saves; the step itself is the jitted pure ``train_step``.
Metrics stay on device for a logging interval and come back in one transfer.

    state, shardings, loader_pos = init_or_restore(init_fn, mesh, key, checkpointer)
    loader.load_state_dict(loader_pos) if loader_pos else None
    step_fn = jit_train_step(make_train_step(loss_fn, tx), shardings, mesh)
    state, history = train(state, step_fn, loader, LoopConfig(num_steps=...), checkpointer=..., writer=...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.sharding import Mesh

from recap_jax.train.checkpoints import Checkpointer
from recap_jax.train.metrics import Accumulator, MetricWriter, ProgressBar, first_nonfinite, mean_metrics
from recap_jax.train.sharding import DEFAULT_MIN_SIZE_BYTES, abstract_with_shardings, state_shardings
from recap_jax.train.state import TrainState


class NonFiniteError(FloatingPointError):
    """The loss or the gradient norm became non-finite (the message names the step)."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Host loop settings.

    Attributes:
      num_steps: train until ``state.step == num_steps`` (a resumed run continues to the same end).
      log_every: steps per logging interval (one device->host transfer each).
      save_every: checkpoint interval in steps (0 = only at the end); needs a ``Checkpointer``.
      progress: show a tqdm bar (process 0).
    """

    num_steps: int
    log_every: int = 50
    save_every: int = 1000
    progress: bool = True


def init_or_restore(
    init_fn: Callable[[jax.Array], TrainState],
    mesh: Mesh,
    key: jax.Array,
    checkpointer: Checkpointer | None = None,
    *,
    min_size_bytes: int = DEFAULT_MIN_SIZE_BYTES,
) -> tuple[TrainState, Any, dict]:
    """The sharded train state: restored from the checkpointer's latest step when there is one, else
    initialised in place (``eval_shape`` -> shardings -> jitted ``init_fn(key)``).

    Returns: (state, state shardings, loader position dict — empty for a fresh run).
    """
    abstract = jax.eval_shape(init_fn, key)
    shardings = state_shardings(abstract, mesh, min_size_bytes)
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state, position = checkpointer.restore(abstract_with_shardings(abstract, shardings))
        return state, shardings, position
    state = jax.jit(init_fn, out_shardings=shardings)(key)
    return state, shardings, {}


def _raise_nonfinite(step: int, metrics: dict | None) -> None:
    detail = ""
    if metrics is not None:
        detail = f" (loss={metrics.get('loss')}, grad_norm={metrics.get('grad_norm')})"
    raise NonFiniteError(
        f"non-finite loss or gradient norm at step {step}{detail} (the update applied to a state at that step, "
        "0-based); that update was skipped and training stopped"
    )


def train(
    state: TrainState,
    step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]],
    batches: Iterator[dict],
    config: LoopConfig,
    *,
    checkpointer: Checkpointer | None = None,
    writer: MetricWriter | None = None,
    assets: dict | None = None,
    eval_fn: Callable[[TrainState], dict] | None = None,
    callbacks: tuple[Callable[[int, dict], None], ...] = (),
) -> tuple[TrainState, list[dict]]:
    """Runs ``step_fn`` until ``state.step == config.num_steps``.

    Args:
      state: the (possibly restored) train state.
      step_fn: jitted ``train_step``.
      batches: iterator of device batches; if it has ``state_dict()`` (``WindowLoader``) its position is
        checkpointed with the state.
      checkpointer: saves every ``save_every`` steps and at the end (metrics for the best-checkpoint
        choice: ``eval_fn(state)`` when given, else the last interval's means).
      writer: receives the interval means (process 0).
      eval_fn: host function ``state -> {name: float}`` run at each save.
      callbacks: ``f(step, interval_means)`` after each logging interval (e.g. custom loggers).

    Returns: (final state, one dict of interval means per logging interval, with "step").
    Raises ``NonFiniteError`` naming the first step whose loss or gradient norm was not finite.
    """
    start = int(jax.device_get(state.step))
    if start > config.num_steps:
        raise ValueError(f"state is at step {start}, past num_steps={config.num_steps}")
    acc = Accumulator()
    history: list[dict] = []
    last_means: dict = {}
    bar = ProgressBar(config.num_steps, start, enabled=None if config.progress else False)
    try:
        for step in range(start, config.num_steps):
            state, metrics = step_fn(state, next(batches))
            acc.add(step, metrics)
            done = step + 1
            last = done == config.num_steps
            if done % config.log_every == 0 or last:
                rows, nonfinite = acc.pop(state.nonfinite_step)
                bad = first_nonfinite(rows)
                if bad is not None or int(nonfinite) >= 0:
                    _raise_nonfinite(*(bad if bad is not None else (int(nonfinite), None)))
                last_means = mean_metrics(rows)
                history.append({"step": done} | last_means)
                if writer is not None:
                    writer.write(done, last_means)
                for cb in callbacks:
                    cb(done, last_means)
                bar.update(len(rows), last_means)
            if checkpointer is not None and ((config.save_every and done % config.save_every == 0) or last):
                nonfinite = int(jax.device_get(state.nonfinite_step))
                if nonfinite >= 0:
                    _raise_nonfinite(nonfinite, None)
                save_metrics = eval_fn(state) if eval_fn is not None else dict(last_means)
                position = batches.state_dict() if hasattr(batches, "state_dict") else None
                checkpointer.save(state, loader_state=position, assets=assets, metrics=save_metrics)
    finally:
        bar.close()
        if writer is not None:
            writer.flush()
    if checkpointer is not None:
        checkpointer.wait()
    return state, history
