"""Small building blocks shared by the action expert and the encoder.

All functions are pure; modules hold only ``nnx.Param`` leaves (no RNG state), so a model's
``nnx.State`` is exactly its trainable parameters. Dropout takes an explicit PRNG key: ``key=None``
means deterministic (inference).
"""

from __future__ import annotations

import dataclasses
import difflib
import math

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-6


def linear(in_features: int, out_features: int, rngs: nnx.Rngs, dtype=jnp.float32, std: float | None = None):
    """``nnx.Linear`` with float32 parameters computing in ``dtype`` (kernel [in, out], bias [out]).

    ``std`` given: kernel ~ N(0, std²); else LeCun-normal. Bias starts at zero.
    """
    init = nnx.initializers.normal(std) if std is not None else nnx.initializers.lecun_normal()
    return nnx.Linear(
        in_features, out_features, use_bias=True, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, rngs=rngs
    )


def zero_linear(in_features: int, out_features: int, rngs: nnx.Rngs, dtype=jnp.float32):
    """Zero-initialised ``nnx.Linear`` (adaLN-Zero modulation and output layers)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=True,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


def layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
    """LayerNorm over the last axis without affine parameters, computed in float32.

    x: float [..., D] → same shape and dtype.
    """
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU with the tanh approximation (PyTorch ``approximate="tanh"``)."""
    return jax.nn.gelu(x, approximate=True)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``key`` is None or ``rate`` is 0. x: any shape → same."""
    if key is None or rate <= 0.0:
        return x
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def timestep_embedding(sigma: jax.Array, num_freqs: int = 128, scale: float = 1000.0) -> jax.Array:
    """Sinusoidal embedding of flow time, Ψ0's: t = σ·1000, freqs exp(−k·ln(1e4)/(F−1)), [cos, sin].

    Args:
      sigma: float [...] flow times (σ = 1 noise, σ = 0 data).
      num_freqs: F (128 in Ψ0, giving a 256-d embedding).
      scale: multiplier turning σ into a DDPM-like step index.

    Returns: float32 [..., 2F].
    """
    k = jnp.arange(num_freqs, dtype=jnp.float32)
    freqs = jnp.exp(-k * math.log(1e4) / (num_freqs - 1))
    arg = (jnp.asarray(sigma, jnp.float32) * scale)[..., None] * freqs
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


def sinusoidal_positions(num: int, dim: int) -> jax.Array:
    """Fixed sinusoidal position table, [sin | cos] halves (Transformer-style frequencies 1e4^(−2i/D)).

    Returns: float32 [num, dim] (dim must be even).
    """
    if dim % 2:
        raise ValueError(f"position encoding width must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(1e4) * jnp.arange(half, dtype=jnp.float32) / half)
    arg = jnp.arange(num, dtype=jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """Non-causal multi-head attention; softmax in float32.

    Args:
      q: float [B, T, N, Hd]; k, v: float [B, S, N, Hd].
      key_mask: bool [B, S] (True = attend) or None.

    Returns: float [B, T, N, Hd] (dtype of q).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


class Mlp(nnx.Module):
    """Linear(D→F) → GELU(tanh) → Linear(F→D). x: [..., D] → [..., D]."""

    def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs, dtype=jnp.float32, out_dim: int | None = None):
        self.fc1 = linear(dim, hidden, rngs, dtype)
        self.fc2 = linear(hidden, out_dim or dim, rngs, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu_tanh(self.fc1(x)))


def count_params(state: nnx.State) -> int:
    """Number of scalars in all ``nnx.Param`` leaves of ``state`` (works on ShapeDtypeStructs too)."""
    leaves = jax.tree.leaves(nnx.filter_state(state, nnx.Param) if isinstance(state, nnx.State) else state)
    return int(sum(math.prod(x.shape) for x in leaves))


def resolve_preset(presets: dict, preset, config_type: type, kind: str, **overrides):
    """Preset name (or a ``config_type`` instance) → config, with field overrides.

    An unknown name raises ``ValueError`` naming the ``kind`` of preset and the closest known name.
    """
    if isinstance(preset, config_type):
        cfg = preset
    elif preset in presets:
        cfg = presets[preset]
    else:
        close = difflib.get_close_matches(str(preset), list(presets), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {kind} preset {preset!r} (known: {sorted(presets)}){hint}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
