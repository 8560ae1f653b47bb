"""An on-disk, append-only store of episodes (demos and rollouts).

Layout under ``root``::

    manifest.json                 {"version": 1, "shards": [{"name", "episode_ids", "bytes", "sha256"}, ...]}
    shards/shard-000003-ab12cd34.npz   one ``append`` call: the episodes' arrays + a JSON metadata record
    annotations/<name>.npz        per-episode arrays aligned with ``image_steps`` (key = str(episode_id))

Every file is written to a temporary name in the same directory, flushed, fsynced and moved into place
with ``os.replace``: a reader (or a process killed mid-write) sees either the old or the new file, never
a partial one. A shard becomes visible only when the manifest naming it is replaced, so a store can be
read while a collection is still appending to it (``refresh()`` re-reads the manifest). A ``fcntl``
lock serialises concurrent writers.

Validation: opening reads the manifest and checks that every shard exists with its recorded size and
readable zip directory; loading a shard also checks its SHA-256. A bad shard raises
``CorruptShardError`` naming the file; with ``strict=False`` the store opens anyway, lists the bad
shards in ``corrupt_shards`` and serves every other episode.

No pickles are written or read (``allow_pickle=False``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

STATE_DIM = 32
ACTION_DIM = 36
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
ANNOTATIONS_DIR = "annotations"
_FORMAT_VERSION = 1
_CACHE_SHARDS = 16
# dtypes of the annotation names used by the stages (others are stored as given)
ANNOTATION_DTYPES = {"value": np.float32, "return": np.float32, "advantage": np.float32, "label": np.int8}
_ARRAY_FIELDS = ("states", "actions", "image_steps", "images")


class StoreError(ValueError):
    """The store on disk is missing or malformed (the message names the file)."""


class CorruptShardError(StoreError):
    """A shard file is truncated, corrupt or missing (the message names the file)."""


@dataclasses.dataclass
class Episode:
    """One episode on the host (numpy arrays, never jax).

    Attributes:
      episode_id: unique int id within the store.
      states: float32 [T, 32], the policy state at each control step.
      actions: float32 [T, 36], the executed absolute action at each control step.
      image_steps: int32 [Q], increasing control-step indices (in [0, T)) of the imaged steps.
      images: uint8 [Q, H, W, 3], the camera image at each imaged step.
      prompt: the bare instruction (no advantage prefix).
      success: whether the episode succeeded.
      n_steps: T, the number of control steps.
      tags: JSON-serialisable dict; ``"kind"`` is "demo" or "rollout"; also ``"policy"``,
        ``"iteration"``, ``"seed"``.
    """

    episode_id: int
    states: np.ndarray
    actions: np.ndarray
    image_steps: np.ndarray
    images: np.ndarray
    prompt: str
    success: bool
    n_steps: int
    tags: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        """Raises ``ValueError`` naming the episode and field when shapes or dtypes disagree."""
        name = f"episode {self.episode_id}"
        t = int(self.n_steps)
        if np.shape(self.states) != (t, STATE_DIM):
            raise ValueError(f"{name}: states has shape {np.shape(self.states)}, expected ({t}, {STATE_DIM})")
        if np.shape(self.actions) != (t, ACTION_DIM):
            raise ValueError(f"{name}: actions has shape {np.shape(self.actions)}, expected ({t}, {ACTION_DIM})")
        steps = np.asarray(self.image_steps)
        if steps.ndim != 1 or not np.issubdtype(steps.dtype, np.integer):
            raise ValueError(f"{name}: image_steps must be a 1-d integer array, got {steps.dtype}{steps.shape}")
        if steps.size and (steps.min() < 0 or steps.max() >= t or np.any(np.diff(steps) <= 0)):
            raise ValueError(f"{name}: image_steps must be strictly increasing within [0, {t}), got {steps}")
        images = np.asarray(self.images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != steps.size or images.shape[-1] != 3:
            raise ValueError(
                f"{name}: images must be uint8 [{steps.size}, H, W, 3] (one per imaged step), "
                f"got {images.dtype}{images.shape}"
            )
        if not isinstance(self.prompt, str):
            raise ValueError(f"{name}: prompt must be a str, got {type(self.prompt).__name__}")
        kind = self.tags.get("kind")
        if kind not in (None, "demo", "rollout"):
            raise ValueError(f"{name}: tags['kind'] must be 'demo' or 'rollout', got {kind!r}")

    def normalized(self) -> Episode:
        """Returns a copy with canonical dtypes (float32/int32/uint8, Python scalars)."""
        return dataclasses.replace(
            self,
            episode_id=int(self.episode_id),
            states=np.asarray(self.states, np.float32),
            actions=np.asarray(self.actions, np.float32),
            image_steps=np.asarray(self.image_steps, np.int32),
            images=np.asarray(self.images, np.uint8),
            success=bool(self.success),
            n_steps=int(self.n_steps),
            tags=dict(self.tags),
        )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file in the same directory, fsync and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _json_array(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8)


class EpisodeStore:
    """Episodes on disk: sharded ``.npz`` files behind an atomically replaced manifest.

    Args:
      root: directory of the store.
      create: create an empty store when ``root`` has no manifest (otherwise a missing manifest raises
        ``StoreError`` naming it).
      strict: raise ``CorruptShardError`` on open when a shard is missing, truncated or unreadable; with
        ``strict=False`` such shards are skipped (listed in ``corrupt_shards``) and the rest is served.
    """

    def __init__(self, root: str | os.PathLike, create: bool = False, strict: bool = True):
        self.root = Path(root)
        self.strict = strict
        self.corrupt_shards: dict[str, str] = {}
        self._manifest: dict[str, Any] = {}
        self._where: dict[int, str] = {}
        self._cache: dict[str, list[Episode]] = {}
        if not (self.root / MANIFEST).exists():
            if not create:
                raise StoreError(f"episode store manifest is missing: {self.root / MANIFEST}")
            (self.root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
            (self.root / ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
            with self._lock():
                if not (self.root / MANIFEST).exists():
                    self._write_manifest({"version": _FORMAT_VERSION, "shards": []})
        self.refresh()

    # ----------------------------------------------------------------- reading

    def refresh(self) -> None:
        """Re-reads the manifest (picks up shards appended by another process) and validates shards."""
        path = self.root / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise StoreError(f"episode store manifest is missing: {path}") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"episode store manifest is not valid JSON: {path}: {e}") from e
        if not isinstance(manifest, dict) or manifest.get("version") != _FORMAT_VERSION:
            raise StoreError(f"episode store manifest {path} has an unknown format (version {manifest.get('version')})")
        where: dict[int, str] = {}
        bad: dict[str, str] = {}
        for shard in manifest["shards"]:
            problem = self._check_shard(shard)
            if problem:
                bad[shard["name"]] = problem
                continue
            for eid in shard["episode_ids"]:
                where[int(eid)] = shard["name"]
        if bad and self.strict:
            raise CorruptShardError("; ".join(bad.values()))
        for name, problem in bad.items():
            if name not in self.corrupt_shards:
                warnings.warn(f"skipping {problem}", stacklevel=2)
        self._manifest, self._where, self.corrupt_shards = manifest, where, bad

    def _check_shard(self, shard: Mapping[str, Any]) -> str | None:
        path = self.root / SHARDS_DIR / shard["name"]
        if not path.exists():
            return f"episode shard is missing: {path}"
        size = path.stat().st_size
        if size != shard["bytes"]:
            return f"episode shard is truncated or corrupt: {path} has {size} bytes, manifest says {shard['bytes']}"
        try:
            with zipfile.ZipFile(path) as z:
                z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            return f"episode shard is corrupt: {path}: {e}"
        return None

    def __len__(self) -> int:
        return len(self._where)

    def episode_ids(self) -> list[int]:
        """Ids of all readable episodes, in append order."""
        return list(self._where)

    @property
    def shard_names(self) -> list[str]:
        return [s["name"] for s in self._manifest["shards"]]

    def _read_shard(self, name: str) -> list[Episode]:
        if name in self._cache:
            return self._cache[name]
        if name in self.corrupt_shards:
            raise CorruptShardError(self.corrupt_shards[name])
        (record,) = [s for s in self._manifest["shards"] if s["name"] == name]
        path = self.root / SHARDS_DIR / name
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise CorruptShardError(f"episode shard is missing: {path}") from e
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise CorruptShardError(f"episode shard is corrupt (SHA-256 mismatch): {path}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode("utf-8"))
                episodes = [
                    Episode(
                        episode_id=m["episode_id"],
                        prompt=m["prompt"],
                        success=m["success"],
                        n_steps=m["n_steps"],
                        tags=m["tags"],
                        **{f: z[f"{i}/{f}"] for f in _ARRAY_FIELDS},
                    )
                    for i, m in enumerate(meta)
                ]
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
            raise CorruptShardError(f"episode shard is corrupt: {path}: {e}") from e
        self._cache[name] = episodes
        while len(self._cache) > _CACHE_SHARDS:
            self._cache.pop(next(iter(self._cache)))
        return episodes

    def load(self, ids: Iterable[int] | None = None) -> list[Episode]:
        """Returns the episodes with ``ids`` (all readable ones when None), in the order asked.

        Raises ``KeyError`` for an unknown id and ``CorruptShardError`` (naming the file) when its shard
        is bad.
        """
        ids = self.episode_ids() if ids is None else [int(i) for i in ids]
        out = []
        for eid in ids:
            if eid not in self._where:
                bad = [n for n, s in self._shard_records().items() if eid in s["episode_ids"]]
                if bad:
                    raise CorruptShardError(self.corrupt_shards[bad[0]])
                raise KeyError(f"episode {eid} is not in the store at {self.root}")
            (ep,) = [e for e in self._read_shard(self._where[eid]) if e.episode_id == eid]
            out.append(ep)
        return out

    def iter_episodes(self) -> Iterator[Episode]:
        """Yields every readable episode, one shard in memory at a time."""
        for shard in self._manifest["shards"]:
            if shard["name"] in self.corrupt_shards:
                continue
            yield from self._read_shard(shard["name"])
            self._cache.pop(shard["name"], None)

    def _shard_records(self) -> dict[str, dict]:
        return {s["name"]: s for s in self._manifest["shards"]}

    # ----------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        atomic_write_bytes(self.root / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))

    def append(self, episodes: Episode | Iterable[Episode]) -> str:
        """Writes ``episodes`` as one new shard and publishes it in the manifest; returns the shard name.

        Raises ``ValueError`` on a malformed episode or an id already in the store (nothing is written).
        """
        episodes = [episodes] if isinstance(episodes, Episode) else list(episodes)
        if not episodes:
            raise ValueError("append() needs at least one episode")
        episodes = [e.normalized() for e in episodes]
        for e in episodes:
            e.validate()
        ids = [e.episode_id for e in episodes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate episode ids in one append: {sorted(ids)}")
        arrays: dict[str, np.ndarray] = {}
        meta = []
        for i, e in enumerate(episodes):
            for f in _ARRAY_FIELDS:
                arrays[f"{i}/{f}"] = getattr(e, f)
            meta.append(
                {"episode_id": e.episode_id, "prompt": e.prompt, "success": e.success, "n_steps": e.n_steps}
                | {"tags": e.tags}
            )
        arrays["meta"] = _json_array(meta)
        data = _npz_bytes(arrays)
        with self._lock():
            manifest = json.loads((self.root / MANIFEST).read_text())
            existing = {int(i) for s in manifest["shards"] for i in s["episode_ids"]}
            clash = sorted(existing.intersection(ids))
            if clash:
                raise ValueError(f"episode ids already in the store at {self.root}: {clash[:10]}")
            name = f"shard-{len(manifest['shards']):06d}-{uuid.uuid4().hex[:8]}.npz"
            (self.root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.root / SHARDS_DIR / name, data)
            manifest["shards"].append(
                {
                    "name": name,
                    "episode_ids": ids,
                    "image_counts": [int(e.image_steps.size) for e in episodes],
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
            self._write_manifest(manifest)
        self.refresh()
        return name

    # ------------------------------------------------------------- annotations

    def annotation_names(self) -> list[str]:
        d = self.root / ANNOTATIONS_DIR
        return sorted(p.stem for p in d.glob("*.npz")) if d.exists() else []

    def read_annotation(self, name: str) -> dict[int, np.ndarray]:
        """Returns ``{episode_id: array [Q_e]}`` of annotation ``name`` (``KeyError`` when absent)."""
        path = self.root / ANNOTATIONS_DIR / f"{name}.npz"
        if not path.exists():
            raise KeyError(f"annotation {name!r} not found in {self.root} (have {self.annotation_names()})")
        try:
            with np.load(path, allow_pickle=False) as z:
                return {int(k): z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise StoreError(f"annotation file is corrupt: {path}: {e}") from e

    def write_annotation(self, name: str, values: Mapping[int, np.ndarray], *, replace: bool = False) -> None:
        """Stores per-imaged-step values for some episodes (merged into an existing annotation unless
        ``replace``). Each array must have one entry per imaged step of its episode. Known names are cast
        to their dtype (``"label"`` int8 in {-1, 0, 1}; ``"value"``, ``"return"``, ``"advantage"`` finite
        float32). Atomic."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"annotation name must be alphanumeric (with _ or -), got {name!r}")
        arrays: dict[str, np.ndarray] = {}
        for eid, value in values.items():
            eid = int(eid)
            if eid not in self._where:
                raise KeyError(f"annotation {name!r}: episode {eid} is not in the store at {self.root}")
            value = np.asarray(value)
            if name in ANNOTATION_DTYPES:
                want = ANNOTATION_DTYPES[name]
                if want == np.int8 and not np.isin(value, (-1, 0, 1)).all():
                    raise ValueError(f"annotation {name!r}: episode {eid} has labels outside {{-1, 0, 1}}")
                if want == np.float32 and not np.isfinite(value).all():
                    raise ValueError(f"annotation {name!r}: episode {eid} has non-finite values")
                value = value.astype(want)
            q = self.num_images(eid)
            if value.shape[:1] != (q,):
                raise ValueError(
                    f"annotation {name!r}: episode {eid} has {q} imaged steps but the array has shape {value.shape}"
                )
            arrays[str(eid)] = value
        (self.root / ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
        with self._lock():
            path = self.root / ANNOTATIONS_DIR / f"{name}.npz"
            merged = {} if replace or not path.exists() else {str(k): v for k, v in self.read_annotation(name).items()}
            merged.update(arrays)
            atomic_write_bytes(path, _npz_bytes(merged))

    def num_images(self, episode_id: int) -> int:
        """Number of imaged steps Q of an episode (from the manifest, no shard read)."""
        rec = self._shard_records()[self._where[int(episode_id)]]
        return int(rec["image_counts"][rec["episode_ids"].index(int(episode_id))])
