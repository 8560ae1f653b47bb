"""Ψ0's dataset statistics (``meta/stats_psi0.json``): one validator for every reader.

The file (SIMPLE's ``scripts/postprocess_psi0.py`` writes it; PSI0_FACTS.md "LeRobot v2.1, SIMPLE's layout")
holds per feature key ``{mean, std, min, max, q01, q99}`` lists. Ψ0 normalises with the ``states`` and
``action`` groups' min/max ("bounds"); the other statistics travel with the dataset. Both the LeRobot importer
(``recap_jax.data.lerobot.read_psi0_stats``) and the policy's ``NormStats.from_psi0`` read the file through
``validate_psi0_stats``, so a file one accepts the other accepts too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
GROUPS = ("states", "action")


def validate_psi0_stats(
    raw: Any, state_dim: int | None = None, action_dim: int | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Parsed ``stats_psi0.json`` → ``{"states": {stat: f32 [S]}, "action": {stat: f32 [A]}}`` (the six
    ``STAT_NAMES`` each; other keys of the file are ignored).

    Raises ``ValueError`` naming the field (``states.max`` …) for: a missing group or statistic, a statistic
    that is not a 1-D list of numbers, lengths that differ within a group or from ``state_dim`` /
    ``action_dim`` (when given), a non-finite value, or min > max.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"Ψ0 stats: expected a JSON object of per-key stats, got {type(raw).__name__}")
    out: dict[str, dict[str, np.ndarray]] = {}
    for group, dim in zip(GROUPS, (state_dim, action_dim)):
        if not isinstance(raw.get(group), dict):
            raise ValueError(f"Ψ0 stats lack the {group!r} group (have {sorted(raw)})")
        out[group] = {}
        for s in STAT_NAMES:
            if s not in raw[group]:
                raise ValueError(f"Ψ0 stats lack {group}.{s}")
            try:
                v = np.asarray(raw[group][s], np.float32)
            except (TypeError, ValueError) as e:
                raise ValueError(f"Ψ0 stats {group}.{s} is not a list of numbers ({e})") from e
            want = dim if dim is not None else (out[group]["mean"].shape[0] if out[group] else None)
            if v.ndim != 1 or (want is not None and v.shape[0] != want):
                raise ValueError(f"Ψ0 stats {group}.{s} must be [{want or 'D'}], got {list(v.shape)}")
            if not np.isfinite(v).all():
                raise ValueError(f"Ψ0 stats {group}.{s} has non-finite values")
            out[group][s] = v
        if (out[group]["min"] > out[group]["max"]).any():
            raise ValueError(f"Ψ0 stats {group}: min > max")
    return out


def read_psi0_stats_file(
    path: str | os.PathLike, state_dim: int | None = None, action_dim: int | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """``validate_psi0_stats`` of a file; every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: missing stats file")
    try:
        return validate_psi0_stats(json.loads(path.read_text()), state_dim, action_dim)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
