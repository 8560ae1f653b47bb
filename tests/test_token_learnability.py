"""benchmarks/token_learnability.py: the label schemes (pure, fast; no training)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import token_learnability as tl
from recap_jax.data import Episode, EpisodeStore


def _store(tmp_path, temps) -> EpisodeStore:
    store = EpisodeStore(tmp_path / "rollouts", create=True)
    eps = []
    for eid, temp in enumerate(temps):
        steps = np.arange(0, 48, 24, dtype=np.int32)
        eps.append(
            Episode(
                episode_id=eid,
                states=np.zeros((48, 32), np.float32),
                actions=np.zeros((48, 36), np.float32),
                image_steps=steps,
                images=np.zeros((steps.size, 4, 4, 3), np.uint8),
                prompt="p",
                success=bool(eid % 2),
                n_steps=48,
                tags={"kind": "rollout", "temperature": temp},
            )
        )
    store.append(eps)
    store.write_annotation("label", {i: np.array([1, -1] if i == 0 else [0, 1], np.int8) for i in range(len(temps))})
    return store


def test_temperature_labels_mark_the_temperature_one_episodes(tmp_path):
    """high = played at temperature 1, low = at another, on the windows the real labels cover (-1 stays -1)."""
    store = _store(tmp_path, [1.0, 1.5, 1.0, 1.5])
    labels = tl.scheme_labels("temperature", None, tmp_path, store)
    assert {k: v.tolist() for k, v in labels.items()} == {0: [1, -1], 1: [0, 0], 2: [1, 1], 3: [0, 0]}
    assert all(v.dtype == np.int8 for v in labels.values())


def test_temperature_labels_need_two_temperatures(tmp_path):
    store = _store(tmp_path, [1.0, 1.0])
    with pytest.raises(ValueError, match="two temperatures"):
        tl.scheme_labels("temperature", None, tmp_path, store)
    with pytest.raises(ValueError, match="unknown label scheme"):
        tl.scheme_labels("oracle", None, tmp_path, store)
