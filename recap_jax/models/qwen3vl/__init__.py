"""Qwen3-VL (Ψ0's System-2) in JAX/NNX: weights from a Hugging Face directory (`load_pretrained`), the
forward pass (`forward`: vision tower, deepstack, M-RoPE decoder), the image path and the prompt.

`preprocess_image(image)` reproduces transformers 5's torchvision-backed (uint8 antialiased bicubic resize)
`Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2,
merge_size=2, image_mean=0.5, image_std=0.5, size={shortest_edge: 65536, longest_edge: 16777216})`;
`psi0_image(frame)` is Ψ0's first stage (nearest 360×640 → 180×320, then qwen_vl_utils' smart resize to
multiples of 32 with PIL bicubic). `preprocess_image(psi0_image(frame))` is what Ψ0 feeds the VLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .image import (  # noqa: F401
    MAX_PIXELS,
    MERGE,
    MIN_PIXELS,
    PATCH,
    QVU_MAX_PIXELS,
    QVU_MIN_PIXELS,
    TEMPORAL_PATCH,
    preprocess_image,
    psi0_image,
    smart_resize,
)
from .prompt import IMAGE_PAD, prompt_ids, prompt_text  # noqa: F401

# ---------------------------------------------------------------------------------------------
# The model: vision tower + text decoder, weights as one frozen pytree of Hugging Face key names.
# ---------------------------------------------------------------------------------------------


class Qwen3VL(nnx.Module):
    """Qwen3-VL weights (frozen): `params` maps Hugging Face key names to arrays; `config` is config.json."""

    def __init__(self, config: dict, params: dict):
        self.config = config
        self.params = nnx.Variable(params)


def _read_config(path: Path) -> dict:
    cfg = json.loads((path / "config.json").read_text())
    text = cfg["text_config"]
    rope = text.get("rope_parameters") or dict(text.get("rope_scaling") or {})
    if "rope_theta" not in rope:
        if "rope_theta" not in text:
            raise ValueError(f"{path / 'config.json'}: text_config has neither rope_parameters nor rope_theta")
        rope["rope_theta"] = text["rope_theta"]
    text["rope_parameters"] = rope
    return cfg


def param_shapes(config: dict, vocab_size: int | None = None) -> dict:
    """Hugging Face key → shape for a Qwen3-VL config (tied lm_head omitted; `vocab_size` overrides)."""
    tc, vc = config["text_config"], config["vision_config"]
    d, hd = tc["hidden_size"], tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]
    nh, nkv, mlp = tc["num_attention_heads"], tc["num_key_value_heads"], tc["intermediate_size"]
    shapes = {"model.language_model.embed_tokens.weight": (vocab_size or tc["vocab_size"], d)}
    for i in range(tc["num_hidden_layers"]):
        b = f"model.language_model.layers.{i}."
        shapes |= {
            b + "input_layernorm.weight": (d,),
            b + "post_attention_layernorm.weight": (d,),
            b + "self_attn.q_proj.weight": (nh * hd, d),
            b + "self_attn.k_proj.weight": (nkv * hd, d),
            b + "self_attn.v_proj.weight": (nkv * hd, d),
            b + "self_attn.o_proj.weight": (d, nh * hd),
            b + "self_attn.q_norm.weight": (hd,),
            b + "self_attn.k_norm.weight": (hd,),
            b + "mlp.gate_proj.weight": (mlp, d),
            b + "mlp.up_proj.weight": (mlp, d),
            b + "mlp.down_proj.weight": (d, mlp),
        }
    shapes["model.language_model.norm.weight"] = (d,)
    vd, vm, p, tp = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"], vc["temporal_patch_size"]
    pre = "model.visual."
    shapes[pre + "patch_embed.proj.weight"] = (vd, vc.get("in_channels", 3), tp, p, p)
    shapes[pre + "patch_embed.proj.bias"] = (vd,)
    shapes[pre + "pos_embed.weight"] = (vc["num_position_embeddings"], vd)
    for i in range(vc["depth"]):
        b = f"{pre}blocks.{i}."
        for n, shp in (("norm1", (vd,)), ("norm2", (vd,))):
            shapes[f"{b}{n}.weight"], shapes[f"{b}{n}.bias"] = shp, shp
        for n, o, k in (
            ("attn.qkv", 3 * vd, vd),
            ("attn.proj", vd, vd),
            ("mlp.linear_fc1", vm, vd),
            ("mlp.linear_fc2", vd, vm),
        ):
            shapes[f"{b}{n}.weight"], shapes[f"{b}{n}.bias"] = (o, k), (o,)
    merged = vd * vc["spatial_merge_size"] ** 2
    out = vc["out_hidden_size"]
    mergers = [("merger.", vd)] + [
        (f"deepstack_merger_list.{j}.", merged) for j in range(len(vc["deepstack_visual_indexes"]))
    ]
    for m, norm in mergers:
        shapes[f"{pre}{m}norm.weight"], shapes[f"{pre}{m}norm.bias"] = (norm,), (norm,)
        shapes[f"{pre}{m}linear_fc1.weight"], shapes[f"{pre}{m}linear_fc1.bias"] = (merged, merged), (merged,)
        shapes[f"{pre}{m}linear_fc2.weight"], shapes[f"{pre}{m}linear_fc2.bias"] = (out, merged), (out,)
    if not config.get("tie_word_embeddings", tc.get("tie_word_embeddings", False)):
        shapes["lm_head.weight"] = (vocab_size or tc["vocab_size"], d)
    return shapes


def abstract_params(config: dict, dtype=jnp.float32) -> dict:
    """Key → jax.ShapeDtypeStruct via jax.eval_shape (nothing allocated)."""
    shapes = param_shapes(config)
    return jax.eval_shape(lambda: {k: jnp.zeros(v, dtype) for k, v in shapes.items()})


QWEN3VL_2B = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
    "text_config": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "in_channels": 3,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2048,
        "deepstack_visual_indexes": [5, 11, 17],
    },
}
PRESETS = {"qwen3vl-2b": QWEN3VL_2B}


def load_pretrained(path, dtype: str = "float32"):
    """Hugging Face model directory → (Qwen3VL, config dict); tensors cast to `dtype` ("float32"/"bfloat16").

    Reads model.safetensors or every shard a model.safetensors.index.json names; the embedding's row
    count comes from the file; a tied lm_head is not stored. Raises ValueError naming the file and each
    missing, unexpected or mis-shaped key.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    cfg = _read_config(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = [path / "model.safetensors"]
    for f in files:
        if not f.exists():
            raise ValueError(f"{f}: weights file not found")
    raw = {}
    for f in files:
        raw.update(load_file(str(f)))
    where = str(files[0]) if len(files) == 1 else f"{path} ({len(files)} shards)"
    emb = raw.get("model.language_model.embed_tokens.weight")
    if emb is None:
        raise ValueError(f"{where}: missing key model.language_model.embed_tokens.weight")
    cfg["text_config"]["vocab_size"] = int(emb.shape[0])
    want = param_shapes(cfg, vocab_size=int(emb.shape[0]))
    if "lm_head.weight" in raw and "lm_head.weight" not in want:
        raw.pop("lm_head.weight")  # a tied head some writers store anyway
    missing = sorted(set(want) - set(raw))
    unexpected = sorted(set(raw) - set(want))
    bad = sorted(
        f"{k} {tuple(raw[k].shape)} != {want[k]}" for k in set(want) & set(raw) if tuple(raw[k].shape) != want[k]
    )
    if missing or unexpected or bad:
        raise ValueError(f"{where}: missing keys {missing}; unexpected keys {unexpected}; mis-shaped {bad}")
    params = {k: jnp.asarray(np.asarray(v, np.float32), dtype) for k, v in raw.items()}
    return Qwen3VL(cfg, params), cfg


def _ln(x, w, b, eps=1e-6):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / jnp.sqrt(v + eps) * w + b


def _rms(x, w, eps):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt((x32**2).mean(-1, keepdims=True) + eps)).astype(x.dtype) * w


def _lin(p, name, x, bias=True):
    y = x @ p[name + ".weight"].T
    return y + p[name + ".bias"] if bias else y


def _rot_half(x):
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], -1)


def _vision_tables(grid_thw, side, merge, head_dim, theta):
    """numpy: interpolation indices/weights [P, 4], rotary (cos, sin) [P, head_dim], segment ids [P]."""
    idx_all, w_all, pos_all, seg_all = [], [], [], []
    inv = 1.0 / (theta ** (np.arange(0, head_dim // 2, 2, dtype=np.float32) / (head_dim // 2)))
    seg = 0
    for t, h, w in np.asarray(grid_thw).tolist():
        hs = np.linspace(0, side - 1, h)
        ws = np.linspace(0, side - 1, w)
        h0, w0 = np.floor(hs).astype(int), np.floor(ws).astype(int)
        h1, w1 = np.minimum(h0 + 1, side - 1), np.minimum(w0 + 1, side - 1)
        dh, dw = hs - h0, ws - w0
        idx = np.stack(
            [
                (h0[:, None] * side + w0[None]),
                (h0[:, None] * side + w1[None]),
                (h1[:, None] * side + w0[None]),
                (h1[:, None] * side + w1[None]),
            ],
            -1,
        )
        wt = np.stack(
            [
                (1 - dh)[:, None] * (1 - dw)[None],
                (1 - dh)[:, None] * dw[None],
                dh[:, None] * (1 - dw)[None],
                dh[:, None] * dw[None],
            ],
            -1,
        )
        rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
        cols = np.broadcast_to(np.arange(w)[None], (h, w))

        def order(a, h=h, w=w, t=t):
            a = a.reshape(h // merge, merge, w // merge, merge, *a.shape[2:])
            a = np.swapaxes(a, 1, 2).reshape(h * w, *a.shape[4:])
            return np.tile(a, (t,) + (1,) * (a.ndim - 1))

        idx_all.append(order(idx))
        w_all.append(order(wt))
        rc = np.stack([order(rows), order(cols)], -1).astype(np.float32)
        pos_all.append(rc)
        for _ in range(t):
            seg_all.append(np.full(h * w, seg))
            seg += 1
    rc = np.concatenate(pos_all)
    freqs = np.concatenate([rc[:, :1] * inv, rc[:, 1:] * inv], -1)
    emb = np.concatenate([freqs, freqs], -1)
    return (
        np.concatenate(idx_all),
        np.concatenate(w_all).astype(np.float32),
        np.cos(emb),
        np.sin(emb),
        np.concatenate(seg_all),
    )


def _vision(p, vc, pixel_values, grid_thw):
    pre = "model.visual."
    n = pixel_values.shape[0]
    hd = vc["hidden_size"] // vc["num_heads"]
    side = int(vc["num_position_embeddings"] ** 0.5)
    idx, wts, cos, sin, seg = _vision_tables(grid_thw, side, vc["spatial_merge_size"], hd, 10000.0)
    wpe = p[pre + "patch_embed.proj.weight"].reshape(vc["hidden_size"], -1)
    x = pixel_values.astype(wpe.dtype) @ wpe.T + p[pre + "patch_embed.proj.bias"]
    x = x + (p[pre + "pos_embed.weight"][idx] * wts[..., None]).sum(1).astype(x.dtype)
    mask = seg[:, None] == seg[None]
    nh = vc["num_heads"]
    feats = []
    for i in range(vc["depth"]):
        b = f"{pre}blocks.{i}."
        hN = _ln(x, p[b + "norm1.weight"], p[b + "norm1.bias"])
        qkv = _lin(p, b + "attn.qkv", hN).reshape(n, 3, nh, hd)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        q = q * cos[:, None] + _rot_half(q) * sin[:, None]
        k = k * cos[:, None] + _rot_half(k) * sin[:, None]
        s = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        s = jnp.where(mask[None], s, -jnp.inf)
        a = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(s.astype(jnp.float32), -1).astype(v.dtype), v)
        x = x + _lin(p, b + "attn.proj", a.reshape(n, -1))
        hN = _ln(x, p[b + "norm2.weight"], p[b + "norm2.bias"])
        x = x + _lin(p, b + "mlp.linear_fc2", jax.nn.gelu(_lin(p, b + "mlp.linear_fc1", hN), approximate=True))
        if i in vc["deepstack_visual_indexes"]:
            m = f"{pre}deepstack_merger_list.{vc['deepstack_visual_indexes'].index(i)}."
            y = x.reshape(n // 4, -1)
            y = _ln(y, p[m + "norm.weight"], p[m + "norm.bias"])
            feats.append(_lin(p, m + "linear_fc2", jax.nn.gelu(_lin(p, m + "linear_fc1", y), approximate=False)))
    m = pre + "merger."
    y = _ln(x, p[m + "norm.weight"], p[m + "norm.bias"]).reshape(n // 4, -1)
    return _lin(p, m + "linear_fc2", jax.nn.gelu(_lin(p, m + "linear_fc1", y), approximate=False)), feats


def _rope_index(input_ids, attention_mask, grid_thw, image_token, merge):
    """numpy [3, B, L] M-RoPE positions (t, h, w) as transformers' get_rope_index for images."""
    B, L = input_ids.shape
    pos = np.ones((3, B, L), np.int64)
    grids = np.asarray(grid_thw).tolist()
    gi = 0
    for b in range(B):
        keep = np.nonzero(attention_mask[b])[0]
        ids = input_ids[b, keep]
        out, cur, i = [], 0, 0
        while i < len(ids):
            if ids[i] == image_token:
                t, h, w = grids[gi]
                gi += 1
                h, w = h // merge, w // merge
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
                out.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + cur)
                cur = out[-1].max() + 1
                i += t * h * w
            else:
                out.append(np.full((3, 1), cur))
                cur += 1
                i += 1
        pos[:, b, keep] = np.concatenate(out, 1)
    return pos


def forward(model: Qwen3VL, input_ids, attention_mask, pixel_values, image_grid_thw) -> dict:
    """Text decoder over input ids with the images' tokens placed.

    input_ids int [B, L], attention_mask [B, L] (1 = token), pixel_values [P, 1536], image_grid_thw [N, 3]
    → {"last_layer": [B, L, D] before the final RMSNorm, "last_hidden_state": [B, L, D] after it}.
    """
    cfg, p = model.config, model.params.get_value()
    tc, vc = cfg["text_config"], cfg["vision_config"]
    input_ids = np.asarray(input_ids)
    attention_mask = np.asarray(attention_mask)
    B, L = input_ids.shape
    x = p["model.language_model.embed_tokens.weight"][input_ids]
    img, feats = _vision(p, vc, jnp.asarray(pixel_values), image_grid_thw)
    is_img = input_ids == cfg["image_token_id"]
    if int(is_img.sum()) != img.shape[0]:
        raise ValueError(f"{int(is_img.sum())} image tokens but {img.shape[0]} visual features")
    flat = np.nonzero(is_img.reshape(-1))[0]
    x = x.reshape(B * L, -1).at[flat].set(img.astype(x.dtype)).reshape(B, L, -1)
    pos = _rope_index(input_ids, attention_mask, image_grid_thw, cfg["image_token_id"], vc["spatial_merge_size"])
    hd = tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]
    rope = tc["rope_parameters"]
    inv = 1.0 / (rope["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    f = pos[..., None].astype(np.float32) * inv  # [3, B, L, hd/2]
    sec = rope.get("mrope_section", [24, 20, 20])
    ft = f[0].copy()
    for d, off in ((1, 1), (2, 2)):
        sl = slice(off, sec[d] * 3, 3)
        ft[..., sl] = f[d][..., sl]
    emb = np.concatenate([ft, ft], -1)
    cos, sin = jnp.asarray(np.cos(emb))[:, :, None], jnp.asarray(np.sin(emb))[:, :, None]
    causal = np.tril(np.ones((L, L), bool))[None] & attention_mask.astype(bool)[:, None, :]
    nh, nkv, eps = tc["num_attention_heads"], tc["num_key_value_heads"], tc["rms_norm_eps"]
    for i in range(tc["num_hidden_layers"]):
        b = f"model.language_model.layers.{i}."
        h = _rms(x, p[b + "input_layernorm.weight"], eps)
        q = _rms(_lin(p, b + "self_attn.q_proj", h, False).reshape(B, L, nh, hd), p[b + "self_attn.q_norm.weight"], eps)
        k = _rms(
            _lin(p, b + "self_attn.k_proj", h, False).reshape(B, L, nkv, hd), p[b + "self_attn.k_norm.weight"], eps
        )
        v = _lin(p, b + "self_attn.v_proj", h, False).reshape(B, L, nkv, hd)
        q = q * cos + _rot_half(q) * sin
        k = k * cos + _rot_half(k) * sin
        k, v = jnp.repeat(k, nh // nkv, 2), jnp.repeat(v, nh // nkv, 2)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
        s = jnp.where(causal[:, None], s, -1e30)
        a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s.astype(jnp.float32), -1).astype(v.dtype), v)
        x = x + _lin(p, b + "self_attn.o_proj", a.reshape(B, L, -1), False)
        h = _rms(x, p[b + "post_attention_layernorm.weight"], eps)
        g = jax.nn.silu(_lin(p, b + "mlp.gate_proj", h, False)) * _lin(p, b + "mlp.up_proj", h, False)
        x = x + _lin(p, b + "mlp.down_proj", g, False)
        if i < len(feats):
            x = x.reshape(B * L, -1).at[flat].add(feats[i].astype(x.dtype)).reshape(B, L, -1)
    return {"last_layer": x, "last_hidden_state": _rms(x, p["model.language_model.norm.weight"], eps)}
