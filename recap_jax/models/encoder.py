"""System-2: the vision-language encoder that turns (image, prompt) into context tokens for the expert.

Interface (``ContextEncoder``): images uint8 [B, H, W, 3], prompt ids int32 [B, L], prompt mask bool [B, L]
→ (tokens float [B, N, C], mask bool [B, N]) with N = (H/p)·(W/p) + L: the image patches first (always
valid), then the prompt tokens (valid where the prompt mask is).

The default implementation is a small trainable ViT-style encoder: non-overlapping p×p patches of the
egocentric image (pixels scaled to [−1, 1]) → Linear; byte-token embeddings of the prompt; a learned
type embedding per modality and a fixed sinusoidal position over the joint sequence; pre-LN transformer
layers with padded prompt keys masked; final LayerNorm → Linear(width → C).

Ψ0 uses Qwen3-VL-2B (frozen, hidden 2048) here. The ``base`` preset produces C = 2048 so that the
``psi0`` expert can be paired with it now and with a Qwen3-VL feature extractor later: anything that
implements ``ContextEncoder`` with ``out_dim`` = 2048 fits the same expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from recap_jax.models import layers
from recap_jax.models.tokenizer import VOCAB_SIZE

QWEN3VL_HIDDEN = 2048


class ContextEncoder(Protocol):
    """What the policy needs from System-2."""

    out_dim: int

    def __call__(
        self, images: jax.Array, prompt_ids: jax.Array, prompt_mask: jax.Array, *, dropout_key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """u8 [B, H, W, 3], i32 [B, L], bool [B, L] → (float [B, N, C], bool [B, N])."""
        ...


@dataclass(frozen=True)
class EncoderConfig:
    """Static config of the ViT encoder.

    Attributes:
      width / depth / num_heads / mlp_dim: transformer sizes.
      out_dim: C, the width of the context tokens handed to the expert.
      patch: square patch size p in pixels; the image height and width must be multiples of it.
      vocab_size: prompt vocabulary (ByteTokenizer's 259).
      dtype: compute dtype name ("float32" or "bfloat16"); parameters are float32.
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    out_dim: int
    patch: int = 16
    vocab_size: int = VOCAB_SIZE
    dtype: str = "float32"

    def __post_init__(self):
        if self.width % self.num_heads or self.width % 2:
            raise ValueError(f"width {self.width} must be even and divisible by num_heads {self.num_heads}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def num_tokens(self, image_size: tuple[int, int], prompt_len: int) -> int:
        """N for an image of ``image_size`` (H, W) and prompts of length L."""
        h, w = image_size
        if h % self.patch or w % self.patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {self.patch}")
        return (h // self.patch) * (w // self.patch) + prompt_len


PRESETS: dict[str, EncoderConfig] = {
    "tiny": EncoderConfig(width=64, depth=2, num_heads=4, mlp_dim=128, out_dim=64),
    "small": EncoderConfig(width=384, depth=4, num_heads=6, mlp_dim=1536, out_dim=512),
    # Context width of Qwen3-VL-2B, for the psi0 expert.
    "base": EncoderConfig(width=768, depth=6, num_heads=12, mlp_dim=3072, out_dim=QWEN3VL_HIDDEN),
}


def get_config(preset: str | EncoderConfig, **overrides) -> EncoderConfig:
    """Preset name (or config) → config, with overrides; unknown names suggest the closest."""
    return layers.resolve_preset(PRESETS, preset, EncoderConfig, "encoder", **overrides)


class EncoderLayer(nnx.Module):
    """Pre-LN transformer layer with a key mask. x: [B, N, W] → [B, N, W]."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        w, dt = cfg.width, cfg.compute_dtype
        self.num_heads = cfg.num_heads
        self.ln1 = nnx.LayerNorm(w, epsilon=layers.LN_EPS, dtype=dt, param_dtype=jnp.float32, rngs=rngs)
        self.qkv = layers.linear(w, 3 * w, rngs, dt)
        self.proj = layers.linear(w, w, rngs, dt)
        self.ln2 = nnx.LayerNorm(w, epsilon=layers.LN_EPS, dtype=dt, param_dtype=jnp.float32, rngs=rngs)
        self.mlp = layers.Mlp(w, cfg.mlp_dim, rngs, dt)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, n, w = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)).reshape(b, n, 3 * self.num_heads, w // self.num_heads), 3, axis=2)
        x = x + self.proj(layers.attention(q, k, v, mask).reshape(b, n, w))
        return x + self.mlp(self.ln2(x))


class VitEncoder(nnx.Module):
    """Default System-2: ViT patches + prompt byte embeddings + a few transformer layers."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        w, dt = cfg.width, cfg.compute_dtype
        self.cfg = cfg
        self.out_dim = cfg.out_dim
        self.patch_embed = layers.linear(cfg.patch * cfg.patch * 3, w, rngs, dt)
        self.token_embed = nnx.Embed(cfg.vocab_size, w, dtype=dt, param_dtype=jnp.float32, rngs=rngs)
        self.type_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (2, w), jnp.float32))
        self.layers = nnx.List([EncoderLayer(cfg, rngs) for _ in range(cfg.depth)])
        self.ln_out = nnx.LayerNorm(w, epsilon=layers.LN_EPS, dtype=dt, param_dtype=jnp.float32, rngs=rngs)
        self.out_proj = layers.linear(w, cfg.out_dim, rngs, dt)

    def __call__(
        self, images: jax.Array, prompt_ids: jax.Array, prompt_mask: jax.Array, *, dropout_key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes one image and prompt per example.

        Args:
          images: uint8 [B, H, W, 3] (H, W multiples of the patch size).
          prompt_ids: int32 [B, L] ByteTokenizer ids.
          prompt_mask: bool [B, L], True on real tokens.
          dropout_key: unused (the encoder has no dropout); accepted for the protocol.

        Returns:
          tokens: float [B, N, C] (compute dtype), N = (H/p)(W/p) + L.
          mask: bool [B, N].
        """
        del dropout_key
        cfg, dt = self.cfg, self.cfg.compute_dtype
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [B, H, W, 3], got {images.shape} {images.dtype}")
        b, h, w, _ = images.shape
        cfg.num_tokens((h, w), prompt_ids.shape[-1])  # validates the patch grid
        if prompt_ids.shape != prompt_mask.shape or prompt_ids.shape[0] != b:
            raise ValueError(f"prompt_ids {prompt_ids.shape} and prompt_mask {prompt_mask.shape} must be [{b}, L]")
        p = cfg.patch
        x = images.astype(jnp.float32) / 127.5 - 1.0
        x = x.reshape(b, h // p, p, w // p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * 3)
        img = self.patch_embed(x.astype(dt)) + self.type_embed[0].astype(dt)
        txt = self.token_embed(prompt_ids) + self.type_embed[1].astype(dt)
        tokens = jnp.concatenate([img, txt], axis=1)
        tokens = tokens + layers.sinusoidal_positions(tokens.shape[1], cfg.width).astype(dt)
        mask = jnp.concatenate([jnp.ones(img.shape[:2], bool), prompt_mask.astype(bool)], axis=1)
        for layer in self.layers:
            tokens = layer(tokens, mask)
        return self.out_proj(self.ln_out(tokens)), mask


def build(preset: str | EncoderConfig, key: jax.Array | int = 0, **overrides) -> VitEncoder:
    """Builds an initialised encoder from a preset name or config."""
    key = jax.random.key(key) if isinstance(key, int) else key
    return VitEncoder(get_config(preset, **overrides), nnx.Rngs(params=key))


def pool(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean over tokens: float [B, N, C], bool [B, N] → float32 [B, C]."""
    m = mask.astype(jnp.float32)[..., None]
    return jnp.sum(tokens.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
