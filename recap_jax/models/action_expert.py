"""System-1: Ψ0's action expert, an MM-DiT (SD3-style) flow-matching transformer, in Flax NNX.

Flow time is Ψ0's: σ = 1 is noise, σ = 0 is data; the expert predicts the velocity ε − x.

Forward pass (B batch, H chunk, A action dim, D width, N context tokens, C context width):

* time: t = 1000·σ per action token → [cos, sin] of 128 frequencies (256) → Linear(256→D) → SiLU →
  Linear(D→D): ``temb`` [B, H, D], one per action token (so a clean RTC prefix can carry σ = 0). The
  observation stream is modulated with the embedding of the **last** action token (``temb[:, -1]``, as
  Ψ0), which equals the shared embedding whenever all tokens have the same σ.
* action tokens: Linear(A→A) → GELU(tanh) → Linear(A→D), plus a learned [H, D] position table.
* observation tokens: [context tokens; state token] (Ψ0's order: the state token is appended **last**)
  where the context tokens are Linear(C→D) of the System-2 features and the state token is
  Linear(A→D) of the state padded to A (dropout 0.2 on its input), plus Ψ0's fixed sinusoidal table at
  positions 0..N, laid out interleaved (pe[p, 2i] = sin(p·w_i), pe[p, 2i+1] = cos(p·w_i),
  w_i = 1e4^(−2i/D), ``psi0_positions``), then dropout 0.1 on all N + 1 tokens (state token included).
* blocks: two streams with their own adaLN-Zero (6 chunks: shift, scale, gate for attention, then for
  the MLP; LayerNorm without affine, eps 1e-6; x·(1 + scale) + shift), one joint non-causal attention
  over [actions; observations] with per-stream Q/K/V/out projections (bias, no qk-norm), padded
  observation keys masked (action keys never), MLPs D → mlp_dim → D with GELU(tanh). In the last
  block the observation stream only provides keys/values, modulated by a 2-chunk continuous adaLN
  (scale first); its ``add_q_proj`` exists (so the released weights load) but its output cannot
  reach the actions, so it is not computed here (it does not change any output); there is no
  ``to_add_out`` and no observation MLP there.
* head: shift, scale = Linear(SiLU(temb)) (shift first); out = Linear(D→A)(x·scale + shift).

Padded action dimensions (``action_dim_mask`` False) are zeroed on input and output. Ψ0 masks action
steps past the episode end in the loss only, never as attention keys, and that is the default here
(``action_mask=None``); passing ``action_mask`` selects the older behaviour (those tokens zeroed and
masked as keys).

Initialisation (Ψ0's released weights replace it): block adaLN linears and the output projection are zero
(adaLN-Zero: every block starts as the identity and the expert outputs 0); the head's modulation is
LeCun-normal, because with ``out = W(x·scale + shift)`` a zero modulation would also zero ``W``'s gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recap_jax.models import layers

TIME_FREQS = 128  # 256-d sinusoidal time features


@dataclass(frozen=True)
class ActionExpertConfig:
    """Static shape/config of the action expert.

    Attributes:
      width: D, the token width of both streams.
      depth: number of joint blocks (the last is the context-pre-only block); ≥ 1.
      num_heads: attention heads (head dim = width / num_heads).
      mlp_dim: hidden width of the block MLPs.
      context_dim: C, width of the System-2 context tokens (2048 for Qwen3-VL-2B).
      action_dim: A (36); the state is padded to A as well.
      chunk: H, the number of action tokens (learned position table rows).
      state_dropout / context_dropout: dropout rates on the state input and the context tokens.
      dtype: compute dtype name ("float32" or "bfloat16"); parameters are always float32.
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    context_dim: int
    action_dim: int = 36
    chunk: int = 30
    state_dropout: float = 0.2
    context_dropout: float = 0.1
    dtype: str = "float32"

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth must be ≥ 1, got {self.depth}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.width % 2:
            raise ValueError(f"width must be even (sinusoidal positions), got {self.width}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


PRESETS: dict[str, ActionExpertConfig] = {
    # Ψ0's expert: 490,039,128 trainable parameters.
    "psi0": ActionExpertConfig(width=1536, depth=6, num_heads=24, mlp_dim=6144, context_dim=2048),
    # One-GPU experiments: 35,652,440 parameters.
    "small": ActionExpertConfig(width=512, depth=4, num_heads=8, mlp_dim=2048, context_dim=512),
    # CPU tests and smoke runs: 238,744 parameters.
    "tiny": ActionExpertConfig(width=64, depth=2, num_heads=4, mlp_dim=128, context_dim=64),
}


def get_config(preset: str | ActionExpertConfig, **overrides) -> ActionExpertConfig:
    """Preset name (or config) → config, with field overrides; unknown names suggest the closest."""
    return layers.resolve_preset(PRESETS, preset, ActionExpertConfig, "action-expert", **overrides)


def psi0_positions(num: int, dim: int) -> jax.Array:
    """Ψ0's observation position table (``obs_proj.enc_pos.pe``), interleaved sin/cos.

    pe[p, 2i] = sin(p·w_i), pe[p, 2i + 1] = cos(p·w_i), w_i = exp(−2i·ln(1e4)/dim).

    Returns: float32 [num, dim] (dim must be even).
    """
    if dim % 2:
        raise ValueError(f"position encoding width must be even, got {dim}")
    freqs = jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * (-math.log(1e4) / dim))
    arg = jnp.arange(num, dtype=jnp.float32)[:, None] * freqs[None, :]
    return jnp.stack([jnp.sin(arg), jnp.cos(arg)], axis=-1).reshape(num, dim)


def time_frequencies(num_freqs: int = TIME_FREQS) -> np.ndarray:
    """Ψ0's time frequencies (``time_ins_embed.w``): exp(−k·ln(1e4)/(F − 1)), float32 [F].

    The exponent is formed in float32 as PyTorch does (−k · float32(ln(1e4)/(F − 1))) and exponentiated
    in float64 then rounded, which reproduces Ψ0's stored table to the bit on all but one of 128 entries
    (at t = 900 a 1-ulp difference in w moves the velocity by ~1e-5, so the table matters).
    """
    k = np.arange(num_freqs, dtype=np.float32)
    arg = -k * np.float32(math.log(1e4) / (num_freqs - 1))
    return np.exp(arg.astype(np.float64)).astype(np.float32)


def time_embedding(sigma: jax.Array, num_freqs: int = TIME_FREQS) -> jax.Array:
    """Ψ0's time features: t = 1000·σ, [cos(t·w), sin(t·w)] with w = ``time_frequencies``.

    sigma: float [...] → float32 [..., 2F].
    """
    arg = (jnp.asarray(sigma, jnp.float32) * 1000.0)[..., None] * jnp.asarray(time_frequencies(num_freqs))
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


def _token_sigma(sigma: jax.Array, b: int, h: int) -> jax.Array:
    """σ of shape [], [B] or [B, H] → float32 [B, H]."""
    s = jnp.asarray(sigma, jnp.float32)
    if s.ndim > 2 or (s.ndim >= 1 and s.shape[0] not in (1, b)) or (s.ndim == 2 and s.shape[1] not in (1, h)):
        raise ValueError(f"sigma must be [], [{b}] or [{b}, {h}], got {s.shape}")
    return jnp.broadcast_to(s.reshape(s.shape + (1,) * (2 - s.ndim)), (b, h))


def _split(x: jax.Array, n: int) -> list[jax.Array]:
    return jnp.split(x, n, axis=-1)


class JointBlock(nnx.Module):
    """One MM-DiT block. ``last=True``: context-pre-only observation stream (keys/values only)."""

    def __init__(self, cfg: ActionExpertConfig, last: bool, rngs: nnx.Rngs):
        d, dt = cfg.width, cfg.compute_dtype
        self.last = last
        self.num_heads = cfg.num_heads
        self.norm1_act = layers.zero_linear(d, 6 * d, rngs, dt)
        self.norm1_obs = layers.zero_linear(d, (2 if last else 6) * d, rngs, dt)
        self.to_q = layers.linear(d, d, rngs, dt)
        self.to_k = layers.linear(d, d, rngs, dt)
        self.to_v = layers.linear(d, d, rngs, dt)
        self.add_q_proj = layers.linear(d, d, rngs, dt)
        self.add_k_proj = layers.linear(d, d, rngs, dt)
        self.add_v_proj = layers.linear(d, d, rngs, dt)
        self.to_out = layers.linear(d, d, rngs, dt)
        self.to_add_out = None if last else layers.linear(d, d, rngs, dt)
        self.ff_act = layers.Mlp(d, cfg.mlp_dim, rngs, dt)
        self.ff_obs = None if last else layers.Mlp(d, cfg.mlp_dim, rngs, dt)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def __call__(
        self,
        a: jax.Array,
        o: jax.Array,
        emb_act: jax.Array,
        emb_obs: jax.Array,
        act_mask: jax.Array,
        obs_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """a: [B, H, D] action tokens; o: [B, M, D] observation tokens; emb_act: [B, H, D] per-token time
        embedding; emb_obs: [B, D]; act_mask: bool [B, H] and obs_mask: bool [B, M] (False = padded key).
        Returns updated (a, o) (o unchanged in the last block)."""
        h = a.shape[1]
        sa, ca, ga, sm, cm, gm = _split(self.norm1_act(jax.nn.silu(emb_act)), 6)
        a_n = layers.layer_norm(a) * (1 + ca) + sa
        mo = self.norm1_obs(jax.nn.silu(emb_obs))[:, None, :]
        if self.last:
            co, so = _split(mo, 2)  # continuous adaLN: scale first
            o_n = layers.layer_norm(o) * (1 + co) + so
        else:
            so, co, go, smo, cmo, gmo = _split(mo, 6)
            o_n = layers.layer_norm(o) * (1 + co) + so
        k = jnp.concatenate([self.to_k(a_n), self.add_k_proj(o_n)], axis=1)
        v = jnp.concatenate([self.to_v(a_n), self.add_v_proj(o_n)], axis=1)
        mask = jnp.concatenate([act_mask, obs_mask], axis=1)
        if self.last:
            # The observation queries' outputs are discarded in the last block, so only actions query.
            q = self.to_q(a_n)
        else:
            q = jnp.concatenate([self.to_q(a_n), self.add_q_proj(o_n)], axis=1)
        out = layers.attention(self._heads(q), self._heads(k), self._heads(v), mask)
        out = out.reshape(*out.shape[:2], -1)
        a = a + ga * self.to_out(out[:, :h])
        a = a + gm * self.ff_act(layers.layer_norm(a) * (1 + cm) + sm)
        if not self.last:
            o = o + go * self.to_add_out(out[:, h:])
            o = o + gmo * self.ff_obs(layers.layer_norm(o) * (1 + cmo) + smo)
        return a, o


class ActionExpert(nnx.Module):
    """Ψ0's action expert. Parameters float32; compute in ``cfg.dtype``."""

    def __init__(self, cfg: ActionExpertConfig, rngs: nnx.Rngs):
        d, a, dt = cfg.width, cfg.action_dim, cfg.compute_dtype
        self.cfg = cfg
        self.time_fc1 = layers.linear(2 * TIME_FREQS, d, rngs, dt)
        self.time_fc2 = layers.linear(d, d, rngs, dt)
        self.views_proj = layers.linear(cfg.context_dim, d, rngs, dt)
        self.state_proj = layers.linear(a, d, rngs, dt)
        self.ac_fc1 = layers.linear(a, a, rngs, dt)
        self.ac_fc2 = layers.linear(a, d, rngs, dt)
        self.dec_pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.chunk, d), jnp.float32))
        self.blocks = nnx.List([JointBlock(cfg, i == cfg.depth - 1, rngs) for i in range(cfg.depth)])
        # Not zero: with out = W(x·scale + shift) a zero modulation would also zero the head's gradient.
        self.out_mod = layers.linear(d, 2 * d, rngs, dt)
        self.out_proj = layers.zero_linear(d, a, rngs, dt)

    def __call__(
        self,
        x: jax.Array,
        sigma: jax.Array,
        context: jax.Array,
        context_mask: jax.Array,
        state: jax.Array,
        *,
        action_dim_mask: jax.Array | None = None,
        action_mask: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Predicts the flow velocity ε − x.

        Args:
          x: float [B, H, A] noisy normalised actions x_σ.
          sigma: float [B, H] per-token flow time (or [B] / [] broadcast to every token).
          context: float [B, N, C] System-2 context tokens.
          context_mask: bool [B, N], False on padded context tokens.
          state: float [B, A] normalised state padded to A.
          action_dim_mask: optional bool [A], False on padded action dimensions.
          action_mask: optional bool [B, H]; None (Ψ0's behaviour, the default) = every action token is
            a key. Given, tokens where it is False are zeroed and masked as attention keys (the older,
            non-Ψ0 option; Ψ0 masks padded steps in the loss only).
          dropout_key: PRNG key for the state/context dropouts (training); None = deterministic.

        Returns: float32 [B, H, A] velocity.
        """
        cfg, dt = self.cfg, self.cfg.compute_dtype
        b, h, a_dim = x.shape
        if (h, a_dim) != (cfg.chunk, cfg.action_dim):
            raise ValueError(f"actions must be [B, {cfg.chunk}, {cfg.action_dim}], got {x.shape}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context must be [{b}, N, {cfg.context_dim}], got {context.shape}")
        if context_mask.shape != context.shape[:2]:
            raise ValueError(f"context_mask must be {context.shape[:2]}, got {context_mask.shape}")
        if state.shape != (b, a_dim):
            raise ValueError(f"state must be padded to [{b}, {a_dim}], got {state.shape}")
        sigma = _token_sigma(sigma, b, h)
        dmask = None if action_dim_mask is None else jnp.asarray(action_dim_mask, dt)
        k_state, k_ctx = jax.random.split(dropout_key) if dropout_key is not None else (None, None)

        temb = self.time_fc2(jax.nn.silu(self.time_fc1(time_embedding(sigma).astype(dt))))
        emb_obs = temb[:, -1]  # Ψ0: the observation stream takes the last action token's time embedding

        xa = x.astype(dt) if dmask is None else x.astype(dt) * dmask
        if action_mask is not None:
            if action_mask.shape != (b, h):
                raise ValueError(f"action_mask must be [{b}, {h}], got {action_mask.shape}")
            xa = jnp.where(action_mask[..., None], xa, 0)
        act_mask = jnp.ones((b, h), bool) if action_mask is None else action_mask.astype(bool)
        a = self.ac_fc2(layers.gelu_tanh(self.ac_fc1(xa))) + self.dec_pos[...].astype(dt)

        s_tok = self.state_proj(layers.dropout(state.astype(dt), cfg.state_dropout, k_state))[:, None, :]
        c_tok = self.views_proj(context.astype(dt))
        o = jnp.concatenate([c_tok, s_tok], axis=1)  # Ψ0: state token last
        o = o + psi0_positions(o.shape[1], cfg.width).astype(dt)
        o = layers.dropout(o, cfg.context_dropout, k_ctx)  # Ψ0: after the projection, state token included
        obs_mask = jnp.concatenate([context_mask.astype(bool), jnp.ones((b, 1), bool)], axis=1)

        for block in self.blocks:
            a, o = block(a, o, temb, emb_obs, act_mask, obs_mask)

        shift, scale = _split(self.out_mod(jax.nn.silu(temb)), 2)
        out = self.out_proj(a * scale + shift).astype(jnp.float32)
        return out if dmask is None else out * dmask.astype(jnp.float32)


def build(preset: str | ActionExpertConfig, key: jax.Array | int = 0, **overrides) -> ActionExpert:
    """Builds an initialised expert from a preset name or config."""
    key = jax.random.key(key) if isinstance(key, int) else key
    return ActionExpert(get_config(preset, **overrides), nnx.Rngs(params=key))


def abstract_params(preset: str | ActionExpertConfig, **overrides) -> nnx.State:
    """The expert's parameter state as ``jax.ShapeDtypeStruct`` leaves, without allocating (eval_shape)."""
    cfg = get_config(preset, **overrides)
    return jax.eval_shape(lambda: nnx.state(ActionExpert(cfg, nnx.Rngs(params=0)), nnx.Param))


def num_params(preset: str | ActionExpertConfig, **overrides) -> int:
    """Exact trainable parameter count of a preset (no allocation)."""
    return layers.count_params(abstract_params(preset, **overrides))
