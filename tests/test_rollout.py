"""Rollouts: replay equivalence, termination/freezing, restart after a crash, no recompiles, evaluation keys."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from recap_jax import rollout
from recap_jax.data import EpisodeStore
from recap_jax.models.tokenizer import ByteTokenizer

TA = 4
PROMPT = "bend to pick up the cracker box"


@struct.dataclass
class FakeState:
    obs: dict
    reward: jax.Array
    done: jax.Array
    metrics: dict
    info: dict


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    episode_length: int = 18
    camera: bool = False


class FakeEnv:
    """A tiny env with the G1BendPick contract: x' = x + 0.1·a[:32]; success x0 > 1, fall x1 < −1."""

    action_size = 36
    state_size = 32

    def __init__(self, episode_length=18):
        self.config = FakeConfig(episode_length)

    def reset(self, key):
        x = jax.random.uniform(key, (32,), minval=-0.5, maxval=0.5)
        z = jnp.zeros((), jnp.float32)
        info = {"step": jnp.zeros((), jnp.int32), "truncated": z}
        return FakeState(
            {"state": x, "privileged": {"t": jnp.zeros((), jnp.int32)}},
            z,
            z,
            {"success": z, "lift": z, "fell": z},
            info,
        )

    def step(self, state, action):
        x = state.obs["state"] + 0.1 * action[:32]
        t = state.info["step"] + 1
        success, fell = x[0] > 1.0, x[1] < -1.0
        term = success | fell
        trunc = (t >= self.config.episode_length) & ~term
        f = lambda b: b.astype(jnp.float32)
        new = FakeState(
            {"state": x, "privileged": {"t": t}},
            f(success),
            f(term | trunc),
            {"success": f(success), "lift": f(success), "fell": f(fell & ~success)},
            {"step": t, "truncated": f(trunc)},
        )
        return jax.tree.map(lambda a, b: jnp.where(state.done > 0, a, b), state, new)

    def render(self, state):
        x = state.obs["state"]
        px = jnp.clip(x[:3] * 100 + 128, 0, 255).astype(jnp.uint8)
        img = jnp.broadcast_to(px, (5, 6, 3))
        return img.at[0, 0, 0].set(state.info["step"].astype(jnp.uint8))


def fake_act(params, obs, prompt_ids, key, *, beta=1.0):
    """Goes for success when x2 > 0.1, falls when x2 < −0.1, dithers otherwise; prompt and β shift it."""
    x = obs["state"]
    b = x.shape[0]
    noise = 0.2 * beta * jax.random.normal(key, (b, 30, 36))
    go = jnp.where(x[:, 2] > 0.1, 1.0, 0.0) * params["w"] * beta
    fall = jnp.where(x[:, 2] < -0.1, -1.0, 0.0) * params["w"]
    base = jnp.zeros((b, 30, 36)).at[:, :, 0].set(go[:, None]).at[:, :, 1].set(fall[:, None])
    return base + noise + 1e-5 * prompt_ids.sum(-1).astype(jnp.float32)[:, None, None]


PARAMS = {"w": jnp.float32(2.0)}


def _replay(env, eid, seed=0, beta=1.0, namespace=rollout.COLLECT):
    """Step-by-step host loop with the same keys: the reference the jitted wave must match."""
    ids, _ = ByteTokenizer().encode(PROMPT)
    k = rollout.episode_key(seed, namespace, eid)
    state = env.reset(jax.random.fold_in(k, 0))
    pk = jax.random.fold_in(k, 1)
    states, actions, images = [], [], []
    q = 0
    while not bool(state.done):
        images.append(np.asarray(env.render(state)))
        obs = jax.tree.map(lambda a: a[None], {**state.obs, "image": env.render(state)})
        chunk = fake_act(PARAMS, obs, jnp.asarray(ids), jax.random.fold_in(pk, q), beta=beta)[0]
        for j in range(TA):
            if bool(state.done):
                break
            states.append(np.asarray(state.obs["state"]))
            actions.append(np.asarray(chunk[j]))
            state = env.step(state, chunk[j])
        q += 1
    return state, np.array(states), np.array(actions), np.array(images)


@pytest.fixture(scope="module")
def env():
    return FakeEnv()


@pytest.fixture(scope="module")
def collected(env, tmp_path_factory):
    store = EpisodeStore(tmp_path_factory.mktemp("ro") / "store", create=True)
    summary = rollout.collect(env, fake_act, PARAMS, store, 10, prompt=PROMPT, num_envs=4, ta=TA, progress=False)
    return store, summary


def test_records_match_step_by_step_replay(env, collected):
    store, summary = collected
    assert summary["collected"] == 10 and len(store) == 10
    eps = {e.episode_id: e for e in store.load()}
    causes = set()
    for eid in (0, 1, 2, 3, 7, 9):
        e = eps[eid]
        final, states, actions, images = _replay(env, eid)
        assert e.n_steps == int(final.info["step"]) == len(states)
        assert e.success == bool(final.metrics["success"])
        np.testing.assert_allclose(e.states, states, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(e.actions, actions, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(e.images, images)
        np.testing.assert_array_equal(e.image_steps, np.arange(len(images)) * TA)
        assert e.prompt == PROMPT and e.tags["kind"] == "rollout"
        causes.add((bool(final.metrics["success"]), bool(final.metrics["fell"]), bool(final.info["truncated"])))
    # the six episodes cover early success, early failure and timeout
    assert len(causes) >= 2
    n = np.array([e.n_steps for e in eps.values()])
    assert n.min() < env.config.episode_length and n.max() == env.config.episode_length


def test_restart_after_crash_reaches_exact_count(env, collected, tmp_path):
    ref = {e.episode_id: e for e in collected[0].load()}

    class CrashingStore(EpisodeStore):
        appends = 0

        def append(self, episodes):
            CrashingStore.appends += 1
            if CrashingStore.appends == 2:
                raise RuntimeError("simulated crash")
            return super().append(episodes)

    store = CrashingStore(tmp_path / "s", create=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rollout.collect(env, fake_act, PARAMS, store, 10, prompt=PROMPT, num_envs=3, ta=TA, progress=False)
    assert len(store) == 3
    summary = rollout.collect(env, fake_act, PARAMS, store, 10, prompt=PROMPT, num_envs=3, ta=TA, progress=False)
    assert summary["skipped"] == 3 and summary["collected"] == 7
    ids = store.episode_ids()
    assert sorted(ids) == list(range(10)) and len(ids) == len(set(ids))
    # an episode depends on its key only, not on its wave: same data as the 4-env collection
    for e in store.load():
        np.testing.assert_array_equal(e.states, ref[e.episode_id].states)
        np.testing.assert_array_equal(e.images, ref[e.episode_id].images)
    again = rollout.collect(env, fake_act, PARAMS, store, 10, prompt=PROMPT, num_envs=3, ta=TA, progress=False)
    assert again["collected"] == 0 and len(store) == 10


def test_collect_given_ids(env, collected, tmp_path):
    """``episode_ids`` collects exactly those ids, each with its own key (the same data as the range collection)."""
    ref = {e.episode_id: e for e in collected[0].load()}
    store = EpisodeStore(tmp_path / "s", create=True)
    ids = [7, 1, 4]
    summary = rollout.collect(
        env, fake_act, PARAMS, store, 0, prompt=PROMPT, num_envs=2, ta=TA, progress=False, episode_ids=ids
    )
    assert summary["requested"] == 3 and summary["collected"] == 3 and sorted(store.episode_ids()) == [1, 4, 7]
    for e in store.load():
        np.testing.assert_array_equal(e.states, ref[e.episode_id].states)
    with pytest.raises(ValueError, match="distinct"):
        rollout.collect(env, fake_act, PARAMS, store, 0, prompt=PROMPT, ta=TA, progress=False, episode_ids=[2, 2])


def test_prompt_beta_params_do_not_recompile(env):
    key = jax.random.fold_in(jax.random.key(0), rollout.COLLECT)
    ids = jnp.arange(2)
    p1 = np.asarray(ByteTokenizer().encode([PROMPT] * 2)[0])
    p2 = np.asarray(ByteTokenizer().encode(["advantage: high. " + PROMPT] * 2)[0])
    first = rollout.run_wave(env, fake_act, PARAMS, p1, 1.0, key, ids, ta=TA)
    size = rollout._wave_jit._cache_size()
    outs = [
        rollout.run_wave(env, fake_act, PARAMS, p2, 1.0, key, ids, ta=TA),
        rollout.run_wave(env, fake_act, PARAMS, p1, 1.7, key, ids, ta=TA),
        rollout.run_wave(env, fake_act, {"w": jnp.float32(0.5)}, p1, 1.0, key, ids, ta=TA),
    ]
    assert rollout._wave_jit._cache_size() == size
    for out in outs:  # each condition really changed the actions
        assert not np.allclose(out["actions"], first["actions"])


def test_evaluate_held_out_keys_and_order(env, collected):
    res = rollout.evaluate(env, fake_act, PARAMS, 7, prompt=PROMPT, num_envs=3, ta=TA, progress=False)
    np.testing.assert_array_equal(res["episode_ids"], np.arange(7))
    assert res["success"].dtype == bool and res["n_steps"].dtype == np.int32 and res["cause"].dtype == np.int8
    for eid in (0, 4, 6):
        final, states, _, _ = _replay(env, eid, namespace=rollout.EVAL)
        assert res["n_steps"][eid] == len(states)
        assert res["success"][eid] == bool(final.metrics["success"])
        want = 0 if final.metrics["success"] else (2 if final.metrics["fell"] else 1)
        assert res["cause"][eid] == want
    same = rollout.evaluate(env, fake_act, PARAMS, 7, prompt=PROMPT, num_envs=7, ta=TA, progress=False)
    for k in res:
        np.testing.assert_array_equal(res[k], same[k])
    # evaluation and collection initial states differ for the same index
    coll = {e.episode_id: e for e in collected[0].load()}
    ev0 = env.reset(jax.random.fold_in(rollout.episode_key(0, rollout.EVAL, 0), 0)).obs["state"]
    assert not np.allclose(coll[0].states[0], ev0)


def test_bad_arguments_raise(env):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="camera=False"):
        cam = FakeEnv()
        object.__setattr__(cam, "config", FakeConfig(camera=True))
        rollout.run_wave(cam, fake_act, PARAMS, np.zeros((2, 8), np.int32), 1.0, key, np.arange(2), ta=TA)
    with pytest.raises(ValueError, match="prompt_ids"):
        rollout.run_wave(env, fake_act, PARAMS, np.zeros((3, 8), np.int32), 1.0, key, np.arange(2), ta=TA)
    with pytest.raises(ValueError, match="act must return"):
        rollout.run_wave(env, fake_act, PARAMS, np.zeros((2, 8), np.int32), 1.0, key, np.arange(2), ta=31)


def test_loader_windows_are_what_the_policy_saw_and_did(env, collected):
    """Train/rollout alignment: the loader's window at imaged step q holds the state and image the policy was
    queried with at decision point q, and its action chunk starts with that query's chunk (chunk[0] is the
    action executed at the window's own step; no off-by-one between state, image and actions)."""
    from recap_jax.data import LoaderConfig, WindowLoader

    store, _ = collected
    ids, _ = ByteTokenizer().encode(PROMPT)
    eps = [e for e in store.load() if e.episode_id in (0, 3, 9)]
    loader = WindowLoader(eps, LoaderConfig(batch_size=1), prefetch=0, process_index=0, process_count=1)
    windows = {}
    for w in range(loader.num_windows):
        ep = loader.episodes[loader._ep_index[w]]
        windows[(ep.episode_id, int(loader._q_index[w]))] = w
    checked = 0
    for e in eps:
        k = rollout.episode_key(0, rollout.COLLECT, e.episode_id)
        state = env.reset(jax.random.fold_in(k, 0))
        pk = jax.random.fold_in(k, 1)
        for q in range(e.image_steps.size):
            obs = {**state.obs, "image": env.render(state)}
            chunk = fake_act(PARAMS, jax.tree.map(lambda a: a[None], obs), jnp.asarray(ids), jax.random.fold_in(pk, q))[
                0
            ]
            loader.window_indices = lambda epoch, step, w=windows[(e.episode_id, q)]: np.array([w])
            b = loader.host_batch(0, 0)
            np.testing.assert_allclose(b["state"][0], np.asarray(obs["state"]), atol=1e-6)
            np.testing.assert_array_equal(b["image"][0], np.asarray(obs["image"]))
            n = int(b["action_mask"][0].sum())
            np.testing.assert_allclose(b["actions"][0, : min(TA, n)], np.asarray(chunk[: min(TA, n)]), atol=1e-6)
            checked += 1
            for j in range(TA):
                if bool(state.done):
                    break
                state = env.step(state, chunk[j])
    assert checked >= 6


def test_paired_act_executes_one_chunk_and_records_the_other(env):
    """act -> (execute, label): the trajectory is the executed chunk's, the recorded actions the label's
    (DART-style demos: a noised expert drives, the clean one labels)."""

    def paired(params, obs, prompt_ids, key, *, beta=1.0):
        run = fake_act(params, obs, prompt_ids, key, beta=beta)
        return run, run + 100.0

    ids = np.arange(4, dtype=np.int32)
    rows = np.broadcast_to(ByteTokenizer().encode(PROMPT)[0], (4, 64))
    key = jax.random.fold_in(jax.random.key(0), rollout.COLLECT)
    ref = jax.device_get(rollout.run_wave(env, fake_act, PARAMS, rows, 1.0, key, ids, ta=TA))
    out = jax.device_get(rollout.run_wave(env, paired, PARAMS, rows, 1.0, key, ids, ta=TA))
    np.testing.assert_array_equal(out["n_steps"], ref["n_steps"])
    np.testing.assert_array_equal(out["states"], ref["states"])
    for i, n in enumerate(out["n_steps"]):
        np.testing.assert_allclose(out["actions"][i, :n], ref["actions"][i, :n] + 100.0, rtol=1e-6)


# ---- closed-loop RTC with the learned policy ------------------------------------------------------


class ImageEnv(FakeEnv):
    """FakeEnv with 32×32 frames (a size the tiny policy reads)."""

    def render(self, state):
        return jnp.broadcast_to(super().render(state)[:1, :1], (32, 32, 3))


@pytest.fixture(scope="module")
def rtc_setup():
    from recap_jax import policy

    cfg = policy.PolicyConfig(image_size=(32, 32), chunk=8, execute=TA, rtc="psi0")
    # dims 0 and 1 (success / fall in FakeEnv) get a tiny range, so every episode runs to the end
    span = jnp.full((36,), 2.0).at[:2].set(0.01)
    norm = policy.NormStats(-jnp.ones(32), jnp.ones(32), -span, span)

    def make(seed):
        p = policy.init_policy(cfg, jax.random.key(seed), norm)
        leaves, treedef = jax.tree.flatten(p.model)  # off the zero-init head, so velocities are not 0
        keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
        return p.replace(
            model=jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
        )

    return policy, make(0), make(1)


def test_rtc_rollout_feeds_the_previous_chunk(rtc_setup):
    """rollout(rtc=True) with ``policy.sample_actions_rtc``: the first query of an episode samples plainly,
    every later one gets the previous chunk's normalised [Ta:] as Ψ0's clean prefix (so its chunk starts
    with the previous chunk's [Ta:]); matches a step-by-step host replay; rtc="off" differs after the
    first query; params, prompt and β do not recompile."""
    policy, params, other = rtc_setup
    env = ImageEnv(episode_length=12)
    act = policy.sample_actions_rtc
    ids = jnp.arange(3)
    tok = ByteTokenizer()
    rows = np.broadcast_to(tok.encode(PROMPT)[0], (3, 64))
    key = jax.random.fold_in(jax.random.key(0), rollout.COLLECT)
    out = jax.device_get(rollout.run_wave(env, act, params, rows, 1.0, key, ids, ta=TA, rtc=True))
    assert (out["n_steps"] == 12).all()
    size = rollout._wave_jit._cache_size()

    # host replay of episode 1 with the same keys
    sample, plain = jax.jit(policy.sample_actions_rtc), jax.jit(policy.sample_actions)
    k = rollout.episode_key(0, rollout.COLLECT, 1)
    state = env.reset(jax.random.fold_in(k, 0))
    pk = jax.random.fold_in(k, 1)
    prev, chunks = None, []
    for q in range(3):
        obs = jax.tree.map(lambda a: a[None], {**state.obs, "image": env.render(state), "t": state.info["step"]})
        qk = jax.random.fold_in(pk, q)
        if prev is None:
            chunk, prev = sample(params, obs, jnp.asarray(rows[:1]), qk)
            np.testing.assert_allclose(chunk, plain(params, obs, jnp.asarray(rows[:1]), qk), atol=1e-6)
        else:
            chunk, prev = sample(params, obs, jnp.asarray(rows[:1]), qk, prev_chunk=prev, prev_valid=jnp.ones(1, bool))
        chunks.append(np.asarray(chunk[0]))
        np.testing.assert_allclose(out["actions"][1, q * TA : (q + 1) * TA], chunks[-1][:TA], atol=1e-5)
        for j in range(TA):
            state = env.step(state, chunk[0, j])
    d = 8 - TA
    for q in (1, 2):  # the new chunk starts with the previous one's [Ta:] (last Euler step σ 0.001 → 0 aside)
        np.testing.assert_allclose(chunks[q][:d], chunks[q - 1][TA:], atol=0.05)
        assert np.abs(chunks[q][:d] - chunks[q - 1][TA:]).max() < 0.1 * np.abs(chunks[q - 1][TA:]).max()

    off = jax.device_get(
        rollout.run_wave(env, act, policy.replace_config(params, rtc="off"), rows, 1.0, key, ids, ta=TA, rtc=True)
    )
    np.testing.assert_allclose(off["actions"][:, :TA], out["actions"][:, :TA], atol=1e-6)
    assert np.abs(off["actions"][:, TA:] - out["actions"][:, TA:]).max() > 1e-2
    # other params (same config), another prompt, another β: the same compiled wave
    rows2 = np.broadcast_to(tok.encode("advantage: high. " + PROMPT)[0], (3, 64))
    for p, r, b in ((other, rows, 1.0), (params, rows2, 1.0), (params, rows, 0.7)):
        rollout.run_wave(env, act, p, r, b, key, ids, ta=TA, rtc=True)
    assert rollout._wave_jit._cache_size() == size + 1  # + the rtc="off" config (a static field of params)
    with pytest.raises(ValueError, match="rtc=True"):
        rollout.run_wave(env, fake_act, PARAMS, rows, 1.0, key, ids, ta=TA, rtc=True)
