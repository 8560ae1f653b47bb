"""Qwen3-VL as one compiled function: no retrace on new values, left padding, traced Hugging Face weights,
M-RoPE positions, bf16 files, the Hugging Face round trip and frozen parameters (tests/data/qwen3vl_tiny)."""

import json
import shutil
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from recap_jax.models import qwen3vl

DIR = Path(__file__).parent / "data" / "qwen3vl_tiny"
TOL = 2e-4  # × max(1, scale), on unpadded tokens (the parity bound)


@pytest.fixture(scope="module")
def data():
    io = dict(np.load(DIR / "text_io.npz"))
    pv, grid = qwen3vl.preprocess_image(np.load(DIR / "image_io.npz")["image"])
    model, _ = qwen3vl.load_pretrained(DIR / "model")
    return {"io": io, "pv": np.concatenate([pv, pv]), "grid": (tuple(int(g) for g in grid),) * 2, "model": model}


def _close(got, want, mask, tol=TOL):
    scale = max(1.0, float(np.abs(want[mask]).max()))
    err = float(np.abs(np.asarray(got, np.float32) - want)[mask].max())
    assert err <= tol * scale, err
    return err


def _left_pad(io):
    """Row 1 of the goldens (83 tokens, right-padded by 2) moved to the right end: left padding."""
    ids, mask = io["input_ids"].copy(), io["attention_mask"].copy()
    n = int(mask[1].sum())
    ids[1] = np.concatenate([np.zeros(85 - n, ids.dtype), io["input_ids"][1, :n]])
    mask[1] = np.concatenate([np.zeros(85 - n, mask.dtype), mask[1, :n]])
    return ids, mask, n


def test_outer_jit_traced_weights_no_retrace_left_padding(data):
    """Weights as {HF key: traced array} → Qwen3VL(config, params) → forward, all under one jax.jit that
    is traced once for two calls with different ids / mask values; right- and left-padded batches both
    match transformers' outputs on their tokens."""
    io, cfg = data["io"], json.loads((DIR / "model" / "config.json").read_text())
    tensors = {k: jnp.asarray(v) for k, v in load_file(str(DIR / "model" / "model.safetensors")).items()}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(tensors, ids, mask, pv):
        model = qwen3vl.Qwen3VL(cfg, tensors)
        return qwen3vl.forward(model, ids, mask, pv, data["grid"])

    out = run(tensors, io["input_ids"], io["attention_mask"], data["pv"])
    keep = io["attention_mask"].astype(bool)
    _close(out["last_layer"], io["last_layer_pre_norm"], keep)
    _close(out["last_hidden_state"], io["hidden_states_last"], keep)

    ids, mask, n = _left_pad(io)
    assert not np.array_equal(ids, io["input_ids"])
    left = run(tensors, ids, mask, data["pv"])  # new values, same shapes: no second trace
    np.testing.assert_allclose(left["last_layer"][0], out["last_layer"][0], atol=1e-5, rtol=0)
    for ours, theirs in (("last_layer", "last_layer_pre_norm"), ("last_hidden_state", "hidden_states_last")):
        _close(left[ours][1, 85 - n :], io[theirs][1, :n], np.ones(n, bool))


def test_left_padded_row_matches_its_unpadded_forward(data):
    """forward on a left-padded batch vs make_forward on the row alone, unpadded."""
    io = data["io"]
    ids, mask, n = _left_pad(io)
    batch = qwen3vl.forward(data["model"], ids, mask, data["pv"], data["grid"])
    run_one = qwen3vl.make_forward(data["model"], data["grid"][:1])
    single = run_one(ids[1:, 85 - n :], mask[1:, 85 - n :], data["pv"][:264])
    for k in ("last_layer", "last_hidden_state"):
        np.testing.assert_allclose(batch[k][1, 85 - n :], single[k][0], atol=1e-5, rtol=0)


def test_forward_compiles_once_per_shape(data):
    io = data["io"]
    qwen3vl.forward(data["model"], io["input_ids"], io["attention_mask"], data["pv"], np.array(data["grid"]))
    size = qwen3vl.jit_apply._cache_size()
    ids, mask, _ = _left_pad(io)
    qwen3vl.forward(data["model"], ids, mask, data["pv"] + 0.5, data["grid"])  # new values; grid as a tuple
    assert qwen3vl.jit_apply._cache_size() == size


def test_forward_checks_inputs(data):
    io = data["io"]
    with pytest.raises(ValueError, match="image tokens"):
        qwen3vl.forward(data["model"], io["input_ids"][:1], io["attention_mask"][:1], data["pv"], data["grid"])
    with pytest.raises(ValueError, match="image_grid_thw"):
        qwen3vl.forward(data["model"], io["input_ids"], io["attention_mask"], data["pv"], [[1, 12, 21]])
    with pytest.raises(ValueError, match="pixel_values"):
        qwen3vl.forward(data["model"], io["input_ids"], io["attention_mask"], data["pv"][:-4], data["grid"])


def _reference_positions(ids, mask, grid, image_token, merge):
    """transformers 4.57's get_rope_index for images, written as its loop (padding → 1)."""
    B, L = ids.shape
    pos = np.ones((3, B, L), np.int64)
    images = iter(grid)
    for b in range(B):
        keep = np.nonzero(mask[b])[0]
        row, cols, cur, i = ids[b, keep], [], 0, 0
        while i < len(row):
            if row[i] == image_token:
                t, h, w = next(images)
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h // merge), np.arange(w // merge), indexing="ij")
                cols.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + cur)
                cur = cols[-1].max() + 1
                i += tt.size
            else:
                cols.append(np.full((3, 1), cur))
                cur, i = cur + 1, i + 1
        pos[:, b, keep] = np.concatenate(cols, 1)
    return pos


def test_mrope_positions_match_reference_loop():
    grid = ((1, 4, 6), (1, 2, 2), (1, 6, 4))  # 6, 1 and 6 tokens
    img = 9
    rows = [
        [0, 0, 1, 2, *[img] * 6, 3, 4, img, 5],  # left padded, two images
        [1, 2, 3, 4, *[img] * 6, 5, 6, 7, 0],  # right padded
    ]
    ids = np.array(rows)
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    mask[1, -1] = 0
    pos, is_img, gidx = qwen3vl.mrope_positions(jnp.asarray(ids), jnp.asarray(mask), grid, img, 2)
    np.testing.assert_array_equal(pos, _reference_positions(ids, mask, grid, img, 2))
    np.testing.assert_array_equal(np.asarray(gidx)[np.asarray(is_img)], np.arange(13))


def test_bf16_file_loads(tmp_path, data):
    """A bfloat16 copy of the weights: stored exactly (bf16 params) or widened (float32 params), and the
    float32 forward from it stays within bf16 rounding of the goldens."""
    f32 = load_file(str(DIR / "model" / "model.safetensors"))
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in f32.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(DIR / "model" / "config.json", tmp_path / "config.json")
    for dtype in ("bfloat16", "float32"):
        model, _ = qwen3vl.load_pretrained(tmp_path, dtype=dtype)
        hf = qwen3vl.to_hf(model)
        assert set(hf) == set(f32)
        for k, v in hf.items():
            assert v.dtype == np.dtype(dtype), k
            np.testing.assert_array_equal(v.astype(np.float32), f32[k].astype(ml_dtypes.bfloat16).astype(np.float32))
    io = data["io"]
    out = qwen3vl.forward(model, io["input_ids"], io["attention_mask"], data["pv"], data["grid"])
    keep = io["attention_mask"].astype(bool)
    err = _close(out["last_layer"], io["last_layer_pre_norm"], keep, tol=2e-2)
    assert err > 1e-5  # the bf16 rounding is visible: the file's values were used


def test_hf_round_trip(tmp_path, data):
    f32 = load_file(str(DIR / "model" / "model.safetensors"))
    hf = qwen3vl.to_hf(data["model"])
    assert set(hf) == set(f32)
    for k, v in f32.items():
        np.testing.assert_array_equal(hf[k], v, err_msg=k)
    qwen3vl.save_pretrained(data["model"], tmp_path / "copy")
    again, cfg = qwen3vl.load_pretrained(tmp_path / "copy")
    assert cfg["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]
    for k, v in qwen3vl.to_hf(again).items():
        np.testing.assert_array_equal(v, f32[k], err_msg=k)


def test_module_tree_is_nnx_params(data):
    state = nnx.state(data["model"], nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    assert ("language_model", "layers", "self_attn", "q_proj", "kernel") in flat
    assert flat[("language_model", "layers", "self_attn", "q_proj", "kernel")].get_value().shape == (3, 64, 64)
    assert flat[("visual", "blocks", "attn", "qkv", "kernel")].get_value().shape == (3, 32, 96)
    assert flat[("visual", "deepstack_merger_list", "norm", "scale")].get_value().shape == (2, 128)
    assert sum(int(np.prod(v.get_value().shape)) for v in flat.values()) == sum(
        int(np.prod(s)) for s in qwen3vl.param_shapes(data["model"].config).values()
    )


def test_frozen_by_default_zero_grads(data):
    """frozen (the default): every parameter gradient is zero; frozen = False: every one is not."""
    io = data["io"]
    assert data["model"].frozen
    thawed = nnx.merge(*nnx.split(data["model"]))
    thawed.frozen = False
    for model, zero in ((data["model"], True), (thawed, False)):
        graphdef, state = nnx.split(model)

        def loss(state, graphdef=graphdef):
            out = qwen3vl.apply(graphdef, state, io["input_ids"], io["attention_mask"], data["pv"], data["grid"])
            return out["last_hidden_state"].sum()

        leaves = jax.tree.leaves(jax.jit(jax.grad(loss))(state))
        assert len(leaves) == 40
        assert [not np.asarray(g).any() for g in leaves] == [zero] * 40


def test_images_of_different_sizes_attend_within_their_own_frame(data):
    """Two grids of different sizes (the masked, block-diagonal vision path) give each image the tokens
    it gets alone (the equal-frames path), deepstack features included."""
    img = np.load(DIR / "image_io.npz")["image"]
    pv_a, grid_a = qwen3vl.preprocess_image(img)
    pv_b, grid_b = qwen3vl.preprocess_image(qwen3vl.psi0_image(img))
    ga, gb = tuple(int(g) for g in grid_a), tuple(int(g) for g in grid_b)
    vision = jax.jit(lambda pv, grid: data["model"].visual(pv, grid), static_argnums=1)
    both, deep = vision(np.concatenate([pv_a, pv_b]), (ga, gb))
    n = pv_a.shape[0] // 4
    for sl, pv, grid in ((slice(0, n), pv_a, ga), (slice(n, None), pv_b, gb)):
        alone, deep_alone = vision(pv, (grid,))
        np.testing.assert_allclose(both[sl], alone, atol=1e-5, rtol=0)
        np.testing.assert_allclose(deep[:, sl], deep_alone, atol=1e-5, rtol=0)


def test_params_constructor_vocab_and_missing_keys():
    cfg = json.loads((DIR / "model" / "config.json").read_text())
    tensors = load_file(str(DIR / "model" / "model.safetensors"))
    emb = "model.language_model.embed_tokens.weight"
    bigger = tensors | {emb: np.concatenate([tensors[emb], np.zeros((24, 64), np.float32)])}
    model = qwen3vl.Qwen3VL(cfg, bigger)  # a resized vocabulary (Ψ0's) is read from the tensors
    assert model.language_model.embed_tokens.embedding.get_value().shape == (1024, 64)
    assert model.config["text_config"]["vocab_size"] == 1024
    del tensors["model.visual.blocks.1.attn.qkv.weight"]
    with pytest.raises(ValueError, match=r"missing keys \['model.visual.blocks.1.attn.qkv.weight'\]"):
        qwen3vl.Qwen3VL(cfg, tensors)
