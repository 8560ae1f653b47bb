"""Policy: normalisation, sampling (CFG, inpainting), loss, indicator dropout, jit behaviour, learning."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recap_jax import flow
from recap_jax import policy as P
from recap_jax.advantage import format_prompt
from recap_jax.data import lerobot
from recap_jax.psi0_stats import STAT_NAMES as STATS6

B = 2
_sample = jax.jit(P.sample_actions)
_loss = jax.jit(chex.assert_max_traces(P.policy_loss, n=1))  # every call below shares one trace
IMG = (32, 32)
BARE = "bend to pick up the cracker box"
HIGH = format_prompt(BARE, 1)  # "advantage: high. bend to pick up the cracker box"
LOW = format_prompt(BARE, 0)


@pytest.fixture(scope="module")
def cfg():
    return P.PolicyConfig(image_size=IMG, prompt_max_len=64, indicator_dropout=0.3)


@pytest.fixture(scope="module")
def params(cfg):
    # Moved off the adaLN-Zero / zero-head initialisation so that every path carries signal.
    return jax.jit(lambda key: _perturb(P.init_policy(cfg, key), jax.random.key(7)))(jax.random.key(0))


def _perturb(params, key):
    leaves, treedef = jax.tree.flatten(params.model)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return params.replace(model=jax.tree.unflatten(treedef, noisy))


def _obs(seed=0, b=B):
    rng = np.random.default_rng(seed)
    return {
        "state": jnp.asarray(rng.normal(size=(b, 32)), jnp.float32),
        "image": jnp.asarray(rng.integers(0, 256, size=(b, *IMG, 3)), jnp.uint8),
    }


def _ids(cfg, text, b=B):
    return P.tokenize(cfg, [text] * b)


def _batch(cfg, seed=0, b=B):
    rng = np.random.default_rng(seed)
    obs = _obs(seed, b)
    ids, mask = _ids(cfg, HIGH, b)
    uids, umask = _ids(cfg, BARE, b)
    return {
        **obs,
        "prompt_ids": jnp.asarray(ids),
        "prompt_mask": jnp.asarray(mask),
        "uncond_prompt_ids": jnp.asarray(uids),
        "uncond_prompt_mask": jnp.asarray(umask),
        "actions": jnp.asarray(rng.normal(size=(b, 30, 36)), jnp.float32),
        "action_mask": jnp.ones((b, 30), bool),
        "label": jnp.ones((b,), jnp.int8),
    }


def test_norm_stats_roundtrip_clip_and_constant_dims():
    rng = np.random.default_rng(0)
    states = rng.uniform(-2, 3, size=(100, 32)).astype(np.float32)
    actions = rng.uniform(-1, 5, size=(100, 36)).astype(np.float32)
    actions[:, 5] = 0.75  # constant dim
    ns = P.NormStats.from_arrays(states, actions, P.MIN_SPAN, P.STATE_MIN_SPAN)
    y = P.normalize(actions, ns.action_min, ns.action_max)
    assert float(jnp.min(y[:, :5])) == pytest.approx(-1.0) and float(jnp.max(y[:, :5])) == pytest.approx(1.0)
    np.testing.assert_allclose(y[:, 5], 0.0, atol=1e-3)  # a constant dim normalises to 0 ...
    np.testing.assert_allclose(P.unnormalize(y, ns.action_min, ns.action_max), actions, atol=1e-5)
    noise = jnp.asarray(rng.normal(size=(100, 36)) * 3.0, jnp.float32)  # ... and keeps outputs near its value
    pinned = P.unnormalize(noise, ns.action_min, ns.action_max)[:, 5]
    np.testing.assert_allclose(pinned, 0.75 + noise[:, 5] * 0.5 * P.MIN_SPAN, atol=1e-5)  # no clipping (Ψ0)
    # Default (Ψ0): no widening, a constant action dim passes through.
    plain = P.NormStats.from_arrays(states, actions)
    np.testing.assert_allclose(P.normalize(actions, plain.action_min, plain.action_max)[:, 5], 0.75)
    ident = P.NormStats.identity()
    np.testing.assert_allclose(P.unnormalize(noise, ident.action_min, ident.action_max), noise)  # identity passes
    out = P.normalize(actions + 100.0, ns.action_min, ns.action_max)
    assert float(jnp.max(out[:, :5])) == 1.0  # clipped
    with pytest.raises(ValueError, match="states"):
        P.NormStats.from_arrays(states[:0], actions)


def test_norm_stats_state_jitter_dims_are_not_blown_up():
    """A state dim the data only jitters (a joint nobody commands) must not become a full-scale input.

    With plain min-max over 2 mrad of jitter, a 5 mrad closed-loop deviation normalised to ±1 (clipped
    from ±5); the closed-loop policy then saw out-of-range values on most decision points.
    """
    rng = np.random.default_rng(0)
    states = rng.uniform(-1.0, 1.0, size=(200, 32)).astype(np.float32)
    states[:, 14] = -0.3 + rng.uniform(-0.001, 0.001, size=200)  # jitter only
    states[:, 31] = rng.uniform(0.45, 0.75, size=200)  # a real 0.3 m range stays min-max
    ns = P.NormStats.from_arrays(states, rng.normal(size=(200, 36)), P.MIN_SPAN, P.STATE_MIN_SPAN)
    y = P.normalize(states, ns.state_min, ns.state_max)
    assert float(jnp.min(y[:, 31])) == pytest.approx(-1.0) and float(jnp.max(y[:, 31])) == pytest.approx(1.0)
    assert float(jnp.max(jnp.abs(y[:, 14]))) < 0.02
    moved = states.copy()
    moved[:, 14] += 0.005
    dy = P.normalize(moved, ns.state_min, ns.state_max)[:, 14] - y[:, 14]
    assert float(jnp.max(jnp.abs(dy))) <= 2 * 0.005 / P.STATE_MIN_SPAN + 1e-5
    # constant state dims normalise to 0 (not passed through raw), with and without widening
    states[:, 3] = 0.7
    ns = P.NormStats.from_arrays(states, rng.normal(size=(200, 36)), P.MIN_SPAN, P.STATE_MIN_SPAN)
    np.testing.assert_allclose(P.normalize(states, ns.state_min, ns.state_max)[:, 3], 0.0, atol=1e-5)
    plain = P.NormStats.from_arrays(states, rng.normal(size=(200, 36)))
    np.testing.assert_array_equal(P.normalize_states(states, plain.state_min, plain.state_max)[:, 3], 0.0)


def test_psi0_normalisation_rules_and_stats(tmp_path):
    import json

    lo, hi = np.array([0.0, -1.0, 2.0], np.float32), np.array([2.0, 1.0, 2.0], np.float32)
    x = np.array([[1.0, 3.0, 7.0], [np.nan, -0.5, 2.0]], np.float32)
    s = P.normalize_states(x, lo, hi)
    np.testing.assert_allclose(s, [[0.0, 1.0, 0.0], [0.0, -0.5, 0.0]])  # clipped, constant → 0, NaN → 0
    a = P.normalize(x[:1], lo, hi)
    np.testing.assert_allclose(a, [[0.0, 1.0, 7.0]])  # actions: clipped, constant dims pass through
    np.testing.assert_allclose(P.unnormalize(jnp.array([[3.0, -2.0, 5.0]]), lo, hi), [[4.0, -2.0, 5.0]])  # no clip
    ident = P.NormStats.identity()
    y = jnp.linspace(-1, 1, 32)[None]
    np.testing.assert_allclose(P.normalize_states(y, ident.state_min, ident.state_max), y, atol=1e-6)
    stats = {
        "action": {k: list(range(36)) if k != "max" else [v + 1 for v in range(36)] for k in STATS6},
        "states": {k: [2.0 if k == "max" else -2.0] * 32 for k in STATS6},
    }
    ns = P.NormStats.from_psi0(stats)
    np.testing.assert_array_equal(ns.action_max - ns.action_min, 1.0)
    path = tmp_path / "stats_psi0.json"
    path.write_text(json.dumps(stats))
    np.testing.assert_array_equal(P.NormStats.from_psi0_file(path, 32, 36).state_min, -2.0)
    with pytest.raises(ValueError, match=r"states\.max"):
        P.NormStats.from_psi0({"action": stats["action"], "states": {k: [0.0] * 32 for k in STATS6 if k != "max"}})
    # one validator with the LeRobot importer: all six statistics, finite, min <= max, equal lengths
    bad = lambda group, stat, v: {**stats, group: {**stats[group], stat: v}}
    for group, stat, v, msg in (
        ("states", "q99", None, r"lack states\.q99"),
        ("action", "std", [0.0] * 35, r"action\.std must be \[36\]"),
        ("states", "mean", [float("nan")] * 32, r"states\.mean has non-finite"),
        ("states", "min", [3.0] * 32, r"states: min > max"),
    ):
        case = bad(group, stat, v)
        if v is None:
            del case[group][stat]
        with pytest.raises(ValueError, match=msg):
            P.NormStats.from_psi0(case)
        path.write_text(json.dumps(case))
        with pytest.raises(ValueError, match=msg):
            lerobot.read_psi0_stats(path)
    path.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"stats_psi0\.json.*action\.mean must be \[30\]"):
        P.NormStats.from_psi0_file(path, 32, 30)


def test_state_padded_to_36(cfg, params):
    s = P.normalize_state(params, _obs()["state"])
    assert s.shape == (B, 36)
    np.testing.assert_array_equal(s[:, 32:], 0.0)


def test_phase_input_reads_the_episode_clock(cfg):
    """phase_steps > 0: t lands in the first padding slot as 2·min(t/phase_steps, 1) − 1 and moves the chunk;
    without t the policy refuses (it would silently see phase −1)."""
    pcfg = P.PolicyConfig(image_size=IMG, prompt_max_len=64, phase_steps=200)
    params = jax.jit(lambda key: _perturb(P.init_policy(pcfg, key), jax.random.key(7)))(jax.random.key(0))
    obs = _obs()
    s = P.normalize_state(params, obs["state"], jnp.array([0, 300]))
    np.testing.assert_allclose(s[:, 32], [-1.0, 1.0])
    np.testing.assert_array_equal(s[:, 33:], 0.0)
    np.testing.assert_allclose(s[:, :32], P.normalize_state(params.replace(config=cfg), obs["state"])[:, :32])
    np.testing.assert_allclose(P.normalize_state(params, obs["state"], jnp.array([50, 100]))[:, 32], [-0.5, 0.0])
    ids, _ = _ids(pcfg, BARE)
    key = jax.random.key(1)
    early = _sample(params, {**obs, "t": jnp.array([0, 0])}, ids, key)
    late = _sample(params, {**obs, "t": jnp.array([150, 150])}, ids, key)
    assert float(jnp.max(jnp.abs(early - late))) > 1e-4
    with pytest.raises(ValueError, match="control step t"):
        P.sample_actions(params, obs, ids, key)
    with pytest.raises(ValueError, match="one control step per state"):
        P.normalize_state(params, obs["state"], jnp.zeros((3,), jnp.int32))
    batch = _batch(pcfg)
    with pytest.raises(ValueError, match="control step t"):
        P.policy_loss(params, batch, key)
    loss, _ = P.policy_loss(params, {**batch, "t": jnp.array([0, 24])}, key)
    assert bool(jnp.isfinite(loss))
    with pytest.raises(ValueError, match="phase_steps"):
        P.PolicyConfig(phase_steps=-1)
    with pytest.raises(ValueError, match="padding slot"):
        P.PolicyConfig(state_dim=36, phase_steps=10)


def test_config_errors():
    with pytest.raises(ValueError, match="context"):
        P.PolicyConfig(action_expert="tiny", encoder="small")
    with pytest.raises(ValueError, match="did you mean 'tiny'"):
        P.PolicyConfig(action_expert="tiyn")
    with pytest.raises(ValueError, match="patch"):
        P.PolicyConfig(image_size=(30, 32))
    with pytest.raises(ValueError, match="indicator_dropout"):
        P.PolicyConfig(indicator_dropout=1.5)


def test_sample_shapes_determinism_jit_eager(cfg, params):
    obs, (ids, _) = _obs(), _ids(cfg, HIGH)
    key = jax.random.key(3)
    eager = P.sample_actions(params, obs, ids, key)
    chex.assert_shape(eager, (B, 30, 36))
    assert eager.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(eager)))
    jitted = _sample(params, obs, ids, key)
    np.testing.assert_allclose(jitted, eager, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(_sample(params, obs, ids, key), jitted)
    other = _sample(params, obs, ids, jax.random.key(4))
    assert float(jnp.max(jnp.abs(other - eager))) > 1e-3


def test_noise_scale_is_a_sampling_temperature(cfg, params):
    """noise_scale multiplies the σ = 1 draw: 1 is the default sampler exactly, a per-row traced scale acts per row,
    and a non-positive number is refused."""
    obs, (ids, _) = _obs(), _ids(cfg, HIGH)
    key = jax.random.key(3)
    plain = P.sample_actions(params, obs, ids, key)
    np.testing.assert_array_equal(P.sample_actions(params, obs, ids, key, noise_scale=1.0), plain)
    hot = P.sample_actions(params, obs, ids, key, noise_scale=2.0)
    assert float(jnp.max(jnp.abs(hot - plain))) > 1e-3
    rows = P.sample_actions(params, obs, ids, key, noise_scale=jnp.array([1.0] + [2.0] * (B - 1)))
    np.testing.assert_allclose(rows[0], plain[0], atol=1e-6)
    np.testing.assert_allclose(rows[1:], hot[1:], atol=1e-6)
    with pytest.raises(ValueError, match="noise_scale must be positive"):
        P.sample_actions(params, obs, ids, key, noise_scale=0.0)


def test_bf16_sampling_close_to_f32(cfg, params):
    obs, ids = _obs(), _ids(cfg, HIGH)[0]
    f32 = _sample(params, obs, ids, jax.random.key(0))
    bf16 = _sample(P.replace_config(params, dtype="bfloat16"), obs, ids, jax.random.key(0))
    assert bf16.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(bf16 - f32)))
    assert 0 < err < 0.1 * float(jnp.max(jnp.abs(f32))), err


def test_prompts_reach_expert_as_different_context(cfg, params):
    obs, key = _obs(), jax.random.key(0)
    outs = [_sample(params, obs, _ids(cfg, t)[0], key) for t in (HIGH, LOW, BARE)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert float(jnp.max(jnp.abs(outs[i] - outs[j]))) > 1e-5
    feats = [P.pooled_features(params, obs["image"], _ids(cfg, t)[0]) for t in (HIGH, LOW, BARE)]
    assert feats[0].shape == (B, 64)
    assert float(jnp.max(jnp.abs(feats[0] - feats[1]))) > 1e-4
    tokens, mask = P.encode_observation(params, obs["image"], *_ids(cfg, HIGH))
    chex.assert_shape(tokens, (B, 4 + 64, 64))
    assert int(mask[0].sum()) == 4 + len(HIGH) + 2


def test_cfg_guidance_rules(cfg, params):
    obs, key = _obs(), jax.random.key(1)
    ids, uids = _ids(cfg, HIGH)[0], _ids(cfg, BARE)[0]
    cond = _sample(params, obs, ids, key)
    # β = 1 with uncond ids is the conditioned policy; β = 2 differs.
    np.testing.assert_allclose(_sample(params, obs, ids, key, beta=1.0, uncond_ids=uids), cond, atol=1e-5)
    guided = _sample(params, obs, ids, key, beta=2.0, uncond_ids=uids)
    assert float(jnp.max(jnp.abs(guided - cond))) > 1e-3
    # β = 0 is the unconditioned policy.
    np.testing.assert_allclose(
        _sample(params, obs, ids, key, beta=0.0, uncond_ids=uids),
        _sample(params, obs, uids, key),
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="uncond_ids"):
        P.sample_actions(params, obs, ids, key, beta=2.0)
    no_drop = P.replace_config(params, indicator_dropout=0.0)
    with pytest.raises(ValueError, match="indicator_dropout"):
        P.sample_actions(no_drop, obs, ids, key, beta=1.5, uncond_ids=uids)


def test_inpainting_prefix(cfg, params):
    rng = np.random.default_rng(0)
    p = P.with_norm_stats(params, P.NormStats.from_arrays(rng.normal(size=(50, 32)), rng.normal(size=(50, 36)) * 2))
    p = P.replace_config(p, rtc="inpaint")
    obs, ids = _obs(), _ids(cfg, HIGH)[0]
    prefix = jnp.asarray(rng.normal(size=(B, 6, 36)), jnp.float32)
    out = _sample(p, obs, ids, jax.random.key(0), prefix=prefix)
    np.testing.assert_array_equal(out[:, :6], prefix)
    # The rest of the chunk is denoised knowing the prefix.
    free = _sample(p, obs, ids, jax.random.key(0))
    assert float(jnp.max(jnp.abs(out[:, 6:] - free[:, 6:]))) > 1e-3
    with pytest.raises(ValueError, match="prefix"):
        P.sample_actions(p, obs, ids, jax.random.key(0), prefix=jnp.zeros((B, 31, 36)))


def test_no_recompile_across_params_prompts_beta(cfg, params):
    obs = _obs()
    ids, uids = _ids(cfg, HIGH)[0], _ids(cfg, BARE)[0]
    _sample(params, obs, ids, jax.random.key(0), beta=1.5, uncond_ids=uids)
    compiled = _sample._cache_size()
    other = P.init_policy(cfg, 5, P.NormStats.from_arrays(np.ones((3, 32)) * [[1], [2], [3]], np.ones((3, 36))))
    for p, prompt, beta in [(other, _ids(cfg, LOW)[0], 2.5), (params, ids, 1.0), (other, ids, 0.5)]:
        _sample(p, obs, prompt, jax.random.key(1), beta=beta, uncond_ids=uids)
    assert _sample._cache_size() == compiled


def test_loss_indicator_dropout_and_masks(cfg, params):
    batch = _batch(cfg)
    loss, metrics = _loss(params, batch, jax.random.key(0))
    assert loss.shape == () and bool(jnp.isfinite(loss))
    assert set(metrics) >= {"loss", "sigma_mean", "indicator_dropped"}
    assert 0.0 <= float(metrics["indicator_dropped"]) <= 1.0
    # Masked steps may hold garbage without changing the loss.
    masked = dict(batch, action_mask=batch["action_mask"].at[:, 20:].set(False))
    garbage = dict(masked, actions=masked["actions"].at[:, 20:].set(1e6))
    key = jax.random.key(2)
    np.testing.assert_allclose(_loss(params, masked, key)[0], _loss(params, garbage, key)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="uncond_prompt_ids"):
        P.policy_loss(params, {k: v for k, v in batch.items() if not k.startswith("uncond")}, key)
    with pytest.raises(ValueError, match="lacks"):
        P.policy_loss(params, {k: v for k, v in batch.items() if k != "action_mask"}, key)


def test_loss_drops_the_indicator_at_the_configured_rate(params):
    """policy_loss's reported dropout rate over 4 keys × 128 examples: 0.3 ± 0.08 (≈ 4 binomial sd), and
    exactly 0 with dropout off; the keys give different draws."""
    loss = jax.jit(P.policy_loss)
    big = _batch(params.config, seed=3, b=128)
    rates = [float(loss(params, big, jax.random.key(k))[1]["indicator_dropped"]) for k in range(4)]
    assert abs(np.mean(rates) - 0.3) < 0.08 and len(set(rates)) > 1
    off = P.replace_config(params, indicator_dropout=0.0)
    assert float(loss(off, big, jax.random.key(0))[1]["indicator_dropped"]) == 0.0


def test_drop_indicator_statistics():
    ids = jnp.ones((4000, 8), jnp.int32)
    mask = jnp.ones((4000, 8), bool)
    u_ids, u_mask = 2 * ids, mask.at[:, 4:].set(False)
    out_ids, out_mask, dropped = jax.jit(P.drop_indicator, static_argnums=1)(
        jax.random.key(0), 0.3, ids, mask, u_ids, u_mask
    )
    assert abs(float(dropped.mean()) - 0.3) < 0.03
    np.testing.assert_array_equal(out_ids[:, 0], np.where(dropped, 2, 1))
    np.testing.assert_array_equal(out_mask[:, 5], ~dropped)
    with pytest.raises(ValueError, match="same shape"):
        P.drop_indicator(jax.random.key(0), 0.3, ids, mask, u_ids[:, :4], u_mask)


def test_gradients_reach_every_parameter_but_discarded_projection_and_not_stats(cfg, params):
    rng = np.random.default_rng(0)
    p = P.with_norm_stats(params, P.NormStats.from_arrays(rng.normal(size=(9, 32)), rng.normal(size=(9, 36))))
    grads = jax.jit(jax.grad(lambda q: P.policy_loss(q, _batch(cfg), jax.random.key(0))[0]))(p)
    for leaf in jax.tree.leaves(grads.norm):
        np.testing.assert_array_equal(leaf, 0.0)
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads.model))[0]
    zero = sorted("/".join(str(k.key) for k in path) for path, g in flat if not bool(jnp.any(g != 0)))
    last = f"expert/blocks/{cfg.expert_config().depth - 1}/add_q_proj"
    assert zero == [f"{last}/bias", f"{last}/kernel"], zero
    mask = P.trainable_mask(p)
    assert all(jax.tree.leaves(mask.model)) and not any(jax.tree.leaves(mask.norm))


def test_psi0_policy_shapes_without_allocation():
    cfg = P.PolicyConfig(action_expert="psi0", encoder="base", dtype="bfloat16", indicator_dropout=0.3)
    abstract = P.abstract_policy(cfg)
    n_expert = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.model["expert"]))
    assert n_expert == 490_039_128
    obs = {
        "state": jax.ShapeDtypeStruct((1, 32), jnp.float32),
        "image": jax.ShapeDtypeStruct((1, *cfg.image_size, 3), jnp.uint8),
    }
    ids = jax.ShapeDtypeStruct((1, cfg.prompt_max_len), jnp.int32)
    out = jax.eval_shape(
        lambda p, o, i, k: P.sample_actions(p, o, i, k, beta=1.5, uncond_ids=i), abstract, obs, ids, jax.random.key(0)
    )
    assert (out.shape, out.dtype) == ((1, 30, 36), jnp.float32)
    feats = jax.eval_shape(P.encode_observation, abstract, obs["image"], ids, None)
    assert feats[0].shape == (1, 60 + cfg.prompt_max_len, 2048)


@pytest.mark.slow
def test_tiny_policy_fits_fixed_pairs():
    """4 fixed (observation, chunk) pairs: the flow loss falls ≥ 10× and 10-step samples land on the targets
    (mean |error| ≤ 0.15 overall and ≤ 0.25 per pair, targets spanning about [−1, 1])."""
    import optax

    cfg = P.PolicyConfig(image_size=(16, 16), prompt_max_len=16, state_dropout=0.0, context_dropout=0.0)
    k, steps = 4, 600
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 1.0, 30)[None, :, None]
    actions = rng.uniform(-0.3, 0.3, (k, 1, 36)) + rng.uniform(0.2, 0.8, (k, 1, 36)) * np.sin(
        2 * np.pi * t + rng.uniform(0, 2 * np.pi, (k, 1, 36))
    )
    actions = actions.astype(np.float32)
    ids, mask = P.tokenize(cfg, [f"pick box {i}" for i in range(k)])
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (k, 16, 16, 3)), jnp.uint8),
        "state": jnp.asarray(rng.normal(size=(k, 32)), jnp.float32),
        "prompt_ids": jnp.asarray(ids),
        "prompt_mask": jnp.asarray(mask),
        "actions": jnp.asarray(actions),
        "action_mask": jnp.ones((k, 30), bool),
    }
    params = P.init_policy(cfg, 0, P.NormStats.from_arrays(np.asarray(batch["state"]), actions))
    tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    replicated = jax.tree.map(lambda x: jnp.concatenate([x] * 4), batch)  # 4 noise draws per pair per step

    def loss_of(model, b, key):
        return P.policy_loss(params.replace(model=model), b, key)[0]

    @jax.jit
    def eval_loss(model):
        return jnp.mean(jax.vmap(lambda key: loss_of(model, batch, key))(jax.random.split(jax.random.key(99), 16)))

    # 600 steps in one program: LLVM -O2 for it (the session compiles at -O0, tests/conftest.py): 44 s -> 26 s cold.
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 2})
    def train(model):
        def step(carry, key):
            model, opt = carry
            grads = jax.grad(loss_of)(model, replicated, key)
            updates, opt = tx.update(grads, opt, model)
            return (optax.apply_updates(model, updates), opt), None

        (model, _), _ = jax.lax.scan(step, (model, tx.init(model)), jax.random.split(jax.random.key(1), steps))
        return model

    before = float(eval_loss(params.model))
    trained = params.replace(model=train(params.model))
    after = float(eval_loss(trained.model))
    assert after * 10 <= before, (before, after)
    obs = {"state": batch["state"], "image": batch["image"]}
    err = np.abs(np.asarray(_sample(trained, obs, batch["prompt_ids"], jax.random.key(5))) - actions)
    assert err.mean() <= 0.15 and err.mean(axis=(1, 2)).max() <= 0.25, err.mean(axis=(1, 2))


def test_psi0_rtc_prefix(cfg, params):
    rng = np.random.default_rng(1)
    p = P.with_norm_stats(params, P.NormStats.from_arrays(rng.normal(size=(50, 32)), rng.normal(size=(50, 36)) * 2))
    assert p.config.rtc == "psi0"
    obs, ids = _obs(), _ids(cfg, HIGH)[0]
    prefix = jnp.asarray(rng.normal(size=(B, 6, 36)), jnp.float32)
    key = jax.random.key(3)
    free = _sample(p, obs, ids, key)
    rtc = _sample(p, obs, ids, key, prefix=prefix)
    assert float(jnp.max(jnp.abs(rtc[:, 6:] - free[:, 6:]))) > 1e-3  # conditioned on the prefix
    # A batch mixing a first query (no prefix) with later ones: each row as if alone.
    valid = jnp.arange(B) > 0
    mixed = _sample(p, obs, ids, key, prefix=prefix, prefix_valid=valid)
    np.testing.assert_allclose(mixed[0], free[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1:], rtc[1:], atol=1e-5)
    with pytest.raises(ValueError, match="rtc='off'"):
        P.sample_actions(P.replace_config(p, rtc="off"), obs, ids, key, prefix=prefix)
    with pytest.raises(ValueError, match="prefix_valid"):
        P.sample_actions(p, obs, ids, key, prefix=prefix, prefix_valid=jnp.ones((B + 1,), bool))


_sample_rtc = jax.jit(P.sample_actions_rtc)


def test_sample_actions_rtc_feeds_the_normalised_previous_chunk(cfg, params):
    """The closed-loop act (rollout, server): the previous chunk's normalised [Ta:] is the prefix, fed as
    the sampler made it (not clipped by a round trip through absolute units); no previous chunk, an
    invalid row or rtc="off" sample plainly; "inpaint" starts with exactly the un-normalised prefix."""
    rng = np.random.default_rng(4)
    p = P.with_norm_stats(params, P.NormStats.from_arrays(rng.normal(size=(50, 32)), rng.normal(size=(50, 36)) * 2))
    obs, ids = _obs(), _ids(cfg, HIGH)[0]
    key = jax.random.key(8)
    d = cfg.chunk - cfg.execute
    free = _sample(p, obs, ids, key)
    first, first_n = _sample_rtc(p, obs, ids, key)
    np.testing.assert_array_equal(first, free)
    np.testing.assert_allclose(P.unnormalize_actions(p, first_n), first, atol=1e-6)
    # within [-1, 1] the normalised feed equals the absolute prefix of sample_actions
    prev = jnp.asarray(rng.uniform(-0.9, 0.9, size=(B, cfg.chunk, 36)), jnp.float32)
    a, a_n = _sample_rtc(p, obs, ids, key, prev_chunk=prev, prev_valid=jnp.ones(B, bool))
    ref = _sample(p, obs, ids, key, prefix=P.unnormalize_actions(p, prev[:, cfg.execute :]))
    np.testing.assert_allclose(a, ref, atol=1e-5)
    assert float(jnp.max(jnp.abs(a[:, d:] - free[:, d:]))) > 1e-3
    # the chunk starts with the prefix, moved only by the last Euler step (σ 0.001 → 0)
    np.testing.assert_allclose(a_n[:, :d], prev[:, cfg.execute :], atol=0.02)
    # outside [-1, 1] (the sampler's output is not clipped) the prefix is not clipped either
    far = prev.at[:, cfg.execute :].multiply(3.0)
    b_far = _sample_rtc(p, obs, ids, key, prev_chunk=far, prev_valid=jnp.ones(B, bool))[1]
    np.testing.assert_allclose(b_far[:, :d], far[:, cfg.execute :], atol=0.02)
    # first queries of an episode (prev_valid False) sample plainly, row by row
    mixed = _sample_rtc(p, obs, ids, key, prev_chunk=prev, prev_valid=jnp.arange(B) > 0)[0]
    np.testing.assert_allclose(mixed[0], free[0], atol=1e-5)
    np.testing.assert_allclose(mixed[1:], a[1:], atol=1e-5)
    off = _sample_rtc(P.replace_config(p, rtc="off"), obs, ids, key, prev_chunk=prev, prev_valid=jnp.ones(B, bool))
    np.testing.assert_allclose(off[0], free, atol=1e-5)
    inp = _sample_rtc(P.replace_config(p, rtc="inpaint"), obs, ids, key, prev_chunk=prev, prev_valid=jnp.ones(B, bool))
    np.testing.assert_allclose(inp[0][:, :d], P.unnormalize_actions(p, prev[:, cfg.execute :]), atol=1e-5)
    np.testing.assert_allclose(inp[1][:, :d], prev[:, cfg.execute :], atol=1e-6)
    with pytest.raises(ValueError, match="prev_chunk must be"):
        P.sample_actions_rtc(p, obs, ids, key, prev_chunk=prev[:, 1:])
    with pytest.raises(ValueError, match="prev_valid needs"):
        P.sample_actions_rtc(p, obs, ids, key, prev_valid=jnp.ones(B, bool))


def test_euler_sample_prefix_valid_switches_rows():
    """``flow.euler_sample(prefix=, prefix_valid=)`` (what ``sample_actions`` runs for rtc="psi0"): rows
    with a valid prefix follow Ψ0's RTC sampler, rows without it the plain sampler, exactly."""
    rng = np.random.default_rng(2)
    noise = jnp.asarray(rng.normal(size=(2, 30, 36)), jnp.float32)
    prefix = jnp.asarray(rng.normal(size=(2, 6, 36)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(36, 36)) * 0.3, jnp.float32)

    def field(x, sig):
        return jnp.tanh(x @ w) * (1.0 + jnp.reshape(sig, jnp.shape(sig) + (1,) * (3 - jnp.ndim(sig))))

    rtc = flow.euler_sample(field, noise, 10, prefix=prefix)
    np.testing.assert_allclose(
        flow.euler_sample(field, noise, 10, prefix=prefix, prefix_valid=jnp.ones(2, bool)), rtc, atol=1e-6
    )
    np.testing.assert_allclose(
        flow.euler_sample(field, noise, 10, prefix=prefix, prefix_valid=jnp.zeros(2, bool)),
        flow.euler_sample(field, noise, 10),
        atol=1e-6,
    )
    mixed = flow.euler_sample(field, noise, 10, prefix=prefix, prefix_valid=jnp.array([True, False]))
    np.testing.assert_allclose(mixed[0], rtc[0], atol=1e-6)
    np.testing.assert_allclose(mixed[1], flow.euler_sample(field, noise, 10)[1], atol=1e-6)
    with pytest.raises(ValueError, match="prefix_valid"):
        flow.euler_sample(field, noise, 10, prefix=prefix, prefix_valid=jnp.ones(3, bool))


def test_training_rtc_and_psi0_loss(cfg, params):
    batch = _batch(cfg)
    batch = dict(batch, action_mask=batch["action_mask"].at[1, 20:].set(False))
    key = jax.random.key(4)
    base = P.policy_loss(params, batch, key)[0]
    # Ψ0's reduction: Σ m·err / (B·D) = the valid-entry mean × (valid steps) / B.
    psi0 = P.policy_loss(P.replace_config(params, loss_reduction="psi0"), batch, key)[0]
    n_valid = float(jnp.sum(batch["action_mask"]))
    np.testing.assert_allclose(psi0, base * n_valid / batch["action_mask"].shape[0], rtol=1e-5)
    # Training-time RTC: max_delay 1 means d = 0 always (identical); 8 feeds a clean prefix.
    np.testing.assert_allclose(P.policy_loss(P.replace_config(params, rtc_max_delay=1), batch, key)[0], base, rtol=1e-6)
    rtc = P.policy_loss(P.replace_config(params, rtc_max_delay=8), batch, key)[0]
    assert bool(jnp.isfinite(rtc)) and abs(float(rtc) - float(base)) > 1e-6
    with pytest.raises(ValueError, match="rtc must be"):
        P.replace_config(params, rtc="bogus")
