"""Episode store: round trip, append while reading, annotations, corrupt/missing files named in errors."""

import json
import os

import numpy as np
import pytest
from _helpers_train import make_episode

from recap_jax.data import CorruptShardError, EpisodeStore, StoreError


def _assert_same(a, b):
    assert a.episode_id == b.episode_id and a.prompt == b.prompt and a.success == b.success
    assert a.n_steps == b.n_steps and a.tags == b.tags
    for f in ("states", "actions", "image_steps", "images"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert getattr(a, f).dtype == getattr(b, f).dtype


def test_round_trip_and_append_while_open(tmp_path):
    store = EpisodeStore(tmp_path / "s", create=True)
    assert len(store) == 0
    eps = [make_episode(i, n_steps=20 + i) for i in range(3)]
    name = store.append(eps[:2])
    assert name.endswith(".npz") and (tmp_path / "s" / "shards" / name).exists()
    reader = EpisodeStore(tmp_path / "s")  # a second process reading while collection runs
    assert reader.episode_ids() == [0, 1]
    store.append(eps[2])
    assert reader.episode_ids() == [0, 1]
    reader.refresh()
    assert reader.episode_ids() == [0, 1, 2] and len(reader) == 3
    for a, b in zip(reader.load([2, 0]), [eps[2], eps[0]]):
        _assert_same(a, b)
    assert [e.episode_id for e in reader.iter_episodes()] == [0, 1, 2]
    assert not [p for p in (tmp_path / "s").rglob("*.tmp")]


def test_append_validation(tmp_path):
    store = EpisodeStore(tmp_path, create=True)
    store.append(make_episode(0))
    with pytest.raises(ValueError, match=r"already in the store.*\[0\]"):
        store.append(make_episode(0))
    bad = make_episode(1)
    bad.actions = bad.actions[:, :30]
    with pytest.raises(ValueError, match="episode 1: actions has shape"):
        store.append(bad)
    bad = make_episode(2)
    bad.images = bad.images[:-1]
    with pytest.raises(ValueError, match="episode 2: images must be uint8"):
        store.append(bad)
    assert store.episode_ids() == [0]


def test_annotations(tmp_path):
    store = EpisodeStore(tmp_path, create=True)
    store.append([make_episode(0, n_steps=40), make_episode(1, n_steps=17)])
    q0, q1 = store.num_images(0), store.num_images(1)
    assert (q0, q1) == (5, 3)
    store.write_annotation("label", {0: np.array([1, 0, -1, 1, 1], np.int8)})
    store.write_annotation("label", {1: np.array([0, 0, 1], np.int8)})
    labels = store.read_annotation("label")
    assert sorted(labels) == [0, 1] and labels[0].dtype == np.int8
    np.testing.assert_array_equal(labels[1], [0, 0, 1])
    store.write_annotation("label", {1: np.array([1, 1, 1], np.int8)}, replace=True)
    assert sorted(store.read_annotation("label")) == [1]
    with pytest.raises(ValueError, match="episode 0 has 5 imaged steps"):
        store.write_annotation("value", {0: np.zeros(4, np.float32)})
    with pytest.raises(KeyError, match="'return' not found"):
        store.read_annotation("return")
    assert store.annotation_names() == ["label"]
    with pytest.raises(ValueError, match="labels outside"):
        store.write_annotation("label", {1: np.array([2, 0, 1])})
    with pytest.raises(ValueError, match="non-finite"):
        store.write_annotation("value", {1: np.array([0.0, np.nan, 1.0])})
    store.write_annotation("return", {1: np.array([0, -0.5, -1.0], np.float64)})
    assert store.read_annotation("return")[1].dtype == np.float32


def test_missing_manifest_named(tmp_path):
    with pytest.raises(StoreError, match=f"manifest is missing: {tmp_path / 'manifest.json'}"):
        EpisodeStore(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_named_rest_readable(tmp_path, damage):
    store = EpisodeStore(tmp_path, create=True)
    store.append(make_episode(0))
    bad_name = store.append([make_episode(1), make_episode(2)])
    store.append(make_episode(3))
    path = tmp_path / "shards" / bad_name
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    if damage == "truncate":  # caught on open, by size
        with pytest.raises(CorruptShardError, match=str(path)):
            EpisodeStore(tmp_path)
        with pytest.warns(UserWarning, match=bad_name):
            lenient = EpisodeStore(tmp_path, strict=False)
        assert lenient.episode_ids() == [0, 3] and list(lenient.corrupt_shards) == [bad_name]
        with pytest.raises(CorruptShardError, match=bad_name):
            lenient.load([1])
    else:  # same size: caught by the checksum when read
        reopened = EpisodeStore(tmp_path)
        with pytest.raises(CorruptShardError, match=f"SHA-256 mismatch.*{bad_name}"):
            reopened.load([2])
        lenient = reopened
    assert [e.episode_id for e in lenient.load([0, 3])] == [0, 3]


def test_bad_manifest_named(tmp_path):
    EpisodeStore(tmp_path, create=True).append(make_episode(0))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest is not valid JSON: .*manifest\.json"):
        EpisodeStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "shards": []}))
    assert len(EpisodeStore(tmp_path)) == 0
    assert os.path.exists(tmp_path / "shards")
