"""The label stage: returns, V̂, advantages and int8 advantage labels for every stored decision point.

Paper (RECAP-Ψ §3.7, the defaults): r_i from Eq. (1) at each decision point (imaged step), A_i = r_i − V̂(o_i),
η = the global 70th percentile of A over all rollout decision points, label 1 (high) iff A_i ≥ η.

π*0.6 variants (``LabelConfig``):

* ``returns="steps"``: returns are Monte-Carlo sums of the per-control-step rewards (−1 per step, 0 at a
  successful end, −C_fail at a failed end, normalised to [−1, 0]) read at the imaged steps.
* ``n_step=n``: A_i = Σ_{k=i}^{i+n−1} r_k + V̂(o_{i+n}) − V̂(o_i) with n counted in decision points and
  r_k the reward collected between decision points k and k + 1 (``returns.returns_to_rewards``).
* ``per_iteration=True`` / ``iteration_fractions``: a separate threshold (and positive fraction) for the
  episodes of each RECAP iteration (``tags["iteration"]``).
* ``force_demo_positive``: demo episodes (``tags["kind"] == "demo"``) are always labelled high and do not
  enter the percentile.
* cross-fitting: the caller passes V̂ from models that did not train on each episode
  (``value_training.cross_fit_values``); this module only consumes ``{episode_id: V̂}``.

Everything here runs on the host between stages; the per-episode math is batched over padded rows
([E, Q_max] with a validity mask) and uses ``recap_jax.returns`` / ``recap_jax.advantage``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from recap_jax import advantage as adv_math
from recap_jax import returns as ret_math

RETURN_KINDS = ("eq1", "steps")
ANNOTATIONS = ("value", "return", "advantage", "label")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Options of the label stage (defaults: the paper's Eq. (1)–(3)).

    Attributes:
      positive_fraction: share f of decision points labelled high (global top f).
      returns: "eq1" (Eq. (1), time to completion) or "steps" (π*0.6 step rewards with ``c_fail``).
      c_fail: failure penalty C_fail ≥ 0 for ``returns="steps"``.
      max_steps: the T of the returns' normaliser T − 1 (Eq. (1): 600, so 599, whatever the episode limit;
        the study sets it from ``ValueSettings.return_horizon`` for both stages, ``experiments.glue``).
      n_step: None for A = r − V̂ (the paper); n ≥ 1 for N-step advantages over n decision points.
      per_iteration: one threshold per ``tags["iteration"]`` instead of one global threshold.
      iteration_fractions: ((iteration, f), ...) overriding ``positive_fraction`` for those iterations
        (implies per-iteration thresholds).
      force_demo_positive: demo episodes get label 1 and are left out of the percentile.
    """

    positive_fraction: float = 0.3
    returns: str = "eq1"
    c_fail: float = 0.0
    max_steps: int = ret_math.MAX_STEPS
    n_step: int | None = None
    per_iteration: bool = False
    iteration_fractions: tuple[tuple[int, float], ...] = ()
    force_demo_positive: bool = True

    def __post_init__(self):
        if self.returns not in RETURN_KINDS:
            raise ValueError(f"returns must be one of {RETURN_KINDS}, got {self.returns!r}")
        for f in (self.positive_fraction, *(f for _, f in self.iteration_fractions)):
            if not 0.0 < f < 1.0:
                raise ValueError(f"positive fractions must lie in (0, 1), got {f}")
        if self.c_fail < 0:
            raise ValueError(f"c_fail must be >= 0, got {self.c_fail}")
        if self.n_step is not None and self.n_step < 1:
            raise ValueError(f"n_step must be None or >= 1, got {self.n_step}")
        if self.max_steps < 2:
            raise ValueError(f"max_steps must be >= 2, got {self.max_steps}")


@dataclasses.dataclass(frozen=True)
class EpisodeMeta:
    """What labelling needs of one episode (no images): id, imaged steps int [Q], n_steps, success, tags."""

    episode_id: int
    image_steps: np.ndarray
    n_steps: int
    success: bool
    tags: dict[str, Any]

    @classmethod
    def of(cls, episode) -> EpisodeMeta:
        return cls(
            int(episode.episode_id),
            np.asarray(episode.image_steps, np.int32),
            int(episode.n_steps),
            bool(episode.success),
            dict(episode.tags),
        )


def _pad(rows: list[np.ndarray], width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(rows), width), dtype)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask


def batch_returns(
    image_steps: np.ndarray,
    mask: np.ndarray,
    n_steps: np.ndarray,
    success: np.ndarray,
    *,
    kind: str = "eq1",
    max_steps: int = ret_math.MAX_STEPS,
    c_fail: float = 0.0,
) -> np.ndarray:
    """Returns at every decision point of a batch of episodes.

    Args:
      image_steps: int [E, Q] control-step index of each decision point (padded).
      mask: bool [E, Q] valid prefix.
      n_steps: int [E] episode lengths (1 ≤ n ≤ max_steps).
      success: bool [E].
      kind: "eq1" (Eq. (1), uniform spacing over the Q_e valid points) or "steps" (π*0.6 MC return of the
        normalised step rewards, read at ``image_steps``).

    Returns: float32 [E, Q] in [−1, 0]; 0 where ``mask`` is False.
    """
    if kind not in RETURN_KINDS:
        raise ValueError(f"kind must be one of {RETURN_KINDS}, got {kind!r}")
    n_steps = np.asarray(n_steps, np.int32)
    if np.any(n_steps < 1) or np.any(n_steps > max_steps):
        raise ValueError(f"n_steps must lie in [1, max_steps={max_steps}], got {n_steps.min()}..{n_steps.max()}")
    q = mask.sum(axis=1).astype(np.int32)
    if np.any(q < 1):
        raise ValueError("every episode needs at least one decision point")
    width = mask.shape[1]
    if kind == "eq1":
        fn = lambda qi, n, s: ret_math.time_to_completion_returns(qi, n, s, max_steps, max_queries=width)[0]
        out = jax.vmap(fn)(q, n_steps, np.asarray(success, bool))
    else:
        rew, m = jax.vmap(lambda n, s: ret_math.step_rewards(n, s, c_fail, max_steps))(n_steps, np.asarray(success))
        g = ret_math.monte_carlo_returns(rew, m)
        out = np.take_along_axis(np.asarray(g), np.clip(image_steps, 0, max_steps - 1), axis=1)
    # Float32 summation can step a hair outside [-1, 0]; the value targets live on that support.
    return np.where(mask, np.clip(np.asarray(out, np.float32), -1.0, 0.0), 0.0).astype(np.float32)


def return_range(kind: str = "eq1", *, max_steps: int = ret_math.MAX_STEPS, c_fail: float = 0.0, episode_limit=None):
    """(v_min, v_max): the range of the returns ``batch_returns`` can produce for episodes of at most
    ``episode_limit`` control steps (default ``max_steps``), the support of the value function's bins.

    "eq1": failures are −1 whatever the limit, so (−1, 0). "steps": the worst return is a failure at the
    limit L, −(L − 1 + C_fail)/(max_steps − 1 + C_fail), which is above −1 when L < max_steps.
    """
    if kind not in RETURN_KINDS:
        raise ValueError(f"kind must be one of {RETURN_KINDS}, got {kind!r}")
    limit = max_steps if episode_limit is None else int(episode_limit)
    if not 1 <= limit <= max_steps:
        raise ValueError(f"episode_limit must lie in [1, max_steps={max_steps}], got {episode_limit}")
    if kind == "eq1":
        return -1.0, 0.0
    worst = -((limit - 1) + c_fail) / ((max_steps - 1) + c_fail)
    return (float(worst), 0.0) if worst < 0 else (-1.0, 0.0)


def batch_advantages(returns: np.ndarray, values: np.ndarray, mask: np.ndarray, n_step: int | None) -> np.ndarray:
    """A float32 [E, Q]: r − V̂ (``n_step`` None) or N-step advantages over decision points; 0 where masked."""
    if n_step is None:
        a = adv_math.advantages(np.where(mask, returns, 0.0), np.where(mask, values, 0.0))
    else:
        rewards = ret_math.returns_to_rewards(returns, mask)
        a = ret_math.n_step_advantages(rewards, np.where(mask, values, 0.0), n_step, mask=mask)
    return np.where(mask, np.asarray(a, np.float32), 0.0).astype(np.float32)


def threshold_labels(
    adv: np.ndarray,
    mask: np.ndarray,
    groups: np.ndarray,
    forced: np.ndarray,
    fractions: Mapping[int, float],
    default_fraction: float,
) -> tuple[np.ndarray, dict[int, float]]:
    """Labels int8 [E, Q] with one percentile threshold per group (rows of ``forced`` are always high).

    Args:
      adv: float [E, Q]; mask: bool [E, Q]; groups: int [E] group of each row (all equal for one global
        threshold); forced: bool [E] rows labelled 1 and left out of the percentile.
      fractions: {group: f} overrides of ``default_fraction``.

    Returns: (labels int8 [E, Q] in {−1, 0, 1}, {group: η}).
    """
    labels = np.full(adv.shape, adv_math.NONE, np.int8)
    thresholds = {}
    for g in np.unique(groups):
        rows = (groups == g) & ~forced
        sel = mask & rows[:, None]
        if not sel.any():
            continue
        f = fractions.get(int(g), default_fraction)
        eta = float(adv_math.advantage_threshold(adv[sel], f))
        thresholds[int(g)] = eta
        labels[sel] = np.asarray(adv_math.advantage_labels(adv[sel], eta))
    labels[mask & forced[:, None]] = adv_math.HIGH
    return labels, thresholds


def _share(labels: np.ndarray, sel: np.ndarray, failed: np.ndarray) -> float | None:
    """Of the high labels among ``sel`` [E, Q], the fraction in rows with ``failed`` [E] (None if no high)."""
    high = sel & (labels == adv_math.HIGH)
    n = int(high.sum())
    return float((high & failed[:, None]).sum() / n) if n else None


def compute_labels(
    metas: list[EpisodeMeta], values: Mapping[int, np.ndarray], cfg: LabelConfig = LabelConfig()
) -> tuple[dict[str, dict[int, np.ndarray]], dict[str, Any]]:
    """Returns, advantages and labels for ``metas`` given V̂ per episode (float [Q_e] aligned with image_steps).

    Returns: ({"value", "return", "advantage", "label"} → {episode_id: array [Q_e]} (float32; label int8),
      summary dict with the thresholds and the realised positive fractions).
    """
    if not metas:
        raise ValueError("no episodes to label")
    missing = [m.episode_id for m in metas if m.episode_id not in values]
    if missing:
        raise ValueError(f"no values for episodes {missing[:10]} ({len(missing)} in all)")
    for m in metas:
        if np.shape(values[m.episode_id]) != m.image_steps.shape:
            raise ValueError(
                f"episode {m.episode_id}: values have shape {np.shape(values[m.episode_id])}, "
                f"expected {m.image_steps.shape} (one per imaged step)"
            )
    width = max(len(m.image_steps) for m in metas)
    steps, mask = _pad([m.image_steps for m in metas], width, np.int32)
    vals, _ = _pad([np.asarray(values[m.episode_id], np.float32) for m in metas], width, np.float32)
    n_steps = np.array([m.n_steps for m in metas])
    success = np.array([m.success for m in metas])
    ret = batch_returns(steps, mask, n_steps, success, kind=cfg.returns, max_steps=cfg.max_steps, c_fail=cfg.c_fail)
    adv = batch_advantages(ret, vals, mask, cfg.n_step)
    forced = np.array([cfg.force_demo_positive and m.tags.get("kind") == "demo" for m in metas])
    by_iter = cfg.per_iteration or bool(cfg.iteration_fractions)
    groups = np.array([int(m.tags.get("iteration", 0)) if by_iter else 0 for m in metas])
    labels, thresholds = threshold_labels(
        adv, mask, groups, forced, dict(cfg.iteration_fractions), cfg.positive_fraction
    )
    out = {name: {} for name in ANNOTATIONS}
    for i, m in enumerate(metas):
        q = len(m.image_steps)
        out["value"][m.episode_id] = vals[i, :q]
        out["return"][m.episode_id] = ret[i, :q]
        out["advantage"][m.episode_id] = adv[i, :q]
        out["label"][m.episode_id] = labels[i, :q]
    summary = {
        "thresholds": thresholds,
        "positive_fraction": adv_math.positive_fraction(labels[mask]),
        "positive_fraction_rollouts": adv_math.positive_fraction(labels[mask & ~forced[:, None]]),
        "per_group": adv_math.positive_fraction(labels[mask], np.broadcast_to(groups[:, None], mask.shape)[mask]),
        "num_episodes": len(metas),
        "num_decisions": int(mask.sum()),
        "num_forced": int(forced.sum()),
        # Credit assignment at a glance (issue 22): with A = r − V̂ and V̂ ≈ a constant, "high" marks only the
        # decision points of successful episodes; a value function that assigns credit also marks some of failed
        # episodes. The share of rollout "high" labels that lie in failed episodes, and of failed-episode points.
        "high_label_failed_fraction": _share(labels, mask & ~forced[:, None], ~success),
        "failed_points_high_fraction": adv_math.positive_fraction(labels[mask & ~forced[:, None] & ~success[:, None]])
        if (mask & ~forced[:, None] & ~success[:, None]).any()
        else None,
    }
    return out, summary


def label_store(
    store, values: Mapping[int, np.ndarray], cfg: LabelConfig = LabelConfig(), episode_ids: Iterable[int] | None = None
) -> dict[str, Any]:
    """The label stage: computes and writes the "value", "return", "advantage" and "label" annotations.

    Args:
      store: a ``recap_jax.data.EpisodeStore``.
      values: {episode_id: V̂ float [Q_e]} for every labelled episode (from ``value_training.predict_values``
        or ``value_training.cross_fit_values``).
      episode_ids: which episodes to label (default: all in the store); the threshold is computed over them.

    Returns: the summary of :func:`compute_labels`.
    """
    wanted = None if episode_ids is None else {int(i) for i in episode_ids}
    metas = [EpisodeMeta.of(e) for e in store.iter_episodes() if wanted is None or e.episode_id in wanted]
    if wanted is not None and len(metas) != len(wanted):
        raise ValueError(f"episodes not in the store: {sorted(wanted - {m.episode_id for m in metas})[:10]}")
    annotations, summary = compute_labels(metas, values, cfg)
    for name in ANNOTATIONS:
        store.write_annotation(name, annotations[name])
    return summary
