"""LeRobot v2.1 datasets in Ψ0's SIMPLE layout (``G1WholebodyBendPick-v0-psi0``) → ``EpisodeStore``.

Layout read (PSI0_FACTS.md, "LeRobot v2.1, SIMPLE's layout")::

    meta/info.json            codebase_version "v2.1", fps, chunks_size, data_path, video_path, features
    meta/episodes.jsonl       episode_index, tasks, length, dataset_from_index, dataset_to_index, ...
    meta/tasks.jsonl          task_index, task, ...
    meta/stats_psi0.json      per key {mean, std, min, max, q01, q99}
    data/chunk-XXX/episode_XXXXXX.parquet    states f32[32], action f32[36], episode_index, frame_index, ...
    videos/chunk-XXX/egocentric/episode_XXXXXX.mp4   H.264 [360, 640, 3]

``import_lerobot`` writes one store shard per episode (the store's shard write is atomic), so an
interrupted import leaves only whole episodes and a rerun skips the episodes already in the store.
``stats_psi0.json`` is validated and copied beside the store (``store_dir/stats_psi0.json``), written last,
after every episode: its presence marks a complete import.

Images are resized like the policy's camera consumer (``recap_jax.models.resnet``):
``jax.image.resize(..., method="bilinear", antialias=True)``, then rounded to uint8.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recap_jax.data.store import ACTION_DIM, STATE_DIM, Episode, EpisodeStore, atomic_write_bytes

CODEBASE_VERSION = "v2.1"
STATE_KEY = "states"
ACTION_KEY = "action"
IMAGE_KEY = "observation.images.egocentric"
STATS_FILE = "stats_psi0.json"
STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
_META_FILES = ("info.json", "episodes.jsonl", "tasks.jsonl", STATS_FILE)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"{path}: missing meta file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{path}: missing meta file")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e})") from e
    return rows


def read_psi0_stats(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Reads ``stats_psi0.json``: ``{key: {mean, std, min, max, q01, q99}}`` as float32 arrays.

    ``states`` stats must be [32] and ``action`` stats [36]; raises ``ValueError`` naming the file and field.
    """
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of per-key stats")
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, dim in ((STATE_KEY, STATE_DIM), (ACTION_KEY, ACTION_DIM)):
        if key not in raw:
            raise ValueError(f"{path}: field {key!r} missing")
        out[key] = {}
        for s in STAT_NAMES:
            if s not in raw[key]:
                raise ValueError(f"{path}: field {key}.{s} missing")
            arr = np.asarray(raw[key][s], np.float32)
            if arr.shape != (dim,):
                raise ValueError(f"{path}: field {key}.{s} has shape {arr.shape}, expected ({dim},)")
            out[key][s] = arr
    return out


def resize_frames(frames: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """uint8 [N, H, W, 3] → uint8 [N, h, w, 3], bilinear with antialiasing (as ``models.resnet``)."""
    import jax
    import jax.numpy as jnp

    frames = np.asarray(frames)
    if frames.shape[0] == 0:
        return np.zeros((0, *image_size, 3), np.uint8)
    if tuple(frames.shape[1:3]) == tuple(image_size):
        return frames.astype(np.uint8)
    x = jnp.asarray(frames, jnp.float32)
    y = jax.image.resize(x, (x.shape[0], *image_size, 3), method="bilinear", antialias=True)
    return np.asarray(jnp.clip(jnp.round(y), 0, 255)).astype(np.uint8)


def decode_video(path: Path, field: str = IMAGE_KEY) -> np.ndarray:
    """Decodes every frame of an mp4 → uint8 [N, H, W, 3] RGB; ``ValueError`` naming file and field."""
    import av

    if not path.is_file():
        raise ValueError(f"{path}: video for {field} missing")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise ValueError(f"{path}: video for {field} unreadable ({e})") from e
    if not frames:
        raise ValueError(f"{path}: video for {field} has no frames")
    return np.stack(frames)


def _column(table, key: str, dim: int, path: Path) -> np.ndarray:
    """A fixed-size-list float column → float32 [T, dim] (bit-exact)."""
    import pyarrow as pa

    if key not in table.column_names:
        raise ValueError(f"{path}: column {key!r} missing")
    col = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        values = col.flatten().to_numpy(zero_copy_only=False)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        if lengths.size and np.any(lengths != lengths[0]):
            raise ValueError(f"{path}: column {key!r} has rows of differing lengths")
        width = int(lengths[0]) if lengths.size else dim
        values = col.flatten().to_numpy(zero_copy_only=False)
    else:
        raise ValueError(f"{path}: column {key!r} has type {col.type}, expected a list of {dim} floats")
    if width != dim:
        raise ValueError(f"{path}: column {key!r} has shape [{width}], expected [{dim}]")
    return np.asarray(values, np.float32).reshape(len(table), dim)


class _Dataset:
    """The validated meta files of a v2.1 dataset."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta = self.root / "meta"
        if not meta.is_dir():
            raise ValueError(f"{meta}: missing meta directory (not a LeRobot dataset)")
        info_path = meta / "info.json"
        self.info = _read_json(info_path)
        version = self.info.get("codebase_version")
        if version != CODEBASE_VERSION:
            raise ValueError(
                f"{info_path}: field codebase_version is {version!r}; this reads LeRobot {CODEBASE_VERSION} datasets"
            )
        for name in _META_FILES:
            if not (meta / name).is_file():
                raise ValueError(f"{meta / name}: missing meta file")
        for key in ("data_path", "video_path", "chunks_size", "features"):
            if key not in self.info:
                raise ValueError(f"{info_path}: field {key!r} missing")
        feats = self.info["features"]
        for key, shape in ((STATE_KEY, [STATE_DIM]), (ACTION_KEY, [ACTION_DIM])):
            if key not in feats:
                raise ValueError(f"{info_path}: feature {key!r} missing")
            if list(feats[key].get("shape", [])) != shape:
                raise ValueError(f"{info_path}: feature {key!r} has shape {feats[key].get('shape')}, expected {shape}")
        if IMAGE_KEY not in feats:
            raise ValueError(f"{info_path}: feature {IMAGE_KEY!r} missing")
        self.episodes = sorted(_read_jsonl(meta / "episodes.jsonl"), key=lambda r: r["episode_index"])
        self.tasks = {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(meta / "tasks.jsonl")}
        self.stats_path = meta / STATS_FILE
        self.stats = read_psi0_stats(self.stats_path)
        for r in self.episodes:
            for key in ("episode_index", "length", "tasks"):
                if key not in r:
                    raise ValueError(f"{meta / 'episodes.jsonl'}: episode {r.get('episode_index')} lacks field {key!r}")

    def path(self, template_key: str, episode_index: int) -> Path:
        chunk = episode_index // int(self.info["chunks_size"])
        rel = self.info[template_key].format(episode_chunk=chunk, episode_index=episode_index, video_key=IMAGE_KEY)
        return self.root / rel

    def prompt(self, row: dict) -> str:
        task_ids = row["tasks"]
        if not task_ids:
            raise ValueError(f"{self.root / 'meta/episodes.jsonl'}: episode {row['episode_index']} has no task")
        tid = int(task_ids[0])
        if tid not in self.tasks:
            raise ValueError(f"{self.root / 'meta/tasks.jsonl'}: task_index {tid} missing")
        return self.tasks[tid]


def _read_episode(ds: _Dataset, row: dict, image_size: tuple[int, int], every: int) -> Episode:
    import pyarrow.parquet as pq

    idx = int(row["episode_index"])
    length = int(row["length"])
    ppath = ds.path("data_path", idx)
    if not ppath.is_file():
        raise ValueError(f"{ppath}: parquet for episode {idx} missing")
    try:
        table = pq.read_table(ppath)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise ValueError(f"{ppath}: parquet unreadable ({e})") from e
    if len(table) != length:
        raise ValueError(f"{ppath}: has {len(table)} rows but meta/episodes.jsonl field length says {length}")
    if "episode_index" in table.column_names:
        col = table.column("episode_index").to_numpy()
        if np.any(col != idx):
            raise ValueError(f"{ppath}: column episode_index disagrees with meta/episodes.jsonl ({idx})")
    if "frame_index" in table.column_names:
        fi = table.column("frame_index").to_numpy()
        if np.any(fi != np.arange(length)):
            raise ValueError(f"{ppath}: column frame_index is not 0..{length - 1}")
    if "index" in table.column_names and "dataset_from_index" in row:
        gi = table.column("index").to_numpy()
        if np.any(gi != np.arange(row["dataset_from_index"], row["dataset_from_index"] + length)):
            raise ValueError(f"{ppath}: column index disagrees with meta/episodes.jsonl field dataset_from_index")
    states = _column(table, STATE_KEY, STATE_DIM, ppath)
    actions = _column(table, ACTION_KEY, ACTION_DIM, ppath)
    vpath = ds.path("video_path", idx)
    frames = decode_video(vpath)
    if frames.shape[0] < length:
        raise ValueError(f"{vpath}: video for {IMAGE_KEY} has {frames.shape[0]} frames, parquet has {length} rows")
    steps = np.arange(0, length, every, dtype=np.int32)
    images = resize_frames(frames[steps], image_size)
    return Episode(
        episode_id=idx,
        states=states,
        actions=actions,
        image_steps=steps,
        images=images,
        prompt=ds.prompt(row),
        success=True,  # SIMPLE exports only successful expert demos
        n_steps=length,
        tags={"kind": "demo", "source": "lerobot", "dataset": str(ds.root.name)},
    )


def import_lerobot(
    root: str | os.PathLike, store_dir: str | os.PathLike, *, image_size: Sequence[int] = (96, 160), every: int = 1
) -> EpisodeStore:
    """Imports a LeRobot v2.1 dataset (SIMPLE layout) into an ``EpisodeStore`` at ``store_dir``.

    Args:
      root: dataset root (holding ``meta/``, ``data/``, ``videos/``).
      store_dir: store directory (created if absent; episodes already there are skipped, so an
        interrupted import resumes).
      image_size: (h, w) of the stored images, uint8 [h, w, 3].
      every: keep every ``every``-th frame as an imaged step; all states/actions are kept.

    Returns the store. Each episode is one atomic shard; ``store_dir/stats_psi0.json`` (the
    dataset's ``read_psi0_stats``) is written after the last episode. Raises ``ValueError`` naming the
    file and field on bad input.
    """
    if int(every) < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    image_size = (int(image_size[0]), int(image_size[1]))
    ds = _Dataset(root)
    store = EpisodeStore(store_dir, create=True)
    done = set(store.episode_ids())
    for row in ds.episodes:
        if int(row["episode_index"]) in done:
            continue
        store.append(_read_episode(ds, row, image_size, int(every)))
    payload = {k: {s: v.tolist() for s, v in d.items()} for k, d in ds.stats.items()}
    atomic_write_bytes(Path(store_dir) / STATS_FILE, json.dumps(payload).encode())
    store.refresh()
    return store


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m recap_jax.data.lerobot", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("import", help="LeRobot v2.1 dataset → EpisodeStore")
    pi.add_argument("root")
    pi.add_argument("store_dir")
    pi.add_argument("--image-size", type=int, nargs=2, default=(96, 160))
    pi.add_argument("--every", type=int, default=1)
    a = p.parse_args(argv)
    if a.cmd == "import":
        store = import_lerobot(a.root, a.store_dir, image_size=tuple(a.image_size), every=a.every)
        print(f"imported {len(store)} episodes into {a.store_dir}")


if __name__ == "__main__":
    main()
