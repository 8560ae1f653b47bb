"""The whole Ψ0 as one policy: frozen Qwen3-VL (tests/data/qwen3vl_tiny's golden weights) + a tiny expert.

Checks the on-device image path against qwen3vl's host reference, the encoder against qwen3vl.forward,
sample_actions / policy_loss, the cached-feature path (features and loss equal the on-the-fly ones, a
train step from the loader's cached batch), the Ψ0 run-directory round trip with named errors, and the
full-size parameter count via eval_shape.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from recap_jax import policy as P
from recap_jax import psi0
from recap_jax.models import convert, qwen3vl
from recap_jax.models import vlm_encoder as vlm

DIR = Path(__file__).parent / "data" / "qwen3vl_tiny"
encode = jax.jit(P.encode_observation)
sample = jax.jit(P.sample_actions)
loss_fn = jax.jit(P.policy_loss)
INSTR = "bend to pick up the cracker box"


def _norm():
    rng = np.random.default_rng(3)
    lo_s, lo_a = rng.uniform(-2, -1, 32), rng.uniform(-2, -1, 36)
    return P.NormStats(
        jnp.asarray(lo_s, jnp.float32),
        jnp.asarray(lo_s + rng.uniform(1, 3, 32), jnp.float32),
        jnp.asarray(lo_a, jnp.float32),
        jnp.asarray(lo_a + rng.uniform(1, 3, 36), jnp.float32),
    )


@pytest.fixture(scope="module")
def params():
    """Tiny Ψ0: golden Qwen3-VL weights + a tiny expert with random (non-zero) weights."""
    cfg = P.PolicyConfig(
        encoder="qwen3vl-tiny", action_expert="tiny", image_size=(180, 320), prompt_max_len=160, indicator_dropout=0.3
    )
    ecfg = cfg.expert_config()
    rng = np.random.default_rng(0)
    expert = {
        k: (0.05 * rng.standard_normal(v.shape)).astype(np.float32) if k not in (convert.TIME_W_KEY,) else v
        for k, v in convert.export_expert_state(psi0._init_expert(ecfg, jax.random.key(0)), ecfg).items()
        if k != convert.OBS_PE_KEY
    }
    vlm_t = load_file(str(DIR / "model" / "model.safetensors"))
    return psi0.assemble(cfg, vlm_t, expert, _norm())


@pytest.fixture(scope="module")
def frames():
    img = np.load(DIR / "image_io.npz")["image"]
    return np.stack([img, img[::-1]])  # two different 180×320 frames


def test_device_image_path_equals_host():
    rng = np.random.default_rng(1)
    for frame in (np.load(DIR / "image_io.npz")["image"], rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)):
        want, grid = qwen3vl.preprocess_image(qwen3vl.psi0_image(frame))
        plan = vlm.image_plan(*frame.shape[:2])
        got = np.asarray(jax.jit(vlm.device_pixels, static_argnums=1)(jnp.asarray(frame[None]), plan))
        assert tuple(grid) == plan.grid == (1, 14, 22) and plan.num_tokens == 77
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-7, rtol=0)


def test_full_psi0_counts_without_allocation():
    cfg = P.PolicyConfig(encoder="qwen3vl-2b", action_expert="psi0", image_size=(180, 320), prompt_max_len=160)
    a = P.abstract_policy(cfg)
    assert isinstance(jax.tree.leaves(a.model)[0], jax.ShapeDtypeStruct)
    n_vlm = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(a.model["encoder"]))
    n_exp = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(a.model["expert"]))
    assert (n_vlm, n_exp) == (2_127_532_032, 490_039_128)
    assert {x.dtype for x in jax.tree.leaves(a.model["encoder"])} == {jnp.dtype(jnp.bfloat16)}
    mask = P.trainable_mask(a)
    trained = sum(int(np.prod(x.shape)) for x, m in zip(jax.tree.leaves(a.model), jax.tree.leaves(mask.model)) if m)
    assert trained == 490_039_128
    with pytest.raises(ValueError, match="context"):
        P.PolicyConfig(encoder="qwen3vl-2b", action_expert="tiny", image_size=(180, 320), prompt_max_len=160)
    with pytest.raises(ValueError, match="prompt_max_len"):
        P.PolicyConfig(encoder="qwen3vl-tiny", action_expert="tiny", image_size=(180, 320), prompt_max_len=64)


def test_prompt_and_encoder_equal_reference(params, frames):
    cfg = params.config
    ids, mask = P.tokenize(cfg, [f"advantage: high. {INSTR}", INSTR])
    assert ids.shape == (2, 160) and (ids == 900).sum(1).tolist() == [77, 77]
    assert cfg.tokenizer().decode(ids[:1])[0].endswith(f"advantage: high. {INSTR}<|im_end|>\n<|im_start|>assistant\n")
    ctx, cmask = encode(params, jnp.asarray(frames), jnp.asarray(ids))  # default mask: != pad
    np.testing.assert_array_equal(np.asarray(cmask), mask)
    model, _ = qwen3vl.load_pretrained(DIR / "model")
    pv = np.concatenate([qwen3vl.preprocess_image(qwen3vl.psi0_image(f))[0] for f in frames])
    ref = qwen3vl.forward(model, ids, mask.astype(np.int32), pv, np.array([[1, 14, 22]] * 2))["last_layer"]
    assert ctx.shape == (2, 160, 64)
    err = np.abs(np.asarray(ctx) - np.asarray(ref))[mask].max()
    assert err <= 1e-5 * max(1.0, float(np.abs(np.asarray(ref)[mask]).max()))


def _batch(params, frames, labels=("high", "low")):
    rng = np.random.default_rng(2)
    ids, mask = P.tokenize(params.config, [f"advantage: {w}. {INSTR}" for w in labels])
    uids, umask = P.tokenize(params.config, [INSTR] * len(labels))
    return {
        "image": jnp.asarray(frames),
        "state": jnp.asarray(rng.normal(size=(2, 32)), jnp.float32),
        "prompt_ids": jnp.asarray(ids),
        "prompt_mask": jnp.asarray(mask),
        "uncond_prompt_ids": jnp.asarray(uids),
        "uncond_prompt_mask": jnp.asarray(umask),
        "actions": jnp.asarray(rng.normal(size=(2, 30, 36)), jnp.float32),
        "action_mask": jnp.asarray(np.arange(30)[None] < np.array([[30], [20]])),
    }


def test_sample_loss_and_cached_features(params, frames):
    batch = _batch(params, frames)
    chunk = sample(params, batch, batch["prompt_ids"], jax.random.key(0))
    assert chunk.shape == (2, 30, 36) and bool(jnp.isfinite(chunk).all())
    key = jax.random.key(5)
    loss, m = loss_fn(params, batch, key)
    # The same step from features: context of the labelled and of the bare prompt, computed once.
    ctx, cm = encode(params, batch["image"], batch["prompt_ids"], batch["prompt_mask"])
    uctx, ucm = encode(params, batch["image"], batch["uncond_prompt_ids"], batch["uncond_prompt_mask"])
    fb = {k: batch[k] for k in ("state", "actions", "action_mask")}
    fb |= {"context": ctx, "context_mask": cm, "uncond_context": uctx, "uncond_context_mask": ucm}
    loss_f, m_f = loss_fn(params, fb, key)
    assert float(m["indicator_dropped"]) == float(m_f["indicator_dropped"])
    np.testing.assert_allclose(float(loss_f), float(loss), rtol=1e-5)
    # One gradient step of the expert from cached features; the VLM is frozen (not in the trained set).
    mask = P.trainable_mask(params)
    assert not any(jax.tree.leaves(mask.model["encoder"])) and all(jax.tree.leaves(mask.model["expert"]))

    def f(expert):
        return P.policy_loss(params.replace(model=params.model | {"expert": expert}), fb, key)[0]

    g = jax.jit(jax.grad(f))(params.model["expert"])
    assert float(sum(jnp.sum(x**2) for x in jax.tree.leaves(g))) > 0
    with pytest.raises(ValueError, match="uncond_context"):
        P.policy_loss(params, {k: v for k, v in fb.items() if not k.startswith("uncond")}, key)


def test_run_dir_round_trip_and_named_errors(params, frames, tmp_path):
    run = tmp_path / "run"
    ck = psi0.export_psi0(params, run, step=10)
    keys = load_file(str(ck))
    assert any(k.startswith("action_header.transformer_blocks.") for k in keys)
    assert "vlm_model.model.language_model.norm.weight" in keys
    loaded = psi0.load_psi0(run, action_expert="tiny", indicator_dropout=0.3)
    assert loaded.config == params.config
    obs = {"state": jnp.asarray(np.random.default_rng(4).normal(size=(2, 32)), jnp.float32), "image": frames}
    ids, _ = P.tokenize(params.config, [f"advantage: high. {INSTR}"] * 2)
    want = sample(params, obs, jnp.asarray(ids), jax.random.key(7))
    got = sample(loaded, obs, jnp.asarray(ids), jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    # A missing VLM key and a mis-shaped expert key are named, with the file.
    bad = dict(keys)
    bad.pop("vlm_model.model.language_model.layers.1.mlp.up_proj.weight")
    bad["action_header.action_proj_out.linear.weight"] = np.zeros((5, 5), np.float32)
    (run / "checkpoints" / "ckpt_20").mkdir()
    save_file(bad, str(run / "checkpoints" / "ckpt_20" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.language_model\.layers\.1\.mlp\.up_proj\.weight") as e:
        psi0.load_psi0(run, action_expert="tiny")
    assert "ckpt_20" in str(e.value) and "action_proj_out.linear.weight: file (5, 5)" in str(e.value)
    bad = dict(keys)
    bad["action_header.action_proj_out.linear.weight"] = np.zeros((5, 5), np.float32)
    save_file(bad, str(run / "checkpoints" / "ckpt_20" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"action_proj_out.linear.weight: file \(5, 5\)"):
        psi0.load_psi0(run, 20, action_expert="tiny")
    with pytest.raises(ValueError, match="no checkpoint at step 30"):
        psi0.load_psi0(run, 30, action_expert="tiny")
    rc = json.loads((run / "run_config.json").read_text())
    rc["vlm_config"]["text_config"]["num_hidden_layers"] = 4
    (run / "run_config.json").write_text(json.dumps(rc))
    with pytest.raises(ValueError, match="num_hidden_layers: 4"):
        psi0.load_psi0(run, 10, action_expert="tiny")
    rc.pop("vlm_config")
    # Ψ0's own run_config layout: the bounds in data.transform.field (ActionStateTransform).
    field = rc["data"]["transform"]["field"]
    assert set(field) >= {"action_min", "action_max", "state_min", "state_max", "normalize_state"}
    field["normalize_state"] = False
    (run / "run_config.json").write_text(json.dumps(rc))
    with pytest.raises(ValueError, match="normalize_state is false"):
        psi0.load_psi0(run, 10, action_expert="tiny", vlm_config="qwen3vl-tiny")
    field["normalize_state"] = True
    field["action_max"] = field["action_max"][:35]
    (run / "run_config.json").write_text(json.dumps(rc))
    with pytest.raises(ValueError, match="action_max must be 36"):
        psi0.load_psi0(run, 10, action_expert="tiny", vlm_config="qwen3vl-tiny")
    # The stats_psi0.json layout anywhere in the file is the fallback.
    norm = params.norm
    rc["data"] = {
        "stats": {
            g: {"min": np.asarray(lo).tolist(), "max": np.asarray(hi).tolist()}
            for g, lo, hi in (("action", norm.action_min, norm.action_max), ("states", norm.state_min, norm.state_max))
        }
    }
    (run / "run_config.json").write_text(json.dumps(rc))
    back = psi0.run_norm_stats(run)
    np.testing.assert_array_equal(np.asarray(back.action_max), np.asarray(norm.action_max))
    rc["data"]["stats"].pop("states")
    (run / "run_config.json").write_text(json.dumps(rc))
    with pytest.raises(ValueError, match="no normalisation stats"):
        psi0.load_psi0(run, 10, action_expert="tiny", vlm_config="qwen3vl-tiny")


def test_feature_cache_store_loader_and_train_step(params, frames, tmp_path):
    from recap_jax.data import EpisodeStore, LoaderConfig, WindowLoader
    from recap_jax.data import features as F
    from recap_jax.data.store import Episode

    rng = np.random.default_rng(6)
    store = EpisodeStore(tmp_path / "store", create=True)
    eps = [
        Episode(
            episode_id=i,
            states=rng.normal(size=(40, 32)).astype(np.float32),
            actions=rng.normal(size=(40, 36)).astype(np.float32),
            image_steps=np.array([0, 24], np.int32),
            images=frames if i == 0 else frames[::-1],
            prompt=INSTR,
            success=bool(i),
            n_steps=40,
        )
        for i in range(2)
    ]
    store.append(eps)
    store.write_annotation("label", {0: np.array([1, 0], np.int8), 1: np.array([-1, 1], np.int8)})
    side = F.write_feature_cache(store, params, batch_size=2)
    assert side["instructions"] == {"0": INSTR, "1": INSTR}
    F.check_feature_cache(store, params)
    # The cache equals the VLM on the fly, for every (image, variant).
    feats, masks = store.read_annotation(F.DEFAULT_NAME), store.read_annotation(F.DEFAULT_NAME + "_mask")
    texts = [f"advantage: high. {INSTR}", f"advantage: low. {INSTR}", INSTR]
    ids, _ = P.tokenize(params.config, texts)
    for e in eps:
        ctx, cm = encode(params, jnp.asarray(np.repeat(e.images, 3, 0)), jnp.asarray(np.tile(ids, (2, 1))))
        np.testing.assert_array_equal(F.from_storage(feats[e.episode_id]), np.asarray(ctx).reshape(2, 3, 160, 64))
        np.testing.assert_array_equal(masks[e.episode_id], np.asarray(cm).reshape(2, 3, 160))
    # Resumable: a second call computes nothing new; other VLM weights are refused by the check.
    before = (store.root / "annotations" / f"{F.DEFAULT_NAME}.npz").stat().st_mtime_ns
    F.write_feature_cache(store, params)
    assert (store.root / "annotations" / f"{F.DEFAULT_NAME}.npz").stat().st_mtime_ns == before
    other = params.replace(model=params.model | {"encoder": jax.tree.map(lambda x: x * 1.01, params.model["encoder"])})
    with pytest.raises(ValueError, match="weights_sha256"):
        F.check_feature_cache(store, other)
    # The loader reads the cache (variant by label) and a train step of the expert runs from it.
    cfg = LoaderConfig(batch_size=4, label_annotation="label", emit_uncond=True, feature_annotation=F.DEFAULT_NAME)
    loader = WindowLoader(store, cfg, prefetch=0)
    b = loader.host_batch(0, 0)
    assert "image" not in b and "prompt_ids" not in b and b["context"].shape == (4, 160, 64)
    for row in range(4):
        eid, t = next(
            (e.episode_id, list(e.image_steps).index(int(b["t"][row])))
            for e in eps
            if np.array_equal(e.states[int(b["t"][row])], b["state"][row])
        )
        label = {0: [1, 0], 1: [-1, 1]}[eid][t]
        v = {1: 0, 0: 1, -1: 2}[label]
        np.testing.assert_array_equal(b["context"][row], F.from_storage(feats[eid][t, v]))
        np.testing.assert_array_equal(b["uncond_context"][row], F.from_storage(feats[eid][t, 2]))
    loss, _ = loss_fn(params, {k: jnp.asarray(v) for k, v in b.items()}, jax.random.key(0))
    assert np.isfinite(float(loss))


def test_psi0_study_preset():
    from experiments import glue
    from experiments.presets import get_preset, override

    cfg = get_preset("psi0")
    pcfg = glue.policy_config(cfg)
    assert (pcfg.encoder, pcfg.action_expert, pcfg.image_size, pcfg.execute) == ("qwen3vl-2b", "psi0", (180, 320), 24)
    assert cfg.finetune.indicator_dropout == 0.3 and cfg.finetune.batch_size == 128
    a = P.abstract_policy(pcfg)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(a.model)) == 2_127_532_032 + 490_039_128
    assert "Qwen3-VL preset qwen3vl-2b" in glue.system2_description(cfg)
    tiny = override(
        cfg,
        policy=(
            ("encoder", "qwen3vl-tiny"),
            ("action_expert", "tiny"),
            ("prompt_max_len", 160),
            ("loss_reduction", "psi0"),
        ),
    )
    assert glue.policy_config(tiny).tokenizer().encode(INSTR)[0].shape == (1, 160)
    assert "ViT" in glue.system2_description(get_preset("smoke"))


def test_identity_norm_stats_have_distinct_buffers():
    """A train step donates its state; one buffer in two leaves (identity's action min/max) cannot be donated."""
    leaves = jax.tree.leaves(P.NormStats.identity())
    assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves) == 4
