"""Converter: released key layout ⇄ NNX params, and the Flax expert against a NumPy reference.

The reference forward pass below is written from the System-1 description in PSI0_FACTS and reads the
safetensors dict (PyTorch layout, weight [out, in]) directly; it shares no code with the model.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from recap_jax.models import action_expert as ae
from recap_jax.models import convert as C

CFG = ae.get_config("tiny")


# ---------------------------------------------------------------- NumPy reference (float64)
def _lin(w, name, x):
    return x @ w[f"{name}.weight"].T.astype(np.float64) + w[f"{name}.bias"].astype(np.float64)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _ln(x, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def _ff(w, name, x):
    return _lin(w, f"{name}.net.2", _gelu_tanh(_lin(w, f"{name}.net.0.proj", x)))


def _mha(q, k, v, key_mask, heads):
    b, t, d = q.shape
    hd = d // heads
    q, k, v = (z.reshape(b, z.shape[1], heads, hd).transpose(0, 2, 1, 3) for z in (q, k, v))
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(b, t, d)


def reference_forward(w, depth, heads, x, sigma, ctx, ctx_mask, state):
    """x [B,H,A], sigma [B,H], ctx [B,N,C], ctx_mask bool [B,N], state [B,A] → velocity [B,H,A]."""
    x, sigma, ctx, state = (np.asarray(z, np.float64) for z in (x, sigma, ctx, state))
    b, h, _ = x.shape
    freqs = np.exp(-np.arange(128) * math.log(1e4) / 127)
    arg = (sigma * 1000.0)[..., None] * freqs
    temb = _lin(
        w,
        "time_ins_embed.out_net.2",
        _silu(_lin(w, "time_ins_embed.out_net.0", np.concatenate([np.cos(arg), np.sin(arg)], -1))),
    )
    temb_obs = temb.mean(1)
    a = _lin(w, "action_proj_in.ac_proj.2", _gelu_tanh(_lin(w, "action_proj_in.ac_proj.0", x)))
    a = a + w["action_proj_in.dec_pos"].reshape(h, -1)
    o = np.concatenate([_lin(w, "obs_proj._obs_proc.1", state)[:, None], _lin(w, "obs_proj.views_proj", ctx)], 1)
    d = o.shape[-1]
    pos = np.arange(o.shape[1])[:, None] * np.exp(-math.log(1e4) * np.arange(d // 2) / (d // 2))[None]
    o = o + np.concatenate([np.sin(pos), np.cos(pos)], -1)
    key_mask = np.concatenate([np.ones((b, h + 1), bool), ctx_mask], 1)
    for i in range(depth):
        p, last = f"transformer_blocks.{i}", i == depth - 1
        sa, ca, ga, sm, cm, gm = np.split(_lin(w, f"{p}.norm1_act.linear", _silu(temb)), 6, -1)
        an = _ln(a) * (1 + ca) + sa
        mo = _lin(w, f"{p}.norm1_obs.linear", _silu(temb_obs))[:, None]
        if last:
            co, so = np.split(mo, 2, -1)
        else:
            so, co, go, smo, cmo, gmo = np.split(mo, 6, -1)
        on = _ln(o) * (1 + co) + so
        q = np.concatenate([_lin(w, f"{p}.attn.to_q", an), _lin(w, f"{p}.attn.add_q_proj", on)], 1)
        k = np.concatenate([_lin(w, f"{p}.attn.to_k", an), _lin(w, f"{p}.attn.add_k_proj", on)], 1)
        v = np.concatenate([_lin(w, f"{p}.attn.to_v", an), _lin(w, f"{p}.attn.add_v_proj", on)], 1)
        att = _mha(q, k, v, key_mask, heads)
        a = a + ga * _lin(w, f"{p}.attn.to_out.0", att[:, :h])
        a = a + gm * _ff(w, f"{p}.ff_act", _ln(a) * (1 + cm) + sm)
        if not last:
            o = o + go * _lin(w, f"{p}.attn.to_add_out", att[:, h:])
            o = o + gmo * _ff(w, f"{p}.ff_obs", _ln(o) * (1 + cmo) + smo)
    shift, scale = np.split(_lin(w, "action_proj_out.adaLN_modulation.1", _silu(temb)), 2, -1)
    return _lin(w, "action_proj_out.linear", a * scale + shift)


# ---------------------------------------------------------------- helpers
def _synthetic_weights(cfg, seed=0, chunk=None):
    """Every released key of ``cfg`` drawn from N(0, 0.02), in PyTorch layout."""
    shapes = {}
    pure = nnx.to_pure_dict(ae.abstract_params(cfg))
    for key, (path, kind) in C.expert_key_map(cfg).items():
        leaf = pure
        for p in path:
            leaf = leaf[p]
        shapes[key] = leaf.shape[::-1] if kind == "linear_w" else leaf.shape
    if chunk is not None:
        shapes["action_proj_in.dec_pos"] = (1, chunk, cfg.width)
    rng = np.random.default_rng(seed)
    return {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def _inputs(seed=0, b=2, n=7):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, n), bool)
    mask[1, 4:] = False
    return dict(
        x=rng.standard_normal((b, CFG.chunk, CFG.action_dim)).astype(np.float32),
        sigma=np.stack([np.full(CFG.chunk, 0.7), np.linspace(0.0, 1.0, CFG.chunk)]).astype(np.float32),
        ctx=rng.standard_normal((b, n, CFG.context_dim)).astype(np.float32),
        ctx_mask=mask,
        state=rng.standard_normal((b, CFG.action_dim)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def weights():
    return _synthetic_weights(CFG)


@pytest.fixture(scope="module")
def expert(weights):
    model = ae.build(CFG, 1)
    nnx.update(model, C.load_expert_state(weights, nnx.state(model, nnx.Param), CFG))
    return model


# ---------------------------------------------------------------- tests
def test_flax_matches_numpy_reference(weights, expert):
    inp = _inputs()
    ref = reference_forward(weights, CFG.depth, CFG.num_heads, **inp)
    assert np.abs(ref).max() > 1e-3  # no block or head is the identity / zero
    out = expert(inp["x"], inp["sigma"], inp["ctx"], inp["ctx_mask"], inp["state"])
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


def test_round_trip_file(weights, expert, tmp_path):
    path = tmp_path / "expert.safetensors"
    C.save_expert_safetensors(nnx.state(expert, nnx.Param), CFG, path)
    fresh = ae.build(CFG, 2)
    state = C.load_expert_state(path, nnx.state(fresh, nnx.Param), CFG)
    back = C.export_expert_state(state, CFG)
    assert set(back) == set(weights)
    for k in weights:
        np.testing.assert_array_equal(back[k], weights[k].reshape(back[k].shape), err_msg=k)
    assert sum(v.size for v in back.values()) == ae.num_params(CFG)


def test_errors_name_every_bad_key(weights):
    bad = dict(weights)
    del bad["transformer_blocks.0.attn.to_q.bias"]
    bad["transformer_blocks.1.attn.to_add_out.weight"] = np.zeros((CFG.width, CFG.width), np.float32)
    bad["action_proj_out.linear.weight"] = np.zeros((3, CFG.width), np.float32)
    state = nnx.state(ae.build(CFG, 0), nnx.Param)
    with pytest.raises(ValueError) as err:
        C.load_expert_state(bad, state, CFG)
    msg = str(err.value)
    assert "missing keys (1): ['transformer_blocks.0.attn.to_q.bias']" in msg
    assert "unexpected keys (1): ['transformer_blocks.1.attn.to_add_out.weight']" in msg
    assert "action_proj_out.linear.weight: file (3, 64), expected (36, 64)" in msg


def test_blocks_only_with_16_step_table(tmp_path):
    released = _synthetic_weights(CFG, seed=3, chunk=16)
    save_file(released, str(tmp_path / "released.safetensors"))
    state0 = nnx.state(ae.build(CFG, 0), nnx.Param)
    with pytest.raises(ValueError, match=r"action_proj_in\.dec_pos: file"):
        C.load_expert_state(tmp_path / "released.safetensors", state0, CFG)
    state = C.load_expert_state(tmp_path / "released.safetensors", state0, CFG, blocks_only=True)
    out = C.export_expert_state(state, CFG)
    init = C.export_expert_state(state0, CFG)
    for k in out:
        want = released[k] if k.startswith("transformer_blocks.") else init[k]
        np.testing.assert_array_equal(out[k], want, err_msg=k)


def test_psi0_key_layout_counts_490m():
    cfg = ae.get_config("psi0")
    pure = nnx.to_pure_dict(ae.abstract_params(cfg))
    total = 0
    for path, _ in C.expert_key_map(cfg).values():
        leaf = pure
        for p in path:
            leaf = leaf[p]
        total += math.prod(leaf.shape)
    assert total == 490_039_128
    assert f"transformer_blocks.{cfg.depth - 1}.attn.add_q_proj.weight" in C.expert_key_map(cfg)
    assert f"transformer_blocks.{cfg.depth - 1}.attn.to_add_out.weight" not in C.expert_key_map(cfg)


def test_policy_level_load(weights):
    from recap_jax import policy as P

    params = P.init_policy(P.PolicyConfig(image_size=(32, 32)), 0)
    loaded = C.load_policy_expert(params, weights)
    exported = C.export_policy_expert(loaded)
    np.testing.assert_array_equal(
        exported["transformer_blocks.0.attn.to_q.weight"], weights["transformer_blocks.0.attn.to_q.weight"]
    )
    # The encoder is untouched.
    for a, b in zip(jax.tree.leaves(params.model["encoder"]), jax.tree.leaves(loaded.model["encoder"])):
        np.testing.assert_array_equal(a, b)
    assert jnp.shape(loaded.model["expert"]["dec_pos"][...]) == (CFG.chunk, CFG.width)
