"""Window loader: window contents, padding, shuffling, host sharding, exact resume, prompts, value mode."""

import jax
import numpy as np
import pytest
from _helpers_train import PROMPT, make_episode

from recap_jax.data import EpisodeStore, LoaderConfig, WindowLoader, norm_stats
from recap_jax.models.tokenizer import ByteTokenizer
from recap_jax.train import make_mesh


@pytest.fixture
def store(tmp_path):
    s = EpisodeStore(tmp_path, create=True)
    s.append([make_episode(0, n_steps=50, stride=8), make_episode(1, n_steps=37, stride=8)])
    s.append(make_episode(2, n_steps=64, stride=24, kind="demo"))
    return s


def test_windows_and_padding(store):
    loader = WindowLoader(store, LoaderConfig(batch_size=4, seed=3), prefetch=0)
    assert loader.num_windows == 7 + 5 + 3 and loader.steps_per_epoch == 3
    tok = ByteTokenizer(64)
    seen = []
    for step in range(loader.steps_per_epoch):
        b = loader.host_batch(0, step)
        assert b["image"].dtype == np.uint8 and b["state"].shape == (4, 32) and b["actions"].shape == (4, 30, 36)
        for row in range(4):
            eid, t = int(b["state"][row, 0]), int(b["state"][row, 1])
            ep = next(e for e in loader.episodes if e.episode_id == eid)
            q = list(ep.image_steps).index(t)
            assert b["image"][row, 0, 0, 0] == t % 256
            assert b["t"].dtype == np.int32 and b["t"][row] == t  # the window's control step (episode clock)
            n = min(30, ep.n_steps - t)
            np.testing.assert_array_equal(b["action_mask"][row], np.arange(30) < n)
            np.testing.assert_array_equal(b["actions"][row, :n], ep.actions[t : t + n])
            np.testing.assert_array_equal(b["actions"][row, n:], np.broadcast_to(ep.actions[-1], (30 - n, 36)))
            assert tok.decode(b["prompt_ids"][row])[0] == PROMPT
            seen.append((eid, q))
    assert len(set(seen)) == 12  # no window repeats within an epoch
    assert any(not b["action_mask"].all() for b in [loader.host_batch(0, s) for s in range(3)])


def test_shuffle_seed_and_host_sharding(store):
    cfg = LoaderConfig(batch_size=4, seed=5)
    one = WindowLoader(store, cfg, prefetch=0, process_index=0, process_count=1)
    hosts = [WindowLoader(store, cfg, prefetch=0, process_index=p, process_count=2) for p in range(2)]
    for epoch in range(2):
        for step in range(one.steps_per_epoch):
            full = one.host_batch(epoch, step)
            parts = [h.host_batch(epoch, step) for h in hosts]
            for k in full:
                np.testing.assert_array_equal(full[k], np.concatenate([p[k] for p in parts]))
    assert not np.array_equal(one.window_indices(0, 0), one.window_indices(1, 0))
    other = WindowLoader(store, LoaderConfig(batch_size=4, seed=6), prefetch=0)
    assert not np.array_equal(one.window_indices(0, 0), other.window_indices(0, 0))
    with pytest.raises(ValueError, match="multiple of 2 processes"):
        WindowLoader(store, LoaderConfig(batch_size=3), process_index=0, process_count=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        WindowLoader(store, LoaderConfig(batch_size=64), prefetch=0)


def test_exact_resume_with_prefetch(store):
    cfg = LoaderConfig(batch_size=4, seed=1)
    with WindowLoader(store, cfg, prefetch=2) as ref:
        ref_batches = [next(ref) for _ in range(8)]  # crosses two epoch boundaries
    with WindowLoader(store, cfg, prefetch=3) as a:
        for _ in range(4):
            next(a)
        pos = a.state_dict()
    assert pos == {"epoch": 1, "step": 1, "seed": 1, "num_windows": 15}
    with WindowLoader(store, cfg, prefetch=2) as b:
        b.load_state_dict(pos)
        for want in ref_batches[4:]:
            got = next(b)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(ValueError, match="seed 1"):
        WindowLoader(store, LoaderConfig(batch_size=4, seed=2)).load_state_dict(pos)
    store.append(make_episode(7))
    with pytest.raises(ValueError, match="saved over 15 windows but this loader has 22"):
        WindowLoader(store, cfg).load_state_dict(pos)


def test_prefetch_to_mesh(store):
    mesh = make_mesh(fsdp=2)
    with WindowLoader(store, LoaderConfig(batch_size=8), mesh=mesh, prefetch=2) as loader:
        b = next(loader)
    assert isinstance(b["state"], jax.Array) and b["state"].shape == (8, 32)
    assert b["image"].sharding.spec[0] == ("data", "fsdp")
    assert len(b["actions"].addressable_shards) == 8 and b["actions"].addressable_shards[0].data.shape == (1, 30, 36)


def test_value_mode_and_kinds(store):
    returns = {e: -np.linspace(0, 1, store.num_images(e), dtype=np.float32) for e in store.episode_ids()}
    store.write_annotation("return", returns)
    loader = WindowLoader(store, LoaderConfig(batch_size=4, return_annotation="return", kinds=("rollout",)), prefetch=0)
    assert {e.episode_id for e in loader.episodes} == {0, 1}
    b = loader.host_batch(0, 0)
    for row in range(4):
        eid, t = int(b["state"][row, 0]), int(b["state"][row, 1])
        q = t // 8
        assert b["return"][row] == pytest.approx(returns[eid][q])
    held = WindowLoader(store, LoaderConfig(batch_size=4, kinds=("rollout",), exclude_episodes=(1,)), prefetch=0)
    assert [e.episode_id for e in held.episodes] == [0]  # a held-out split leaves the loader
    with pytest.raises(KeyError, match="'value'"):
        WindowLoader(store, LoaderConfig(batch_size=4, return_annotation="value"))


def test_conditioned_prompts(store):
    advantage = pytest.importorskip("recap_jax.advantage")
    labels = {0: np.array([1, 0, -1, 1, 0, 1, 1], np.int8)}
    store.write_annotation("label", labels)
    loader = WindowLoader(store, LoaderConfig(batch_size=15, label_annotation="label", emit_uncond=True), prefetch=0)
    b = loader.host_batch(0, 0)
    tok = ByteTokenizer(64)
    for row in range(15):
        eid, t = int(b["state"][row, 0]), int(b["state"][row, 1])
        label = int(labels[0][t // 8]) if eid == 0 else -1
        want = advantage.format_prompt(PROMPT, None if label < 0 else label)
        assert tok.decode(b["prompt_ids"][row])[0] == want
        assert tok.decode(b["uncond_prompt_ids"][row])[0] == PROMPT
        assert b["prompt_mask"][row].sum() == len(want.encode()) + 2
    assert any("high" in s for s in tok.decode(b["prompt_ids"]))


def test_norm_stats(store):
    stats = norm_stats(store)
    eps = store.load()
    np.testing.assert_array_equal(stats["state_min"], np.min([e.states.min(0) for e in eps], 0))
    np.testing.assert_array_equal(stats["action_max"], np.max([e.actions.max(0) for e in eps], 0))
    assert stats["state_max"].shape == (32,) and stats["action_min"].shape == (36,)
    demo = norm_stats(store, kinds=("demo",))
    np.testing.assert_array_equal(demo["action_min"], eps[2].actions.min(0))
    with pytest.raises(ValueError, match="at least one"):
        norm_stats([])
