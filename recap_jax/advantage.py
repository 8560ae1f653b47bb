"""Advantages, the global-percentile threshold, int8 labels, prompt text and indicator dropout.

RECAP-Ψ §3.7: A_i = r_i − V̂(o_i); η = Q_{1−f}({A_j}) over every valid decision point of the dataset
(f = 0.3, the top 30%); label "high" iff A_i ≥ η, else "low".

Labels are int8 everywhere: ``HIGH = 1``, ``LOW = 0``, ``NONE = -1`` (no indicator: masked, dropped, or
an unconditioned prompt). The prompt text is ``"advantage: high. <instruction>"`` /
``"advantage: low. <instruction>"`` / the bare instruction.

Quantile convention: numpy's default ("linear") interpolation on the valid entries, so with n distinct
values the count with A ≥ η is n − ceil((1 − f)(n − 1)), within one sample of f·n. Ties at η all go high.

The device functions (:func:`advantages`, :func:`advantage_threshold`, :func:`advantage_labels`,
:func:`drop_labels`) are jit-able; concrete inputs are validated eagerly. The ``group_*`` and
:func:`positive_fraction` helpers are host-side numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

HIGH = 1
LOW = 0
NONE = -1
LABEL_DTYPE = jnp.int8
PROMPT_PREFIX = "advantage: {}. "
_WORDS = {HIGH: "high", LOW: "low"}


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_finite(x, name: str) -> None:
    if _concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def _check_mask_shape(mask, shape) -> None:
    if mask is not None and jnp.shape(mask) != tuple(shape):
        raise ValueError(f"mask shape {jnp.shape(mask)} must equal advantages shape {tuple(shape)}")


def _check_fraction(top_fraction) -> None:
    if _concrete(top_fraction):
        f = float(np.asarray(top_fraction))
        if not 0.0 < f < 1.0:
            raise ValueError(f"top_fraction must lie in (0, 1), got {top_fraction!r}")


def advantages(returns: jax.Array, values: jax.Array) -> jax.Array:
    """A = r − V̂ (Eq. (2)).

    Args: returns, values: float [...] of equal shape (concrete inputs must be finite).
    Returns: float32 [...].
    """
    if jnp.shape(returns) != jnp.shape(values):
        raise ValueError(f"shape mismatch: returns {jnp.shape(returns)} vs values {jnp.shape(values)}")
    _check_finite(returns, "returns")
    _check_finite(values, "values")
    return _advantages(returns, values)


@jax.jit
def _advantages(returns, values):
    return jnp.asarray(returns, jnp.float32) - jnp.asarray(values, jnp.float32)


@jax.jit
def _quantile(adv, mask, top_fraction):
    q = 1.0 - jnp.asarray(top_fraction, jnp.float32)
    adv = jnp.asarray(adv, jnp.float32).ravel()
    if mask is None:
        return jnp.quantile(adv, q)
    return jnp.nanquantile(jnp.where(jnp.asarray(mask, bool).ravel(), adv, jnp.nan), q)


def advantage_threshold(adv: jax.Array, top_fraction: float = 0.3, mask: jax.Array | None = None) -> jax.Array:
    """Global percentile η = Q_{1−f}(A) over all valid entries (linear interpolation, as numpy).

    Args:
      adv: float [...] advantages (any shape; the quantile is over every valid entry).
      top_fraction: f in (0, 1), the share to be labelled high (paper: 0.3).
      mask: optional bool [...] (same shape), False entries are ignored.

    Returns: float32 [] (NaN under jit if nothing is valid; eagerly that raises ``ValueError``).
    """
    _check_fraction(top_fraction)
    shape = jnp.shape(adv)
    _check_mask_shape(mask, shape)
    if math.prod(shape) == 0:
        raise ValueError("adv is empty: no entries to take a percentile of")
    if mask is None:
        _check_finite(adv, "adv")
    elif _concrete(mask):
        m = np.asarray(mask, bool)
        if not m.any():
            raise ValueError("mask selects no entries: no advantages to take a percentile of")
        if _concrete(adv):
            _check_finite(np.asarray(adv)[m], "adv (valid entries)")
    return _quantile(adv, mask, top_fraction)


def advantage_labels(adv: jax.Array, threshold: jax.Array | float, mask: jax.Array | None = None) -> jax.Array:
    """Binary indicator (Eq. (3)): 1 (high) iff A ≥ η, else 0 (low); −1 where ``mask`` is False.

    Args:
      adv: float [...].
      threshold: η, float scalar or broadcastable to ``adv`` (e.g. one per row).
      mask: optional bool [...] same shape as ``adv``.

    Returns: int8 [...] in {−1, 0, 1}.
    """
    shape = jnp.shape(adv)
    _check_mask_shape(mask, shape)
    try:
        jnp.broadcast_shapes(jnp.shape(threshold), shape)
    except ValueError as e:
        raise ValueError(f"threshold shape {jnp.shape(threshold)} does not broadcast to adv shape {shape}") from e
    _check_finite(threshold, "threshold")
    if mask is None:
        _check_finite(adv, "adv")
    elif _concrete(mask) and _concrete(adv):
        _check_finite(np.asarray(adv)[np.asarray(mask, bool)], "adv (valid entries)")
    return _labels(adv, threshold, mask)


@jax.jit
def _labels(adv, threshold, mask):
    labels = jnp.where(jnp.asarray(adv, jnp.float32) >= jnp.asarray(threshold, jnp.float32), HIGH, LOW)
    labels = labels.astype(LABEL_DTYPE)
    return labels if mask is None else jnp.where(jnp.asarray(mask, bool), labels, jnp.int8(NONE))


def label_advantages(
    returns: jax.Array, values: jax.Array, top_fraction: float = 0.3, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Whole §3.7 pipeline: (A float32 [...], η float32 [], labels int8 [...]) with one global threshold."""
    adv = advantages(returns, values)
    thr = advantage_threshold(adv, top_fraction, mask)
    return adv, thr, advantage_labels(adv, thr, mask)


def _label_word(label) -> str | None:
    if label is None:
        return None
    if isinstance(label, str):
        word = label.strip().lower()
        if word in ("high", "low"):
            return word
        raise ValueError(f"unknown advantage label string {label!r}; expected 'high' or 'low'")
    arr = np.asarray(label)
    if arr.shape != () or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"advantage label must be 'high', 'low', 1, 0, -1 or None, got {label!r}")
    value = int(arr)
    if value == NONE:
        return None
    if value not in _WORDS:
        raise ValueError(f"unknown advantage label {value}; expected 1 (high), 0 (low) or -1 (none)")
    return _WORDS[value]


def instruction_text(task: str) -> str:
    """The instruction Ψ0 conditions on for a task string: the task lower-cased (Ψ0 lower-cases a dataset's
    task at training; its SIMPLE server lower-cases the request's instruction). The LeRobot importer and the
    policy server both apply it, so a store's prompts and a served request's prompt agree."""
    if not isinstance(task, str):
        raise ValueError(f"task must be a str, got {type(task).__name__}")
    return task.lower()


def format_prompt(instruction: str, label: str | int | None) -> str:
    """Prompt text for the VLM: ``"advantage: high. <instruction>"``, ``"advantage: low. …"`` or bare.

    Args:
      instruction: the task instruction, e.g. "bend to pick up the cracker box".
      label: "high"/"low" (case-insensitive), 1/0 (any int type, incl. int8 scalars), or None/−1 for
        the bare instruction (no indicator: dropped label or BC-all).

    Returns: str.
    """
    if not isinstance(instruction, str):
        raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
    word = _label_word(label)
    return instruction if word is None else PROMPT_PREFIX.format(word) + instruction


def format_prompts(instructions: str | Sequence[str], labels) -> list[str]:
    """:func:`format_prompt` over a batch; one instruction string is shared by every label."""
    labels = list(np.asarray(labels).ravel()) if not isinstance(labels, list | tuple) else list(labels)
    if isinstance(instructions, str):
        instructions = [instructions] * len(labels)
    if len(instructions) != len(labels):
        raise ValueError(f"got {len(instructions)} instructions for {len(labels)} labels")
    return [format_prompt(i, lab) for i, lab in zip(instructions, labels)]


def drop_labels(key: jax.Array, labels: jax.Array, p: float) -> jax.Array:
    """Indicator dropout: each label independently becomes −1 (bare prompt) with probability p.

    π*0.6 drops the indicator 30% of the time so the same network also learns the unconditional
    policy used by classifier-free guidance. Labels that are already −1 stay −1.

    Args:
      key: PRNG key.
      labels: int8 [...] in {−1, 0, 1}.
      p: drop probability in [0, 1] (scalar, may be traced).

    Returns: int8 [...].
    """
    if _concrete(p):
        pf = float(np.asarray(p))
        if not 0.0 <= pf <= 1.0:
            raise ValueError(f"drop probability p must lie in [0, 1], got {p!r}")
    dtype = jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"labels must be integer (int8) in {{-1, 0, 1}}, got dtype {dtype}")
    return _drop(key, labels, p)


@jax.jit
def _drop(key, labels, p):
    drop = jax.random.uniform(key, jnp.shape(labels)) < p
    return jnp.where(drop, jnp.int8(NONE), jnp.asarray(labels).astype(LABEL_DTYPE))


# ---------------------------------------------------------------- host-side, per group (e.g. iteration)


def group_thresholds(adv, groups, top_fraction: float = 0.3, mask=None) -> dict[int, float]:
    """η per group id: Q_{1−f} of the valid advantages of each group (host-side numpy).

    Args:
      adv: float [N] (or any shape) advantages.
      groups: int [N] group id of each entry (e.g. the RECAP iteration that collected it).
      top_fraction: f in (0, 1).
      mask: optional bool [N].

    Returns: {group id: η}; groups with no valid entry are omitted.
    """
    _check_fraction(top_fraction)
    adv = np.asarray(adv, np.float64).ravel()
    groups = np.asarray(groups).ravel()
    if groups.shape != adv.shape:
        raise ValueError(f"shape mismatch: adv has {adv.size} entries, groups {groups.size}")
    valid = np.ones(adv.shape, bool) if mask is None else np.asarray(mask, bool).ravel()
    if valid.shape != adv.shape:
        raise ValueError(f"mask has {valid.size} entries, adv {adv.size}")
    if not np.all(np.isfinite(adv[valid])):
        raise ValueError("adv contains non-finite values (NaN or inf)")
    return {
        int(g): float(np.quantile(adv[valid & (groups == g)], 1.0 - top_fraction)) for g in np.unique(groups[valid])
    }


def group_labels(adv, groups, top_fraction: float = 0.3, mask=None) -> np.ndarray:
    """Labels with a separate threshold per group (so each group has ≈ f of its entries high).

    Returns: int8 array shaped like ``adv``: 1 / 0, −1 where masked.
    """
    shape = np.shape(adv)
    thr = group_thresholds(adv, groups, top_fraction, mask)
    a = np.asarray(adv, np.float64).ravel()
    g = np.asarray(groups).ravel()
    valid = np.ones(a.shape, bool) if mask is None else np.asarray(mask, bool).ravel()
    eta = np.array([thr.get(int(x), np.inf) for x in g])
    out = np.where(a >= eta, HIGH, LOW).astype(np.int8)
    return np.where(valid, out, NONE).astype(np.int8).reshape(shape)


def positive_fraction(labels, groups=None) -> float | dict[int, float]:
    """Share of labelled entries (label ≠ −1) that are high, overall or per group id (host-side).

    Returns: float in [0, 1] (NaN if nothing is labelled), or {group id: fraction} when ``groups`` is given.
    """
    lab = np.asarray(labels).ravel()
    labelled = lab != NONE

    def frac(sel):
        n = int(np.sum(sel & labelled))
        return float(np.sum(sel & (lab == HIGH)) / n) if n else float("nan")

    if groups is None:
        return frac(np.ones(lab.shape, bool))
    g = np.asarray(groups).ravel()
    if g.shape != lab.shape:
        raise ValueError(f"shape mismatch: labels has {lab.size} entries, groups {g.size}")
    return {int(x): frac(g == x) for x in np.unique(g)}
