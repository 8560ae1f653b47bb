"""Qwen3-VL as Flax NNX modules: vision tower, deepstack, M-RoPE text decoder.

Module tree (attribute paths; `[n]` = a stacked leading layer axis created with `nnx.vmap`):

    Qwen3VL
      visual: VisionModel
        patch_embed.proj: Linear [C·Tp·p·p → Dv]        (the Conv3d with stride = kernel, flattened)
        pos_embed: Embed [num_position_embeddings, Dv]   (a 48×48 table, bilinearly interpolated)
        blocks[depth]: VisionBlock (norm1, attn.qkv, attn.proj, norm2, mlp.linear_fc1, mlp.linear_fc2)
        merger: PatchMerger (norm over Dv, linear_fc1, linear_fc2 → D)
        deepstack_merger_list[k]: PatchMerger (norm over 4·Dv)
      language_model: TextModel
        embed_tokens: Embed [V, D]
        layers[num_hidden_layers]: DecoderLayer (input_layernorm, self_attn.{q,k,v,o}_proj,
                                   self_attn.{q,k}_norm, post_attention_layernorm, mlp.{gate,up,down}_proj)
        norm: RMSNorm [D]
      lm_head: Linear [D → V] (absent when tied to embed_tokens)

Every weight is an `nnx.Param` (Linear kernels are [in, out]; `weights.py` maps the tree to and from
Hugging Face names). Stacked layers run under one `jax.lax.scan` each, so compile time does not grow
with depth. `dtype` is the compute dtype, `param_dtype` the storage dtype; norms, softmax and rotary
tables run in float32 and cast back, as transformers does.

Frozen by default: `Qwen3VL.frozen = True` wraps every parameter in `jax.lax.stop_gradient` before
use, so gradients through the VLM are zero and XLA drops its backward pass. A policy that holds the
VLM should also leave it out of its optimizer (e.g. `nnx.Optimizer(policy, tx,
wrt=nnx.All(nnx.Param, nnx.Not(nnx.PathContains("vlm"))))`) so no optimizer state is allocated for
it. Set `frozen = False` to fine-tune.

All position information is computed inside the traced call from the static image grid
(`image_grid_thw` as a tuple of (t, h, w) tuples) and the traced `input_ids` / `attention_mask`.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from .config import head_dim, tied
from .names import flat, values_from_hf

Grid = tuple[tuple[int, int, int], ...]
_NEG = -1e30  # masked attention logit (float32)


def _stacked(make, n: int, rngs: nnx.Rngs):
    """`n` copies of the module `make(rngs)` with a leading layer axis on every parameter."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(r):
        return make(r)

    return create(rngs)


def _scan(stack, body, carry, xs):
    """lax.scan `body(layer, carry, x) -> carry` over the stacked module `stack` and `xs` [n, ...]."""
    graphdef, state = nnx.split(stack)

    def step(c, sx):
        s, x = sx
        return body(nnx.merge(graphdef, s), c, x), None

    return jax.lax.scan(step, carry, (state, xs))[0]


class RMSNorm(nnx.Module):
    """Qwen's RMSNorm: x [..., D] → float32 x·rsqrt(mean(x²) + eps), cast to `dtype`, × scale [D]."""

    def __init__(self, dim: int, eps: float, *, dtype=jnp.float32, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = float(eps)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        return y.astype(self.dtype) * self.scale[...].astype(self.dtype)


def _layer_norm(dim: int, dtype, param_dtype, rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=1e-6, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding with the half-split convention: x·cos + rotate_half(x)·sin."""
    half = x.shape[-1] // 2
    return x * cos + jnp.concatenate([-x[..., half:], x[..., :half]], -1) * sin


# ---------------------------------------------------------------------------------------------
# Position tables (from the static grid; traced where they depend on input_ids / attention_mask)
# ---------------------------------------------------------------------------------------------


def vision_tables(grid: Grid, side: int, merge: int, head_dim: int, theta: float = 10000.0):
    """Per-patch tables for the images of `grid`, patches in Hugging Face's merge-window order.

    → (idx int32 [P, 4], weight float32 [P, 4]: bilinear (align-corners) taps into the side×side
    position table; cos, sin float32 [P, head_dim]: 2-D rotary (row half, column half)), P = Σ t·h·w.
    """
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim // 2, 2, dtype=jnp.float32) / (head_dim // 2)))
    per_image = {}  # one set of ops per distinct (t, h, w): a batch of equal frames stays a small program
    for t, h, w in dict.fromkeys(grid):
        hs = jnp.linspace(0.0, side - 1.0, h, dtype=jnp.float32)
        ws = jnp.linspace(0.0, side - 1.0, w, dtype=jnp.float32)
        h0, w0 = jnp.floor(hs).astype(jnp.int32), jnp.floor(ws).astype(jnp.int32)
        h1, w1 = jnp.minimum(h0 + 1, side - 1), jnp.minimum(w0 + 1, side - 1)
        dh, dw = (hs - h0)[:, None], (ws - w0)[None]
        r0, r1 = h0[:, None] * side, h1[:, None] * side
        idx = jnp.stack([r0 + w0[None], r0 + w1[None], r1 + w0[None], r1 + w1[None]], -1)
        wt = jnp.stack([(1 - dh) * (1 - dw), (1 - dh) * dw, dh * (1 - dw), dh * dw], -1)
        rows = jnp.broadcast_to(jnp.arange(h, dtype=jnp.float32)[:, None], (h, w))
        cols = jnp.broadcast_to(jnp.arange(w, dtype=jnp.float32)[None], (h, w))

        def order(a, h=h, w=w, t=t):  # [h, w, ...] raster → [t·h·w, ...] merge-window order
            a = a.reshape(h // merge, merge, w // merge, merge, *a.shape[2:])
            a = jnp.swapaxes(a, 1, 2).reshape(h * w, *a.shape[4:])
            return jnp.tile(a, (t,) + (1,) * (a.ndim - 1))

        rc = jnp.stack([order(rows), order(cols)], -1)
        freqs = jnp.concatenate([rc[:, :1] * inv, rc[:, 1:] * inv], -1)
        emb = jnp.concatenate([freqs, freqs], -1)
        per_image[(t, h, w)] = (order(idx), order(wt), jnp.cos(emb), jnp.sin(emb))
    if len(per_image) == 1:
        return tuple(jnp.tile(a, (len(grid), 1)) for a in per_image[grid[0]])
    return tuple(jnp.concatenate([per_image[g][i] for g in grid]) for i in range(4))


def _image_token_table(grid: Grid, merge: int):
    """numpy, one row per visual token in placeholder order: (t, h, w) offsets int32 [N, 3], and the
    position advance int32 [N] each token adds (max(t, h', w') on an image's last token, else 0)."""
    offs, adv = [np.zeros((1, 3), np.int32)], [np.zeros(1, np.int32)]
    for t, h, w in grid:
        hm, wm = h // merge, w // merge
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(hm), np.arange(wm), indexing="ij")
        offs.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()], -1).astype(np.int32))
        a = np.zeros(t * hm * wm, np.int32)
        a[-1] = max(t, hm, wm)
        adv.append(a)
    if len(offs) > 1:
        offs, adv = offs[1:], adv[1:]
    return np.concatenate(offs), np.concatenate(adv)


def mrope_positions(input_ids: jax.Array, attention_mask: jax.Array, grid: Grid, image_token_id: int, merge: int):
    """transformers' get_rope_index for images, traced: → (positions int32 [3, B, L], is_image bool [B, L],
    image_index int32 [B, L]).

    Per row, over the kept tokens (attention_mask = 1) only: a text token takes (p, p, p) and advances p
    by 1; an image's tokens take p + (t, h, w) over its merged grid, and p then advances by
    max(t, h', w') (transformers 4.57; 5.x advances by max(h', w'), the same for images, whose t is 1).
    Padding takes 1, so left and right padding leave the kept tokens' positions unchanged. Images
    are consumed in placeholder order across the flattened batch; `image_index` is each image token's
    row in the concatenated visual features (0 elsewhere).
    """
    keep = attention_mask.astype(bool)
    is_img = (input_ids == image_token_id) & keep
    offs, adv_tab = _image_token_table(grid, merge)
    gidx = jnp.cumsum(is_img.reshape(-1).astype(jnp.int32)).reshape(is_img.shape) - 1
    gidx = jnp.clip(gidx, 0, offs.shape[0] - 1)
    adv = jnp.where(is_img, jnp.asarray(adv_tab)[gidx], keep.astype(jnp.int32))
    start = jnp.cumsum(adv, axis=1) - adv  # exclusive: an image's tokens all see its start
    off = jnp.where(is_img[None], jnp.moveaxis(jnp.asarray(offs)[gidx], -1, 0), 0)
    pos = jnp.where(keep[None], start[None] + off, 1)
    return pos.astype(jnp.int32), is_img, gidx


def text_rotary(positions: jax.Array, head_dim: int, rope: dict):
    """M-RoPE: positions int [3, B, L] → (cos, sin) float32 [B, L, head_dim].

    Frequency j of head_dim/2 takes its position from axis h where j % 3 == 1 and j < 3·section[1],
    from w where j % 3 == 2 and j < 3·section[2], else from t (interleaved, Qwen3-VL); with
    `mrope_interleaved` false the three axes take contiguous blocks of section sizes (Qwen2-VL).
    """
    inv = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    sec = list(rope.get("mrope_section", [head_dim // 2, 0, 0]))
    axis = np.zeros(head_dim // 2, np.int32)
    if rope.get("mrope_interleaved", True):
        j = np.arange(head_dim // 2)
        axis[(j % 3 == 1) & (j < 3 * sec[1])] = 1
        axis[(j % 3 == 2) & (j < 3 * sec[2])] = 2
    else:
        axis[sec[0] : sec[0] + sec[1]] = 1
        axis[sec[0] + sec[1] : sec[0] + sec[1] + sec[2]] = 2
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv)  # [3, B, L, hd/2]
    f = jnp.take_along_axis(freqs, jnp.asarray(axis)[None, None, None, :], axis=0)[0]
    emb = jnp.concatenate([f, f], -1)
    return jnp.cos(emb), jnp.sin(emb)


# ---------------------------------------------------------------------------------------------
# Vision tower
# ---------------------------------------------------------------------------------------------


class VisionAttention(nnx.Module):
    """Full attention within each image frame: x [S, n, Dv] (S frames of n patches) → [S, n, Dv]."""

    def __init__(self, dim: int, num_heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, **kw)
        self.proj = nnx.Linear(dim, dim, **kw)
        self.num_heads = num_heads

    def __call__(self, x, cos, sin, mask=None):
        """cos, sin float32 [S, n, hd]; mask bool [S, n, n] or None (all patches of a frame see each other)."""
        S, n, _ = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(S, n, 3, nh, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        c, s = cos[:, :, None], sin[:, :, None]
        q = _rotate(q.astype(jnp.float32), c, s).astype(x.dtype)
        k = _rotate(k.astype(jnp.float32), c, s).astype(x.dtype)
        logits = jnp.einsum("sqhd,skhd->shqk", q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5)
        if mask is not None:
            logits = jnp.where(mask[:, None], logits, _NEG)
        probs = jax.nn.softmax(logits, -1).astype(v.dtype)
        return self.proj(jnp.einsum("shqk,skhd->sqhd", probs, v).reshape(S, n, -1))


class VisionMLP(nnx.Module):
    """linear_fc2(gelu_tanh(linear_fc1(x))): [..., Dv] → [..., Dv]."""

    def __init__(self, dim: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_fc1 = nnx.Linear(dim, hidden, **kw)
        self.linear_fc2 = nnx.Linear(hidden, dim, **kw)

    def __call__(self, x):
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=True))


class VisionBlock(nnx.Module):
    """Pre-norm ViT block (LayerNorm eps 1e-6): x [S, n, Dv] → [S, n, Dv]."""

    def __init__(self, vc: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        d = vc["hidden_size"]
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _layer_norm(d, dtype, param_dtype, rngs)
        self.norm2 = _layer_norm(d, dtype, param_dtype, rngs)
        self.attn = VisionAttention(d, vc["num_heads"], **kw)
        self.mlp = VisionMLP(d, vc["intermediate_size"], **kw)

    def __call__(self, x, cos, sin, mask=None):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """2×2 patch merger: x [P, Dv] (merge-window order) → [P/4, D_out].

    `postshuffle` (the deepstack mergers) normalises the 4·Dv concatenation; the final merger
    normalises each patch (Dv) before concatenating. Exact GELU between the two linears.
    """

    def __init__(self, vc: dict, postshuffle: bool, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, merged = vc["hidden_size"], vc["hidden_size"] * vc["spatial_merge_size"] ** 2
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = _layer_norm(merged if postshuffle else d, dtype, param_dtype, rngs)
        self.linear_fc1 = nnx.Linear(merged, merged, **kw)
        self.linear_fc2 = nnx.Linear(merged, vc["out_hidden_size"], **kw)
        self.merged, self.postshuffle = merged, postshuffle

    def __call__(self, x):
        y = self.norm(x.reshape(-1, self.merged)) if self.postshuffle else self.norm(x).reshape(-1, self.merged)
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(y), approximate=False))


class PatchEmbed(nnx.Module):
    """Conv3d (kernel = stride = (Tp, p, p)) on flattened patches: [P, C·Tp·p·p] → [P, Dv]."""

    def __init__(self, vc: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        n_in = vc.get("in_channels", 3) * vc["temporal_patch_size"] * vc["patch_size"] ** 2
        self.proj = nnx.Linear(n_in, vc["hidden_size"], dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values):
        return self.proj(pixel_values)


class VisionModel(nnx.Module):
    """Qwen3-VL vision tower: pixel_values [P, C·Tp·p·p] + static grid → (visual tokens [P/4, D],
    deepstack features [k, P/4, D]) for the k = len(deepstack_visual_indexes) deepstack mergers."""

    def __init__(self, vc: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.patch_embed = PatchEmbed(vc, rngs=rngs, **kw)
        self.pos_embed = nnx.Embed(vc["num_position_embeddings"], vc["hidden_size"], rngs=rngs, **kw)
        self.blocks = _stacked(lambda r: VisionBlock(vc, rngs=r, **kw), vc["depth"], rngs)
        self.merger = PatchMerger(vc, False, rngs=rngs, **kw)
        self.deepstack = tuple(int(i) for i in vc["deepstack_visual_indexes"])
        if self.deepstack:
            self.deepstack_merger_list = _stacked(
                lambda r: PatchMerger(vc, True, rngs=r, **kw), len(self.deepstack), rngs
            )
        self.depth, self.num_heads, self.dim = vc["depth"], vc["num_heads"], vc["hidden_size"]
        self.merge, self.side = vc["spatial_merge_size"], int(vc["num_position_embeddings"] ** 0.5)
        self.patch_dim, self.dtype = self.patch_embed.proj.in_features, dtype

    def __call__(self, pixel_values: jax.Array, grid: Grid):
        P = sum(t * h * w for t, h, w in grid)
        if pixel_values.shape != (P, self.patch_dim):
            raise ValueError(f"pixel_values {pixel_values.shape} != ({P}, {self.patch_dim}) for image_grid_thw {grid}")
        x = self.patch_embed(pixel_values.astype(self.dtype))
        idx, wts, cos, sin = vision_tables(grid, self.side, self.merge, self.dim // self.num_heads)
        x = x + (self.pos_embed(idx).astype(jnp.float32) * wts[..., None]).sum(1).astype(x.dtype)
        frames = [h * w for t, h, w in grid for _ in range(t)]
        if len(set(frames)) == 1:  # equal frames: batched attention, no mask
            S, n, mask = len(frames), frames[0], None
        else:  # frames of different sizes: one block-diagonal masked sequence
            seg = np.repeat(np.arange(len(frames)), frames)
            S, n, mask = 1, P, jnp.asarray(seg[:, None] == seg[None])[None]
        x, cos, sin = x.reshape(S, n, -1), cos.reshape(S, n, -1), sin.reshape(S, n, -1)
        slot = np.full(self.depth, -1, np.int32)
        for j, i in enumerate(self.deepstack):
            slot[i] = j
        buf = jnp.zeros((max(len(self.deepstack), 1), *x.shape), x.dtype)

        def body(block, carry, j):
            h, saved = carry
            h = block(h, cos, sin, mask)
            jc = jnp.maximum(j, 0)
            return h, saved.at[jc].set(jnp.where(j >= 0, h, saved[jc]))

        x, buf = _scan(self.blocks, body, (x, buf), jnp.asarray(slot))
        tokens = self.merger(x.reshape(P, -1))
        if not self.deepstack:
            return tokens, jnp.zeros((0, *tokens.shape), tokens.dtype)
        graphdef, state = nnx.split(self.deepstack_merger_list)
        deep = jax.vmap(lambda s, h: nnx.merge(graphdef, s)(h))(state, buf.reshape(len(self.deepstack), P, -1))
        return tokens, deep


# ---------------------------------------------------------------------------------------------
# Text decoder
# ---------------------------------------------------------------------------------------------


class TextAttention(nnx.Module):
    """GQA with q/k RMSNorm and M-RoPE: x [B, L, D] → [B, L, D]."""

    def __init__(self, tc: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, hd = tc["hidden_size"], head_dim(tc)
        nh, nkv = tc["num_attention_heads"], tc["num_key_value_heads"]
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(d, nh * hd, **kw)
        self.k_proj = nnx.Linear(d, nkv * hd, **kw)
        self.v_proj = nnx.Linear(d, nkv * hd, **kw)
        self.o_proj = nnx.Linear(nh * hd, d, **kw)
        self.q_norm = RMSNorm(hd, tc["rms_norm_eps"], dtype=dtype, param_dtype=param_dtype)
        self.k_norm = RMSNorm(hd, tc["rms_norm_eps"], dtype=dtype, param_dtype=param_dtype)
        self.nh, self.nkv, self.hd = nh, nkv, hd

    def __call__(self, x, cos, sin, mask):
        """cos, sin [B, L, hd] (compute dtype); mask bool [B, L, L] (query, key)."""
        B, L, _ = x.shape
        g = self.nh // self.nkv
        q = self.q_norm(self.q_proj(x).reshape(B, L, self.nh, self.hd))
        k = self.k_norm(self.k_proj(x).reshape(B, L, self.nkv, self.hd))
        v = self.v_proj(x).reshape(B, L, self.nkv, self.hd)
        q = _rotate(q, cos[:, :, None], sin[:, :, None]).reshape(B, L, self.nkv, g, self.hd)
        k = _rotate(k, cos[:, :, None], sin[:, :, None])
        logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k).astype(jnp.float32) * (self.hd**-0.5)
        logits = jnp.where(mask[:, None, None], logits, _NEG)
        probs = jax.nn.softmax(logits, -1).astype(v.dtype)
        return self.o_proj(jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(B, L, -1))


class TextMLP(nnx.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) · up_proj(x)), [..., D] → [..., D]."""

    def __init__(self, tc: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, m = tc["hidden_size"], tc["intermediate_size"]
        kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = nnx.Linear(d, m, **kw)
        self.up_proj = nnx.Linear(d, m, **kw)
        self.down_proj = nnx.Linear(m, d, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-RMSNorm decoder layer: x [B, L, D] → [B, L, D]."""

    def __init__(self, tc: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(tc["hidden_size"], tc["rms_norm_eps"], **kw)
        self.self_attn = TextAttention(tc, rngs=rngs, **kw)
        self.post_attention_layernorm = RMSNorm(tc["hidden_size"], tc["rms_norm_eps"], **kw)
        self.mlp = TextMLP(tc, rngs=rngs, **kw)

    def __call__(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nnx.Module):
    """Embedding, stacked decoder layers (one lax.scan) with deepstack additions, final RMSNorm."""

    def __init__(self, tc: dict, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.embed_tokens = nnx.Embed(tc["vocab_size"], tc["hidden_size"], rngs=rngs, **kw)
        self.layers = _stacked(lambda r: DecoderLayer(tc, rngs=r, **kw), tc["num_hidden_layers"], rngs)
        self.norm = RMSNorm(tc["hidden_size"], tc["rms_norm_eps"], **kw)
        self.num_layers = tc["num_hidden_layers"]

    def __call__(self, x, cos, sin, mask, is_img, gidx, deep):
        """x [B, L, D] input embeddings; deep [k, N, D] added at the image tokens (is_img, row gidx)
        after layers 0 … k−1. → (last layer output, final-normed), each [B, L, D]."""
        k = deep.shape[0]
        if k > self.num_layers:
            raise ValueError(f"{k} deepstack features but only {self.num_layers} text layers")

        def body(layer, h, i):
            h = layer(h, cos, sin, mask)
            if k == 0:
                return h
            add = deep[jnp.minimum(i, k - 1)][gidx].astype(h.dtype)
            return h + jnp.where(is_img[..., None] & (i < k), add, 0)

        x = _scan(self.layers, body, x, jnp.arange(self.num_layers))
        return x, self.norm(x)


class Qwen3VL(nnx.Module):
    """Qwen3-VL (Ψ0's System-2): `visual` + `language_model` (+ `lm_head` when untied), frozen by default.

    `config` is config.json as a dict (stored as a JSON string so the graph definition stays hashable
    for jit). `dtype` is the compute dtype, `param_dtype` the parameter dtype.
    """

    def __init__(
        self,
        config: dict,
        params: dict | None = None,
        *,
        dtype=None,
        param_dtype=None,
        frozen: bool = True,
        rngs: nnx.Rngs | None = None,
    ):
        """Random weights from `rngs`, or `params` = {Hugging Face key: array} (numpy or jax, traceable;
        keys as `param_shapes(config)`: a missing key is a ValueError, shapes are checked by `from_hf`;
        the vocabulary size is the embedding's row count). dtype defaults to the params' dtype (else
        float32), param_dtype to dtype."""
        if params is not None:
            dtype = dtype or jnp.result_type(next(iter(params.values())))
            emb = params.get("model.language_model.embed_tokens.weight")
            if emb is not None and emb.shape[0] != config["text_config"]["vocab_size"]:
                config = {**config, "text_config": {**config["text_config"], "vocab_size": int(emb.shape[0])}}
        dtype = jnp.dtype(dtype or jnp.float32)
        param_dtype = jnp.dtype(param_dtype or dtype)
        tc, vc = config["text_config"], config["vision_config"]

        def build(r):
            kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=r)
            parts = {"visual": VisionModel(vc, **kw), "language_model": TextModel(tc, **kw)}
            if not tied(config):
                parts["lm_head"] = nnx.Linear(tc["hidden_size"], tc["vocab_size"], use_bias=False, **kw)
            return parts

        if params is None:
            if rngs is None:
                raise ValueError("Qwen3VL needs rngs (random weights) or params (Hugging Face tensors)")
            parts = build(rngs)
        else:  # the tree's shapes only, then the mapped tensors
            parts = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
            graphdef, state = nnx.split(parts)
            nnx.replace_by_pure_dict(
                state, traverse_util.unflatten_dict(values_from_hf(flat(state), params, param_dtype))
            )
            parts = nnx.merge(graphdef, state)
        self.visual, self.language_model = parts["visual"], parts["language_model"]
        if "lm_head" in parts:
            self.lm_head = parts["lm_head"]
        self.config_json = json.dumps(config, sort_keys=True)
        self.frozen = frozen
        self.dtype = dtype

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)

    def __call__(self, input_ids, attention_mask, pixel_values, image_grid_thw: Grid) -> dict:
        """input_ids int [B, L], attention_mask [B, L] (1 = token; left or right padding), pixel_values
        [P, C·Tp·p·p] (all images' patches; None when the grid is empty), image_grid_thw a static tuple of
        (t, h, w) per image in placeholder order → {"last_layer", "last_hidden_state"} [B, L, D] (dtype).

        Traceable (call it under jit); the number of image tokens in input_ids must equal
        Σ t·h·w / merge² — `forward` checks that on concrete inputs.
        """
        if self.frozen:
            graphdef, state = nnx.split(self)
            return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))._apply(
                input_ids, attention_mask, pixel_values, image_grid_thw
            )
        return self._apply(input_ids, attention_mask, pixel_values, image_grid_thw)

    def _apply(self, input_ids, attention_mask, pixel_values, grid: Grid) -> dict:
        cfg = self.config
        tc, lm = cfg["text_config"], self.language_model
        B, L = input_ids.shape
        if attention_mask.shape != (B, L):
            raise ValueError(f"attention_mask {attention_mask.shape} != input_ids {input_ids.shape}")
        merge = self.visual.merge
        pos, is_img, gidx = mrope_positions(input_ids, attention_mask, grid, cfg["image_token_id"], merge)
        x = lm.embed_tokens(input_ids)
        if grid:
            tokens, deep = self.visual(pixel_values, grid)
            x = jnp.where(is_img[..., None], tokens[gidx].astype(x.dtype), x)
        else:
            deep = jnp.zeros((0, 1, x.shape[-1]), x.dtype)
        cos, sin = text_rotary(pos, head_dim(tc), tc["rope_parameters"])
        keep = attention_mask.astype(bool)
        mask = jnp.tril(jnp.ones((L, L), bool))[None] & keep[:, None, :]
        last, normed = lm(x, cos.astype(x.dtype), sin.astype(x.dtype), mask, is_img, gidx, deep)
        return {"last_layer": last, "last_hidden_state": normed}

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden [..., D] → vocabulary logits [..., V] (tied: embed_tokens.attend)."""
        if hasattr(self, "lm_head"):
            return self.lm_head(hidden)
        return self.language_model.embed_tokens.attend(hidden)
