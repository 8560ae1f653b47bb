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

Checked against the real writer and reader (SIMPLE ``scripts/postprocess_psi0.py`` at 6a5efa5; LeRobot
v0.3.3, codebase v2.1, ``datasets/utils.py``). What a SIMPLE-written dataset has and the reader accepts:
``states``/``action`` declared with shape [-1] (the parquet width is checked instead), list<double> columns
(``.tolist()``; cast back to float32 bit-exactly), float64 timestamps, no ``splits``, an ``index`` column that
is the source index plus a running offset (not checked against ``dataset_from_index``), an inclusive
``dataset_to_index`` and the task row as ``instruction``; LeRobot's own writer lists task strings (not
indices) in episodes.jsonl and puts ``{video_key}`` in ``video_path`` — both read. The export writes
SIMPLE's meta files (incl. ``modality.json``, empty ``relative_stats.json`` / ``lang_map.json``), its stats keys
(states, action, timestamp, frame_index, episode_index, index, task_index, next.done) and episodes.jsonl
fields, and LeRobot's feature schema (``names``, the video ``info`` block beside SIMPLE's ``video_info``,
shapes [32]/[36] with fixed-size float32 list columns, which LeRobot's reader maps to ``Sequence(length)``).
Prompts: the store holds ``advantage.instruction_text(task)`` (lower-cased, as Ψ0 trains).

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

from recap_jax.advantage import instruction_text
from recap_jax.data.store import ACTION_DIM, STATE_DIM, Episode, EpisodeStore, atomic_write_bytes
from recap_jax.psi0_stats import read_psi0_stats_file

CODEBASE_VERSION = "v2.1"
STATE_KEY = "states"
ACTION_KEY = "action"
IMAGE_KEY = "observation.images.egocentric"
STATS_FILE = "stats_psi0.json"
VIDEO_FRAME_KEY = "recap.video_frame_index"
ANNOTATION_PREFIX = "recap.annotation."
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/egocentric/episode_{episode_index:06d}.mp4"
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

    ``states`` stats must be [32] and ``action`` stats [36]; validated by
    ``recap_jax.psi0_stats.validate_psi0_stats`` (as ``NormStats.from_psi0``): ``ValueError`` naming the file
    and field.
    """
    return read_psi0_stats_file(path, STATE_DIM, ACTION_DIM)


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
            # SIMPLE's postprocess_psi0.py declares both as [-1] (any length): the parquet's width is checked
            if list(feats[key].get("shape", [])) not in (shape, [-1]):
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
        if isinstance(task_ids[0], str):  # LeRobot's own v2.1 writer lists task strings; SIMPLE's, indices
            return task_ids[0]
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
    # The global ``index`` column is not checked against episodes.jsonl's dataset_from_index: SIMPLE's
    # postprocess_psi0.py writes the source recording's index plus a running offset there, not that field.
    states = _column(table, STATE_KEY, STATE_DIM, ppath)
    actions = _column(table, ACTION_KEY, ACTION_DIM, ppath)
    vpath = ds.path("video_path", idx)
    frames = decode_video(vpath)
    if VIDEO_FRAME_KEY in table.column_names:  # our export: video frames only at the imaged rows
        vfi = table.column(VIDEO_FRAME_KEY).to_numpy()
        imaged = np.flatnonzero(vfi >= 0)
        if imaged.size != frames.shape[0] or np.any(vfi[imaged] != np.arange(imaged.size)):
            raise ValueError(
                f"{vpath}: video has {frames.shape[0]} frames but column {VIDEO_FRAME_KEY} names {imaged.size}"
            )
        steps = imaged[::every].astype(np.int32)
        images = resize_frames(frames[vfi[steps]], image_size)
    else:
        if frames.shape[0] < length:
            raise ValueError(f"{vpath}: video for {IMAGE_KEY} has {frames.shape[0]} frames, parquet has {length} rows")
        steps = np.arange(0, length, every, dtype=np.int32)
        images = resize_frames(frames[steps], image_size)
    annotations = {}
    for name in table.column_names:
        if name.startswith(ANNOTATION_PREFIX):
            annotations[name[len(ANNOTATION_PREFIX) :]] = table.column(name).to_numpy()[steps]
    success = bool(row.get("success", True))  # SIMPLE exports only successful expert demos
    tags = dict(row.get("tags", {"kind": "demo"}))
    tags.setdefault("source", "lerobot")
    tags["dataset"] = str(ds.root.name)
    task = ds.prompt(row)
    if task != instruction_text(task):
        tags["task"] = task  # the dataset's text as written
    ep = Episode(
        episode_id=int(row.get("recap_episode_id", idx)),
        states=states,
        actions=actions,
        image_steps=steps,
        images=images,
        prompt=instruction_text(task),  # Ψ0 trains on the task lower-cased
        success=success,
        n_steps=length,
        tags=tags,
    )
    return ep, annotations


def _resume_annotations(ds: _Dataset, row: dict, store: EpisodeStore, eid: int, have: dict) -> None:
    """An import killed between an episode's shard and its annotations: writes the missing ones."""
    import pyarrow.parquet as pq

    names = [n for n in ds.info.get("recap_jax", {}).get("annotations", []) if eid not in have.get(n, ())]
    if not names:
        return
    table = pq.read_table(
        ds.path("data_path", int(row["episode_index"])), columns=[ANNOTATION_PREFIX + n for n in names]
    )
    steps = store.load([eid])[0].image_steps
    for n in names:
        store.write_annotation(n, {eid: table.column(ANNOTATION_PREFIX + n).to_numpy()[steps]})


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
    have = {n: set(store.read_annotation(n)) for n in store.annotation_names()}
    for row in ds.episodes:
        eid = int(row.get("recap_episode_id", row["episode_index"]))
        if eid in done:
            _resume_annotations(ds, row, store, eid, have)
            continue
        ep, annotations = _read_episode(ds, row, image_size, int(every))
        store.append(ep)
        for name, values in annotations.items():
            store.write_annotation(name, {ep.episode_id: values})
    payload = {k: {s: v.tolist() for s, v in d.items()} for k, d in ds.stats.items()}
    atomic_write_bytes(Path(store_dir) / STATS_FILE, json.dumps(payload).encode())
    store.refresh()
    return store


def _stats(x: np.ndarray, count: bool = True) -> dict[str, list]:
    """float [N, D] (or [N]) → {mean, std, min, max, q01, q99} lists of D floats (and ``count`` [N])."""
    x = np.asarray(x, np.float64)
    x = x.reshape(len(x), -1)
    out = {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
    }
    if count:
        out["count"] = [int(x.shape[0])]
    return out


def modality() -> dict:
    """``meta/modality.json`` as SIMPLE's postprocess_psi0.py writes it: the named slices of ``states`` [32]
    and ``action`` [36] (absolute except the velocity commands), the video's key and the task annotation."""
    ent = lambda a, b, key, absolute=True: {
        "start": a,
        "end": b,
        "rotation_type": None,
        "absolute": absolute,
        "dtype": "float32",
        "original_key": key,
    }
    parts = (("left_hand", 0, 7), ("right_hand", 7, 14), ("left_arm", 14, 21), ("right_arm", 21, 28))
    parts += (("rpy", 28, 31), ("height", 31, 32))
    action = {n: ent(a, b, ACTION_KEY) for n, a, b in parts}
    action.update(
        torso_vx=ent(32, 33, ACTION_KEY, False),
        torso_vy=ent(33, 34, ACTION_KEY, False),
        torso_vyaw=ent(34, 35, ACTION_KEY, False),
        target_yaw=ent(35, 36, ACTION_KEY),
    )
    return {
        "state": {n: ent(a, b, STATE_KEY) for n, a, b in parts},
        "action": action,
        "video": {"rs_view": {"original_key": IMAGE_KEY}},
        "annotation": {"human.task_description": {"original_key": "task_index"}},
    }


def encode_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """uint8 [N, H, W, 3] → H.264 yuv420p mp4 at ``fps`` (H and W must be even), written atomically."""
    import av

    tmp = path.with_name(path.name + ".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def export_lerobot(store_dir: str | os.PathLike, root: str | os.PathLike, *, fps: int = 50) -> Path:
    """Writes the ``EpisodeStore`` at ``store_dir`` as a LeRobot v2.1 dataset (SIMPLE layout) at ``root``.

    Per episode (``episode_index`` 0..N-1 in store order; the store id is ``recap_episode_id`` in
    ``episodes.jsonl``): a parquet with ``states`` f32[32], ``action`` f32[36], ``timestamp``,
    ``frame_index``, ``episode_index``, ``index``, ``task_index``, ``next.done``, plus the extra features
    ``recap.success`` (bool, the episode outcome on every row), ``recap.video_frame_index`` (int64, the
    row's frame in the mp4, -1 where the store has no image) and ``recap.annotation.<name>`` (float32,
    the store annotation at imaged rows, NaN elsewhere: ``return``, ``value``, ``advantage``, ``label``...).
    The mp4 holds the store's imaged steps, at the store's image size: a frame per row for a store
    collected with ``rollout.collect(frames="every")``, else only the decision points, and info.json
    ``recap_jax.video_frames`` / ``video_frames_missing`` say which. Fields the store does not
    record (``observation.leg_joints`` etc., ``environment_config``) are listed in info.json
    ``recap_jax.absent_fields``, never invented. Returns ``root``. ``meta/info.json`` is written last.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = EpisodeStore(store_dir)
    root = Path(root)
    if (root / "meta" / "info.json").exists():
        raise ValueError(f"{root / 'meta/info.json'}: a dataset already exists at {root}")
    eps = store.load()
    if not eps:
        raise ValueError(f"{store_dir}: the store has no episodes to export")
    ann_names = store.annotation_names()
    anns = {n: store.read_annotation(n) for n in ann_names}
    for n, d in anns.items():
        for eid, v in d.items():
            if np.ndim(v) != 1:
                raise ValueError(
                    f"annotation {n!r}: episode {eid} has shape {np.shape(v)}; only per-step scalars export"
                )
    (root / "meta").mkdir(parents=True, exist_ok=True)
    tasks: dict[str, int] = {}
    ep_rows, ep_stats = [], []
    columns: dict[str, list[np.ndarray]] = {}
    chunks_size = 1000
    offset = 0
    image_shape = None
    imaged_total = 0
    for i, ep in enumerate(eps):
        t = ep.n_steps
        task = tasks.setdefault(ep.prompt, len(tasks))
        vfi = np.full((t,), -1, np.int64)
        vfi[ep.image_steps] = np.arange(ep.image_steps.size)
        cols = {
            STATE_KEY: pa.FixedSizeListArray.from_arrays(pa.array(ep.states.reshape(-1), pa.float32()), STATE_DIM),
            ACTION_KEY: pa.FixedSizeListArray.from_arrays(pa.array(ep.actions.reshape(-1), pa.float32()), ACTION_DIM),
            "timestamp": pa.array(np.arange(t, dtype=np.float32) / np.float32(fps), pa.float32()),
            "frame_index": pa.array(np.arange(t, dtype=np.int64)),
            "episode_index": pa.array(np.full((t,), i, np.int64)),
            "index": pa.array(np.arange(offset, offset + t, dtype=np.int64)),
            "task_index": pa.array(np.full((t,), task, np.int64)),
            "next.done": pa.array(np.arange(t) == t - 1),
            "recap.success": pa.array(np.full((t,), bool(ep.success))),
            VIDEO_FRAME_KEY: pa.array(vfi),
        }
        for n, d in anns.items():
            col = np.full((t,), np.nan, np.float32)
            if ep.episode_id in d:
                col[ep.image_steps] = np.asarray(d[ep.episode_id], np.float32)
            cols[ANNOTATION_PREFIX + n] = pa.array(col, pa.float32())
        ppath = root / DATA_PATH.format(episode_chunk=i // chunks_size, episode_index=i)
        ppath.parent.mkdir(parents=True, exist_ok=True)
        tmp = ppath.with_name(ppath.name + ".tmp")
        pq.write_table(pa.table(cols), tmp)
        os.replace(tmp, ppath)
        if ep.image_steps.size:
            vpath = root / VIDEO_PATH.format(episode_chunk=i // chunks_size, episode_index=i)
            vpath.parent.mkdir(parents=True, exist_ok=True)
            encode_video(vpath, ep.images, fps)
            image_shape = list(ep.images.shape[1:])
            imaged_total += int(ep.image_steps.size)
        ep_rows.append(
            {
                "episode_index": i,
                "tasks": [task],
                "length": t,
                "dataset_from_index": offset,
                "dataset_to_index": offset + t - 1,  # inclusive, as SIMPLE's postprocess_psi0.py writes it
                "robot_type": "g1",
                "instruction": {"task_index": task, "task": ep.prompt},  # SIMPLE writes its task row here
                "recap_episode_id": ep.episode_id,
                "success": bool(ep.success),
                "tags": ep.tags,
            }
        )
        ts = np.arange(t, dtype=np.float32) / np.float32(fps)
        ep_stats.append(
            {
                "episode_index": i,
                "stats": {STATE_KEY: _stats(ep.states), ACTION_KEY: _stats(ep.actions), "timestamp": _stats(ts)},
            }
        )
        for name, v in (
            ("timestamp", ts),
            ("frame_index", np.arange(t)),
            ("episode_index", np.full(t, i)),
            ("index", np.arange(offset, offset + t)),
            ("task_index", np.full(t, task)),
            ("next.done", np.arange(t) == t - 1),
        ):
            columns.setdefault(name, []).append(v)
        offset += t
    # stats.json = stats_psi0.json: SIMPLE's keys, {mean, std, min, max, q01, q99} each (no count)
    stats = {
        STATE_KEY: _stats(np.concatenate([e.states for e in eps]), count=False),
        ACTION_KEY: _stats(np.concatenate([e.actions for e in eps]), count=False),
        **{k: _stats(np.concatenate(v).astype(np.float64), count=False) for k, v in columns.items()},
    }
    meta = root / "meta"
    jl = lambda rows: ("".join(json.dumps(r) + "\n" for r in rows)).encode()
    atomic_write_bytes(meta / "episodes.jsonl", jl(ep_rows))
    atomic_write_bytes(
        meta / "tasks.jsonl",
        jl({"task_index": k, "task": p, "category": "", "description": p} for p, k in tasks.items()),
    )
    atomic_write_bytes(meta / "modality.json", json.dumps(modality(), indent=2).encode())
    for name in ("relative_stats.json", "lang_map.json"):  # SIMPLE writes both, empty
        atomic_write_bytes(meta / name, b"{}")
    atomic_write_bytes(meta / "episodes_stats.jsonl", jl(ep_stats))
    for name in ("stats.json", STATS_FILE):
        atomic_write_bytes(meta / name, json.dumps(stats).encode())
    feat = lambda dtype, *shape: {"dtype": dtype, "shape": list(shape), "names": None}
    shape = image_shape or [0, 0, 3]
    video = {"video.fps": fps, "video.codec": "h264", "video.pix_fmt": "yuv420p"}
    features = {
        IMAGE_KEY: {
            "dtype": "video",
            "shape": shape,
            "names": ["height", "width", "channel"],
            "video_info": video,  # SIMPLE's key
            "info": {  # LeRobot v2.1's key (its writer's get_video_info fields)
                "video.height": shape[0],
                "video.width": shape[1],
                "video.channels": shape[2],
                **video,
                "video.is_depth_map": False,
                "has_audio": False,
            },
        },
        STATE_KEY: feat("float32", STATE_DIM),
        ACTION_KEY: feat("float32", ACTION_DIM),
        "timestamp": feat("float32", 1),
        "frame_index": feat("int64", 1),
        "episode_index": feat("int64", 1),
        "index": feat("int64", 1),
        "task_index": feat("int64", 1),
        "next.done": feat("bool", 1),
        "recap.success": feat("bool", 1),
        VIDEO_FRAME_KEY: feat("int64", 1),
        **{ANNOTATION_PREFIX + n: feat("float32", 1) for n in ann_names},
    }
    n_steps = int(offset)
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": "g1",
        "total_episodes": len(eps),
        "total_frames": n_steps,
        "total_tasks": len(tasks),
        "total_videos": sum(1 for e in eps if e.image_steps.size),
        "total_chunks": (len(eps) - 1) // chunks_size + 1,
        "chunks_size": chunks_size,
        "fps": fps,
        "splits": {"train": f"0:{len(eps)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
        "recap_jax": {
            "extra_features": ["recap.success", VIDEO_FRAME_KEY, *[ANNOTATION_PREFIX + n for n in ann_names]],
            "annotations": ann_names,
            "absent_fields": [
                "observation.hand_joints",
                "observation.arm_joints",
                "observation.leg_joints",
                "observation.prev_torso_rpy",
                "observation.prev_height",
                "environment_config",
            ],
            "video_frames": (
                f"one per row (every control step), at the store's image size; {VIDEO_FRAME_KEY} maps each "
                "row to its mp4 frame"
                if imaged_total == n_steps
                else f"only the store's imaged steps ({imaged_total} of {n_steps} rows), at the store's image "
                f"size; {VIDEO_FRAME_KEY} maps each row to its mp4 frame (-1: no image). Collect with "
                "rollout.collect(frames='every') for a frame at every control step"
            ),
            "video_frames_missing": n_steps - imaged_total,
            "annotation_fill": "annotation columns are NaN on rows without an image",
        },
    }
    atomic_write_bytes(meta / "info.json", json.dumps(info, indent=2).encode())
    return root


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m recap_jax.data.lerobot", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("import", help="LeRobot v2.1 dataset → EpisodeStore")
    pi.add_argument("root")
    pi.add_argument("store_dir")
    pi.add_argument("--image-size", type=int, nargs=2, default=(96, 160))
    pi.add_argument("--every", type=int, default=1)
    pe = sub.add_parser("export", help="EpisodeStore → LeRobot v2.1 dataset")
    pe.add_argument("store_dir")
    pe.add_argument("root")
    pe.add_argument("--fps", type=int, default=50)
    a = p.parse_args(argv)
    if a.cmd == "export":
        print(f"exported {a.store_dir} to {export_lerobot(a.store_dir, a.root, fps=a.fps)}")
    if a.cmd == "import":
        store = import_lerobot(a.root, a.store_dir, image_size=tuple(a.image_size), every=a.every)
        print(f"imported {len(store)} episodes into {a.store_dir}")


if __name__ == "__main__":
    main()
