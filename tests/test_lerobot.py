"""LeRobot v2.1 (SIMPLE layout) import: bit-exact states/actions/prompts, images, resumption, bad input."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recap_jax.data import lerobot
from recap_jax.data.loader import LoaderConfig, WindowLoader
from recap_jax.data.store import EpisodeStore
from recap_jax.psi0_stats import STAT_NAMES as STATS6

SAMPLE = Path(__file__).parent / "data" / "lerobot_simple_sample"
SIZE = (96, 160)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("store")
    store = lerobot.import_lerobot(SAMPLE, store_dir, image_size=SIZE, every=1)
    return store_dir, store


def test_import_matches_source(imported):
    store_dir, store = imported
    exp = np.load(SAMPLE / "lerobot_simple_sample_expected.npz")
    eps = store.load()
    assert [e.n_steps for e in eps] == exp["lengths"].tolist()
    np.testing.assert_array_equal(np.concatenate([e.states for e in eps]), exp["states"])
    np.testing.assert_array_equal(np.concatenate([e.actions for e in eps]), exp["actions"])
    # Ψ0 trains on the task lower-cased: the store holds that, the dataset's text stays in the tags
    assert [e.prompt for e in eps] == ["bend to pick up the cracker box", "bend to pick up the mustard bottle"]
    assert eps[0].tags["task"] == "Bend to pick up the Cracker Box" and "task" not in eps[1].tags
    stats = lerobot.read_psi0_stats(store_dir / lerobot.STATS_FILE)
    src = json.loads((SAMPLE / "meta" / "stats_psi0.json").read_text())
    np.testing.assert_array_equal(stats["action"]["q99"], np.asarray(src["action"]["q99"], np.float32))

    loader = WindowLoader(
        store, LoaderConfig(batch_size=8, max_prompt_len=64), process_index=0, process_count=1, prefetch=0
    )
    frames = {
        e.episode_id: lerobot.resize_frames(
            lerobot.decode_video(SAMPLE / f"videos/chunk-000/egocentric/episode_{e.episode_id:06d}.mp4"), SIZE
        )
        for e in eps
    }
    batch = loader.host_batch(0, 0)
    idx = loader.window_indices(0, 0)
    for row, w in enumerate(idx):
        ep = loader.episodes[loader._ep_index[w]]
        t = int(batch["t"][row])
        np.testing.assert_array_equal(batch["state"][row], ep.states[t])
        src_ep = exp["states"][int(exp["lengths"][: ep.episode_id].sum()) + t]
        np.testing.assert_array_equal(batch["state"][row], src_ep)
        n = min(30, ep.n_steps - t)
        np.testing.assert_array_equal(batch["actions"][row, :n], ep.actions[t : t + n])
        ids, _ = loader._tokens(ep.prompt)
        np.testing.assert_array_equal(batch["prompt_ids"][row], ids)
        diff = np.abs(batch["image"][row].astype(np.float32) - frames[ep.episode_id][t].astype(np.float32))
        assert diff.mean() <= 3.0


def test_every_and_resume(tmp_path):
    store_dir = tmp_path / "s"
    # an interrupted import: episode 0 only is in the store and no stats file yet
    full = lerobot._Dataset(SAMPLE)
    store = EpisodeStore(store_dir, create=True)
    store.append(lerobot._read_episode(full, full.episodes[0], (24, 40), 4)[0])
    assert not (store_dir / lerobot.STATS_FILE).exists()
    store = lerobot.import_lerobot(SAMPLE, store_dir, image_size=(24, 40), every=4)
    assert store.episode_ids() == [0, 1]
    ep1 = store.load([1])[0]
    np.testing.assert_array_equal(ep1.image_steps, np.arange(0, 52, 4))
    assert ep1.images.shape == (13, 24, 40, 3)
    assert ep1.states.shape == (52, 32)
    assert (store_dir / lerobot.STATS_FILE).exists()


def _copy(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(SAMPLE, root)
    return root


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_bad_version(tmp_path):
    for v in ("v2.0", "v3.0"):
        root = _copy(tmp_path / v)
        _edit_json(root / "meta/info.json", lambda d, v=v: d.update(codebase_version=v))
        with pytest.raises(ValueError, match=r"info.json.*codebase_version.*v2\.1"):
            lerobot.import_lerobot(root, tmp_path / v / "s")


def test_missing_meta(tmp_path):
    root = _copy(tmp_path)
    (root / "meta/tasks.jsonl").unlink()
    with pytest.raises(ValueError, match=r"tasks.jsonl: missing meta file"):
        lerobot.import_lerobot(root, tmp_path / "s")


def test_wrong_feature_shape(tmp_path):
    root = _copy(tmp_path)
    _edit_json(root / "meta/info.json", lambda d: d["features"]["states"].update(shape=[31]))
    with pytest.raises(ValueError, match=r"info.json: feature 'states' has shape"):
        lerobot.import_lerobot(root, tmp_path / "s")


def test_rows_disagree_with_episodes(tmp_path):
    root = _copy(tmp_path)
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["length"] = 50
    lines[1] = json.dumps(row)
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    store_dir = tmp_path / "s"
    with pytest.raises(ValueError, match=r"episode_000001.parquet: has 52 rows.*length says 50"):
        lerobot.import_lerobot(root, store_dir)
    # episode 0 is whole in the store, episode 1 absent, and the import is not marked complete
    assert EpisodeStore(store_dir).episode_ids() == [0]
    assert not (store_dir / lerobot.STATS_FILE).exists()


def test_unreadable_video(tmp_path):
    root = _copy(tmp_path)
    (root / "videos/chunk-000/egocentric/episode_000000.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"episode_000000.mp4: video for observation.images.egocentric unreadable"):
        lerobot.import_lerobot(root, tmp_path / "s")


def test_export_import_round_trip(tmp_path, imported):
    _, src = imported
    store_dir = tmp_path / "src"
    store = EpisodeStore(store_dir, create=True)
    eps = []
    for e in src.load():
        keep = np.arange(0, e.n_steps, 3, dtype=np.int32)
        eps.append(
            dataclasses.replace(
                e,
                episode_id=e.episode_id + 10,
                image_steps=keep,
                images=e.images[keep],
                success=e.episode_id == 1,
                tags={"kind": "rollout", "iteration": 2},
            )
        )
    store.append(eps)
    rng = np.random.default_rng(0)
    labels = {e.episode_id: rng.integers(-1, 2, e.image_steps.size).astype(np.int8) for e in eps}
    returns = {e.episode_id: rng.normal(size=e.image_steps.size).astype(np.float32) for e in eps}
    store.write_annotation("label", labels)
    store.write_annotation("return", returns)
    root = lerobot.export_lerobot(store_dir, tmp_path / "ds", fps=50)
    info = json.loads((root / "meta/info.json").read_text())
    assert "observation.leg_joints" in info["recap_jax"]["absent_fields"]
    assert "recap.annotation.label" in info["features"]
    stats = lerobot.read_psi0_stats(root / "meta/stats_psi0.json")
    np.testing.assert_allclose(stats["states"]["mean"], np.concatenate([e.states for e in eps]).mean(0), atol=1e-6)
    back = lerobot.import_lerobot(root, tmp_path / "back", image_size=SIZE)
    assert back.episode_ids() == [10, 11]
    for a, b in zip(eps, back.load(), strict=True):
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.image_steps, b.image_steps)
        assert a.prompt == b.prompt and a.success == b.success and b.tags["kind"] == "rollout"
        assert np.abs(a.images.astype(np.float32) - b.images.astype(np.float32)).mean() <= 3.0
    # an import killed after episode 10's shard, before its annotations: the rerun completes them
    ds = lerobot._Dataset(root)
    half = EpisodeStore(tmp_path / "half", create=True)
    half.append(lerobot._read_episode(ds, ds.episodes[0], SIZE, 1)[0])
    half = lerobot.import_lerobot(root, tmp_path / "half", image_size=SIZE)
    for store_back in (back, half):
        for name, want in (("label", labels), ("return", returns)):
            got = store_back.read_annotation(name)
            for eid, v in want.items():
                np.testing.assert_array_equal(got[eid], v)


def test_cli_and_sft_import(tmp_path, capsys):
    lerobot.main(["import", str(SAMPLE), str(tmp_path / "s"), "--image-size", "24", "40", "--every", "2"])
    lerobot.main(["export", str(tmp_path / "s"), str(tmp_path / "ds")])
    assert EpisodeStore(tmp_path / "s").load([1])[0].images.shape == (26, 24, 40, 3)
    assert json.loads((tmp_path / "ds/meta/info.json").read_text())["total_frames"] == 89

    from experiments import common, sft

    cfg = common.load_or_init_config(tmp_path / "run", "smoke", None)
    out = sft.import_demos(cfg, tmp_path / "run", str(SAMPLE))
    assert out["demos"] == 2
    ep = EpisodeStore(tmp_path / "run" / "demos" / "store").load([0])[0]
    assert ep.images.shape[1:3] == tuple(cfg.env.image_size)


def test_sft_norm_stats_come_from_stats_psi0(tmp_path):
    """An imported dataset's SFT policy normalises with the dataset's own ``stats_psi0.json`` (Ψ0's
    stats), not with min–max over the imported store."""
    from experiments import common, sft

    cfg = common.load_or_init_config(tmp_path / "run", "smoke", None)
    sft.import_demos(cfg, tmp_path / "run", str(SAMPLE))
    norm = sft.demo_norm_stats(cfg, tmp_path / "run" / "demos" / "store")
    want = lerobot.read_psi0_stats(SAMPLE / "meta" / "stats_psi0.json")
    np.testing.assert_array_equal(np.asarray(norm.state_min), want["states"]["min"])
    np.testing.assert_array_equal(np.asarray(norm.state_max), want["states"]["max"])
    np.testing.assert_array_equal(np.asarray(norm.action_min), want["action"]["min"])
    np.testing.assert_array_equal(np.asarray(norm.action_max), want["action"]["max"])


# ---- a frame at every control step: rollout(frames="every") → export → import -------------------


def _step_env():
    """A minimal env with the G1BendPick contract (x' = x + 0.1·a[:32], 10 steps); frames encode x and t."""
    import jax
    import jax.numpy as jnp
    from flax import struct

    @struct.dataclass
    class State:
        obs: dict
        reward: jax.Array
        done: jax.Array
        metrics: dict
        info: dict

    @dataclasses.dataclass(frozen=True)
    class Config:
        episode_length: int = 10
        camera: bool = False

    class Env:
        action_size, state_size, config = 36, 32, Config()

        def reset(self, key):
            z = jnp.zeros((), jnp.float32)
            x = jax.random.uniform(key, (32,), minval=-0.5, maxval=0.5)
            return State({"state": x}, z, z, {"success": z, "fell": z}, {"step": jnp.zeros((), jnp.int32)})

        def step(self, state, action):
            t = state.info["step"] + 1
            done = (t >= self.config.episode_length).astype(jnp.float32)
            return state.replace(obs={"state": state.obs["state"] + 0.1 * action[:32]}, done=done, info={"step": t})

        def render(self, state):
            return frame(state.obs["state"], state.info["step"])

    def frame(x, t):
        px = jnp.clip(x[:3] * 100 + 128, 0, 255).astype(jnp.uint8)
        img = jnp.broadcast_to(px, (32, 32, 3))
        return img.at[:8, :8].set(jnp.asarray(t * 20, jnp.uint8))  # the step as an 8x8 block (survives H.264)

    return Env(), frame


def test_rollout_frames_every_step_export_import(tmp_path):
    import jax

    from recap_jax import rollout

    env, frame = _step_env()

    def act(params, obs, prompt_ids, key, *, beta=1.0):
        return 0.3 * jax.random.normal(key, (obs["state"].shape[0], 8, 36))

    kw = dict(prompt="bend to pick up the cracker box", num_envs=2, ta=4, progress=False)
    every = EpisodeStore(tmp_path / "every", create=True)
    rollout.collect(env, act, {}, every, 2, frames="every", **kw)
    decision = EpisodeStore(tmp_path / "decision", create=True)
    rollout.collect(env, act, {}, decision, 2, **kw)
    for e, d in zip(every.load(), decision.load(), strict=True):
        assert e.n_steps == 10
        np.testing.assert_array_equal(e.image_steps, np.arange(10))
        np.testing.assert_array_equal(d.image_steps, [0, 4, 8])
        np.testing.assert_array_equal(e.states, d.states)  # same keys, same episode
        for j in range(10):  # the frame of each control step is the render of that step's state
            np.testing.assert_array_equal(e.images[j], np.asarray(frame(e.states[j], j)))
        np.testing.assert_array_equal(e.images[d.image_steps], d.images)
    root = lerobot.export_lerobot(tmp_path / "every", tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["recap_jax"]["video_frames_missing"] == 0 and "every control step" in info["recap_jax"]["video_frames"]
    for i in range(2):
        frames = lerobot.decode_video(root / info["video_path"].format(episode_chunk=0, episode_index=i))
        assert frames.shape == (10, 32, 32, 3)
    back = lerobot.import_lerobot(root, tmp_path / "back", image_size=(32, 32))
    for a, b in zip(every.load(), back.load(), strict=True):
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(b.image_steps, np.arange(10))
        assert np.abs(a.images.astype(np.float32) - b.images.astype(np.float32)).mean() <= 3.0
    # decision-point frames only: the export writes those and says how many rows have none
    info_d = json.loads(
        (lerobot.export_lerobot(tmp_path / "decision", tmp_path / "ds_d") / "meta/info.json").read_text()
    )
    assert info_d["recap_jax"]["video_frames_missing"] == 2 * (10 - 3) and "only" in info_d["recap_jax"]["video_frames"]


def _rewrite(root: Path, name: str, fn) -> None:
    path = root / "meta" / name
    if name.endswith(".jsonl"):
        rows = [fn(json.loads(x)) for x in path.read_text().splitlines() if x.strip()]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def test_import_as_simple_and_lerobot_write_it(tmp_path):
    """The sample rewritten the way SIMPLE's ``scripts/postprocess_psi0.py`` writes a dataset (states/action
    declared [-1], no splits, list<double> columns from ``.tolist()``, float64 timestamps, ``index`` = source
    index + running offset, inclusive ``dataset_to_index``, ``instruction`` = the task row), and the way
    LeRobot's own v2.1 writer does (task strings in episodes.jsonl, ``{video_key}`` in the video path):
    both import bit-exact."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    exp = np.load(SAMPLE / "lerobot_simple_sample_expected.npz")
    simple = tmp_path / "simple"
    shutil.copytree(SAMPLE, simple)

    def info_simple(info):
        info.pop("splits")
        for k in ("states", "action"):
            info["features"][k]["shape"] = [-1]
        return info

    _rewrite(simple, "info.json", info_simple)
    _rewrite(
        simple,
        "episodes.jsonl",
        lambda r: {
            **r,
            "dataset_to_index": r["dataset_to_index"] - 1,
            "instruction": {"task_index": r["tasks"][0], "task": r["instruction"]},
        },
    )
    for f in sorted((simple / "data").rglob("*.parquet")):
        t = pq.read_table(f)
        cols = {n: t.column(n) for n in t.column_names}
        for k in ("states", "action"):
            cols[k] = pa.array(np.asarray(cols[k].to_pylist(), np.float32).tolist())  # list<double>, as SIMPLE
        cols["timestamp"] = pa.array(np.arange(len(t)) * 1.0 / 50)
        cols["index"] = pa.array(np.asarray(cols["index"].to_pylist()) + 60)
        assert pa.types.is_list(cols["states"].type) and pa.types.is_float64(cols["states"].type.value_type)
        pq.write_table(pa.table(cols), f)
    lero = tmp_path / "lerobot"
    shutil.copytree(SAMPLE, lero)
    task_rows = (SAMPLE / "meta/tasks.jsonl").read_text().splitlines()
    tasks = {r["task_index"]: r["task"] for r in map(json.loads, task_rows)}
    _rewrite(
        lero,
        "episodes.jsonl",
        lambda r: {"episode_index": r["episode_index"], "tasks": [tasks[r["tasks"][0]]], "length": r["length"]},
    )
    _rewrite(
        lero,
        "info.json",
        lambda i: {**i, "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"},
    )
    (lero / "videos/chunk-000/egocentric").rename(lero / f"videos/chunk-000/{lerobot.IMAGE_KEY}")
    for root in (simple, lero):
        eps = lerobot.import_lerobot(root, tmp_path / f"store_{root.name}", image_size=(24, 40)).load()
        np.testing.assert_array_equal(np.concatenate([e.states for e in eps]), exp["states"])
        np.testing.assert_array_equal(np.concatenate([e.actions for e in eps]), exp["actions"])
        assert [e.prompt for e in eps] == ["bend to pick up the cracker box", "bend to pick up the mustard bottle"]
    # declared [-1], the parquet's width is what is checked
    f = simple / "data/chunk-000/episode_000001.parquet"
    t = pq.read_table(f)
    narrow = pa.array([row[:31] for row in t.column("states").to_pylist()])
    pq.write_table(t.set_column(t.column_names.index("states"), "states", narrow), f)
    with pytest.raises(ValueError, match=r"episode_000001.parquet: column 'states' has shape \[31\], expected \[32\]"):
        lerobot.import_lerobot(simple, tmp_path / "narrow", image_size=(24, 40))


def test_export_layout_matches_simple_writer(tmp_path, imported):
    """What SIMPLE's ``scripts/postprocess_psi0.py`` writes (meta files, info.json feature schema, stats keys,
    episodes.jsonl fields) and what LeRobot v2.1's reader needs (``names``, the video ``info`` block)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store_dir, _ = imported
    root = lerobot.export_lerobot(store_dir, tmp_path / "ds")
    meta = root / "meta"
    for name in ("info.json", "episodes.jsonl", "tasks.jsonl", "episodes_stats.jsonl", "stats.json"):
        assert (meta / name).is_file(), name
    for name in ("stats_psi0.json", "modality.json", "relative_stats.json", "lang_map.json"):
        assert (meta / name).is_file(), name
    info = json.loads((meta / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == 50 and info["robot_type"] == "g1"
    assert info["total_episodes"] == 2 and info["total_frames"] == 89 and info["total_videos"] == 2
    assert info["total_chunks"] == 1 and info["chunks_size"] == 1000 and info["splits"] == {"train": "0:2"}
    assert info["video_path"] == "videos/chunk-{episode_chunk:03d}/egocentric/episode_{episode_index:06d}.mp4"
    feats = info["features"]
    img = feats[lerobot.IMAGE_KEY]
    assert img["dtype"] == "video" and img["shape"] == [*SIZE, 3] and img["names"] == ["height", "width", "channel"]
    assert img["video_info"]["video.codec"] == "h264" and img["info"]["video.pix_fmt"] == "yuv420p"
    assert img["info"]["video.height"] == SIZE[0] and img["info"]["video.fps"] == 50
    want = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64"}
    want |= {"task_index": "int64", "next.done": "bool", "states": "float32", "action": "float32"}
    for k, dtype in want.items():
        assert feats[k]["dtype"] == dtype and "names" in feats[k], k
    assert feats["states"]["shape"] == [32] and feats["action"]["shape"] == [36] and feats["index"]["shape"] == [1]
    # parquet columns typed as the features declare
    t = pq.read_table(root / "data/chunk-000/episode_000001.parquet")
    types = {f.name: f.type for f in t.schema}
    for k, n in (("states", 32), ("action", 36)):
        assert pa.types.is_fixed_size_list(types[k]) and types[k].list_size == n, k
        assert types[k].value_type == pa.float32(), k
    assert types["timestamp"] == pa.float32() and types["frame_index"] == types["index"] == pa.int64()
    assert types["next.done"] == pa.bool_() and t.column("next.done").to_pylist()[-1] is True
    rows = [json.loads(x) for x in (meta / "episodes.jsonl").read_text().splitlines()]
    assert [(r["dataset_from_index"], r["dataset_to_index"]) for r in rows] == [(0, 36), (37, 88)]  # inclusive
    assert rows[0]["instruction"] == {"task_index": 0, "task": "bend to pick up the cracker box"}
    assert rows[0]["tasks"] == [0] and rows[0]["robot_type"] == "g1"
    tasks = [json.loads(x) for x in (meta / "tasks.jsonl").read_text().splitlines()]
    assert tasks[1] == {
        "task_index": 1,
        "task": "bend to pick up the mustard bottle",
        "category": "",
        "description": tasks[1]["task"],
    }
    stats = json.loads((meta / "stats_psi0.json").read_text())
    assert set(stats) == {
        "states",
        "action",
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
        "next.done",
    }
    assert all(set(v) == set(STATS6) for v in stats.values())
    assert json.loads((meta / "stats.json").read_text()) == stats
    ep_stats = json.loads((meta / "episodes_stats.jsonl").read_text().splitlines()[1])
    assert ep_stats["episode_index"] == 1 and ep_stats["stats"]["action"]["count"] == [52]
    assert set(ep_stats["stats"]) >= {"action", "timestamp"}
    mod = json.loads((meta / "modality.json").read_text())
    assert mod["state"]["height"]["start"] == 31 and mod["action"]["target_yaw"]["end"] == 36
    assert (
        mod["action"]["torso_vx"]["absolute"] is False and mod["video"]["rs_view"]["original_key"] == lerobot.IMAGE_KEY
    )
