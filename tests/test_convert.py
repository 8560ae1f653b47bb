"""Converter: released key layout ⇄ NNX params, and the Flax expert against Ψ0's own PyTorch outputs.

``tests/data/psi0_expert/`` holds files made by running Ψ0's ``ActionTransformerModel`` (commit 15d7d3a)
on a tiny config in float32 (see its README). Tolerance: 1e-5 · max(1, max |reference|).
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from recap_jax.models import action_expert as ae
from recap_jax.models import convert as C

CFG = ae.get_config("tiny")

DATA = pathlib.Path(__file__).parent / "data" / "psi0_expert"
GCFG = ae.ActionExpertConfig(width=64, depth=3, num_heads=4, mlp_dim=256, context_dim=48)


@pytest.fixture(scope="module")
def io():
    return dict(np.load(DATA / "io.npz"))


@pytest.fixture(scope="module")
def golden_expert():
    model = ae.build(GCFG, 5)
    nnx.update(model, C.load_expert_state(DATA / "expert.safetensors", nnx.state(model, nnx.Param), GCFG))
    return model


def _close(out, ref):
    err = float(np.max(np.abs(np.asarray(out) - ref)))
    assert err <= 1e-5 * max(1.0, float(np.max(np.abs(ref)))), err


@pytest.mark.parametrize("kind", ["velocity", "velocity_per_token_t"])
def test_forward_matches_psi0(golden_expert, io, kind):
    sigma = io["sigma"] if kind == "velocity" else io["per_token_t"] / 1000.0
    out = golden_expert(io["x"], sigma, io["context"], io["context_mask"] > 0.5, io["state"][:, 0])
    _close(out, io[kind])


@pytest.mark.parametrize("name", ["expert_bf16.safetensors", "run", "run/checkpoints/ckpt_10/model.safetensors"])
def test_other_psi0_files_load(golden_expert, io, name):
    state = C.load_expert_state(DATA / name, nnx.state(ae.build(GCFG, 0), nnx.Param), GCFG)
    model = ae.build(GCFG, 0)
    nnx.update(model, state)
    out = model(io["x"], io["sigma"], io["context"], io["context_mask"] > 0.5, io["state"][:, 0])
    atol = 2e-2 if "bf16" in name else 1e-5 * max(1.0, float(np.max(np.abs(io["velocity"]))))
    np.testing.assert_allclose(np.asarray(out), io["velocity"], atol=atol)
    if name.startswith("run"):
        _, vlm = C.read_psi0_checkpoint(DATA / name)
        assert vlm and all(k.startswith("vlm_model.") for k in vlm)


def test_export_has_psi0_layout(golden_expert):
    keys = json.loads((DATA / "meta.json").read_text())["keys"]
    out = C.export_expert_state(nnx.state(golden_expert, nnx.Param), GCFG)
    assert {k: list(v.shape) for k, v in out.items()} == keys
    src = load_file(DATA / "expert.safetensors")
    for k in keys:
        tol = 3e-4 if k == C.OBS_PE_KEY else 1e-7
        np.testing.assert_allclose(out[k], src[k], atol=tol, err_msg=k)


def test_h16_blocks_only_into_h30():
    state0 = nnx.state(ae.build(GCFG, 0), nnx.Param)
    with pytest.raises(ValueError, match=r"h16.*action_proj_in\.dec_pos: file"):
        C.load_expert_state(DATA / "h16" / "expert.safetensors", state0, GCFG)
    state = C.load_expert_state(DATA / "h16" / "expert.safetensors", state0, GCFG, blocks_only=True)
    src = load_file(DATA / "h16" / "expert.safetensors")
    out = C.export_expert_state(state, GCFG)
    np.testing.assert_array_equal(
        out["transformer_blocks.0.attn.to_q.weight"], src["transformer_blocks.0.attn.to_q.weight"]
    )


def test_bad_files_name_file_and_key(tmp_path):
    src = load_file(DATA / "expert.safetensors")
    state0 = nnx.state(ae.build(GCFG, 0), nnx.Param)
    bad = dict(src)
    bad["obs_proj.views_proj.weight"] = np.zeros((64, 5), np.float32)
    del bad["action_proj_out.linear.bias"]
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*missing keys.*action_proj_out\.linear\.bias.*views_proj"):
        C.load_expert_state(tmp_path / "bad.safetensors", state0, GCFG)
    pe = dict(src)
    pe[C.OBS_PE_KEY] = pe[C.OBS_PE_KEY] + 0.01
    save_file(pe, str(tmp_path / "pe.safetensors"))
    with pytest.raises(ValueError, match=r"pe\.safetensors.*obs_proj\.enc_pos\.pe"):
        C.load_expert_state(tmp_path / "pe.safetensors", state0, GCFG)
    save_file({"encoder.weight": np.zeros((3, 3), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"other\.safetensors.*encoder\.weight"):
        C.load_expert_state(tmp_path / "other.safetensors", state0, GCFG)
    raw = (DATA / "expert.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        C.load_expert_state(tmp_path / "cut.safetensors", state0, GCFG)


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


@pytest.fixture(scope="module")
def weights():
    return _synthetic_weights(CFG)


@pytest.fixture(scope="module")
def expert(weights):
    model = ae.build(CFG, 1)
    nnx.update(model, C.load_expert_state(weights, nnx.state(model, nnx.Param), CFG))
    return model


# ---------------------------------------------------------------- tests
def test_round_trip_file(weights, expert, tmp_path):
    path = tmp_path / "expert.safetensors"
    C.save_expert_safetensors(nnx.state(expert, nnx.Param), CFG, path)
    fresh = ae.build(CFG, 2)
    state = C.load_expert_state(path, nnx.state(fresh, nnx.Param), CFG)
    back = C.export_expert_state(state, CFG)
    assert set(back) - set(C.BUFFER_KEYS) == set(weights)
    for k in weights:
        np.testing.assert_array_equal(back[k], weights[k].reshape(back[k].shape), err_msg=k)
    assert sum(v.size for k, v in back.items() if k not in C.BUFFER_KEYS) == ae.num_params(CFG)


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
    for k in set(out) - set(C.BUFFER_KEYS):
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
