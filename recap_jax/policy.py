"""The learned policy: System-2 encoder + System-1 action expert, normalisation, sampling and loss.

Flow time is Ψ0's (see ``recap_jax.flow``): σ = 1 noise, σ = 0 data, x_σ = (1 − σ)x + σε, target ε − x,
10 Euler steps from σ = 1 to 0.

``PolicyParams`` is one pytree: the NNX graphdef and the static ``PolicyConfig`` are static fields,
the NNX parameter state and the ``NormStats`` are traced. ``sample_actions`` and ``policy_loss`` are
pure functions of it, so swapping checkpoints, prompts or β under ``jax.jit`` never recompiles.

Normalisation (Ψ0's, ``meta/stats_psi0.json`` bounds): actions min–max to [−1, 1] and clipped, a
dimension whose max equals its min passed through unchanged; un-normalisation without clipping. States
min–max to [−1, 1] and clipped, constant dimensions → 0, NaN → 0. ``NormStats.from_psi0`` /
``from_psi0_file`` read Ψ0's stats. ``NormStats.from_arrays`` computes them from data; optionally
(``min_span`` / ``state_min_span``, default off = Ψ0) it widens ranges narrower than ``MIN_SPAN``
(actions) / ``STATE_MIN_SPAN`` (states) around their midpoint: the small CPU presets turn that on. The
normalised 32-d state is zero-padded to 36 for the expert.
``NormStats.identity()`` (the default) is an identity: actions pass through (max = min), states have
bounds −1, 1 (identity on [−1, 1], clipped outside as any normalised state).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from recap_jax import flow
from recap_jax.models import action_expert as ae
from recap_jax.models import encoder as enc
from recap_jax.models import vlm_encoder as vlm
from recap_jax.models.tokenizer import PAD_ID, ByteTokenizer

RTC_MODES = ("psi0", "inpaint", "off")


@dataclass(frozen=True)
class PolicyConfig:
    """Static policy configuration.

    Attributes:
      action_expert: expert preset ("psi0", "small", "tiny").
      encoder: System-2 preset: a trainable ViT ("base" (C = 2048, pairs with psi0), "small", "tiny") or
        Ψ0's frozen Qwen3-VL ("qwen3vl-2b" (C = 2048, with "psi0": the whole Ψ0), "qwen3vl-tiny" (C = 64,
        with "tiny": the CPU test variant); see ``recap_jax.models.vlm_encoder``). Its ``out_dim`` must
        equal the expert's ``context_dim``. With a Qwen3-VL the prompt ids are its chat-template ids
        (``tokenize`` / ``config.tokenizer()``), the context is its ``last_layer`` over all L prompt tokens.
      image_size: (H, W) of the egocentric image the policy sees (multiples of the patch size 16 for the ViT;
        any size for Qwen3-VL, whose image path (``vlm_encoder.image_plan``) resizes it on device).
      prompt_max_len: L of the tokenised prompts (``ByteTokenizer(max_len=L)``, or Qwen3-VL's template ids
        with the frame's visual tokens: ≥ 77 + the text).
      vlm_path: Qwen3-VL only: the Hugging Face checkpoint directory of the VLM (tokenizer.json with its
        chat template; config.json + weights, which ``psi0.with_vlm_weights`` loads). "" = the in-memory
        tiny tokenizer of "qwen3vl-tiny"; "qwen3vl-2b" needs one to tokenize. A Ψ0 run
        (``psi0.load_psi0``) supplies the weights but not the tokenizer.
      vlm_dtype: Qwen3-VL weight/compute dtype ("" = the preset's: bf16 for the 2B, float32 for the tiny).
      chunk: H, actions per chunk (30). execute: Ta, actions executed per query (24).
      action_dim / state_dim: 36 / 32 (the state is zero-padded to ``action_dim``).
      padded_action_dims: indices of action dimensions that are padding (masked in and out).
      state_dropout / context_dropout: expert input dropouts (Ψ0: 0.2 / 0.1).
      indicator_dropout: probability of training on the bare prompt instead of the advantage-labelled one
        (π*0.6: 0.3). 0 = trained without: classifier-free guidance (β ≠ 1) is then refused.
      dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
      num_steps: Euler steps at inference (10).
      sigma_kind: training σ distribution, "uniform" (Ψ0) or "beta" (π0).
      phase_steps: 0 (Ψ0: no clock). > 0: the expert also reads the episode clock, the control step t of
        the observation (``obs["t"]`` / ``batch["t"]`` i32[B]), as the phase 2·min(t / phase_steps, 1) − 1
        in the first padding slot of its state input (index ``state_dim``). A deviation from Ψ0 for small
        data: it tells a time-indexed expert's phases apart where the state alone cannot.
      rtc: how ``sample_actions(prefix=...)`` uses a prefix (real-time chunking): "psi0" (Ψ0's: the
        normalised prefix is re-imposed before every Euler step with per-token σ = 0 on it,
        ``flow.euler_sample(prefix=...)``), "inpaint" (this package's older inpainting: the prefix
        tokens follow the straight path from their noise and the returned chunk starts with exactly the
        prefix) or "off" (a prefix is refused).
      rtc_max_delay: training-time RTC (Ψ0's ``model.rtc``): 0 = off; D > 0 = per example a delay
        d ~ U{0, …, D − 1}: the first d action tokens are fed clean (σ = 0) and left out of the loss.
      loss_reduction: ``flow.flow_matching_loss`` reduction for training: "mean" (mean over valid
        entries) or "psi0" (Ψ0's: summed over the chunk's steps, mean over the batch, 1/36 per dim).
      mask_padded_keys: False (Ψ0): action steps past the episode end are masked in the loss only;
        True: they are also zeroed and masked as attention keys (this package's older behaviour).
    """

    action_expert: str = "tiny"
    encoder: str = "tiny"
    image_size: tuple[int, int] = (96, 160)
    prompt_max_len: int = 64
    chunk: int = 30
    execute: int = 24
    action_dim: int = 36
    state_dim: int = 32
    padded_action_dims: tuple[int, ...] = ()
    state_dropout: float = 0.2
    context_dropout: float = 0.1
    indicator_dropout: float = 0.0
    dtype: str = "float32"
    num_steps: int = 10
    sigma_kind: str = "uniform"
    phase_steps: int = 0
    rtc: str = "psi0"
    rtc_max_delay: int = 0
    loss_reduction: str = "mean"
    mask_padded_keys: bool = False
    vlm_path: str = ""
    vlm_dtype: str = ""

    def __post_init__(self):
        if self.rtc not in RTC_MODES:
            raise ValueError(f"rtc must be one of {RTC_MODES}, got {self.rtc!r}")
        if not 0 <= self.rtc_max_delay <= self.chunk:
            raise ValueError(f"rtc_max_delay must be in [0, chunk={self.chunk}], got {self.rtc_max_delay}")
        if self.loss_reduction not in ("mean", "psi0"):
            raise ValueError(f"loss_reduction must be 'mean' or 'psi0', got {self.loss_reduction!r}")
        for name in ("state_dropout", "context_dropout", "indicator_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.state_dim > self.action_dim:
            raise ValueError(f"state_dim {self.state_dim} > action_dim {self.action_dim}: cannot pad the state")
        if self.phase_steps < 0:
            raise ValueError(f"phase_steps must be >= 0, got {self.phase_steps}")
        if self.phase_steps and self.state_dim >= self.action_dim:
            raise ValueError(
                f"phase_steps needs a padding slot: state_dim {self.state_dim} < action_dim {self.action_dim}"
            )
        if not 0 < self.execute <= self.chunk:
            raise ValueError(f"execute must be in (0, chunk={self.chunk}], got {self.execute}")
        if any(not 0 <= d < self.action_dim for d in self.padded_action_dims):
            raise ValueError(f"padded_action_dims {self.padded_action_dims} out of range [0, {self.action_dim})")
        if self.sigma_kind not in flow.SIGMA_KINDS:
            raise ValueError(f"sigma_kind must be one of {flow.SIGMA_KINDS}, got {self.sigma_kind!r}")
        if self.vlm_dtype not in ("", "float32", "bfloat16"):
            raise ValueError(f"vlm_dtype must be '', 'float32' or 'bfloat16', got {self.vlm_dtype!r}")
        e = self.expert_config()
        if self.is_vlm:
            out_dim = vlm.VLM_PRESETS[self.encoder].hidden
            need = vlm.image_plan(*self.image_size).num_tokens + 8
            if self.prompt_max_len < need:
                raise ValueError(
                    f"prompt_max_len {self.prompt_max_len} < {need}: the frame alone takes {need - 8} tokens"
                )
        else:
            c = self.encoder_config()
            out_dim = c.out_dim
            c.num_tokens(self.image_size, self.prompt_max_len)
        if out_dim != e.context_dim:
            raise ValueError(
                f"encoder {self.encoder!r} gives {out_dim}-d context but expert {self.action_expert!r} "
                f"reads {e.context_dim}-d; pick matching presets (tiny/tiny, small/small, base/psi0, "
                "qwen3vl-2b/psi0, qwen3vl-tiny/tiny)"
            )

    @property
    def is_vlm(self) -> bool:
        """Whether System-2 is a frozen Qwen3-VL (``vlm_encoder``)."""
        return vlm.is_vlm(self.encoder)

    @property
    def pad_id(self) -> int:
        """The prompt pad id (masks default to ids != pad_id)."""
        return vlm.VLM_PRESETS[self.encoder].pad_id if self.is_vlm else PAD_ID

    def expert_config(self) -> ae.ActionExpertConfig:
        return ae.get_config(
            self.action_expert,
            chunk=self.chunk,
            action_dim=self.action_dim,
            state_dropout=self.state_dropout,
            context_dropout=self.context_dropout,
            dtype=self.dtype,
        )

    def encoder_config(self) -> enc.EncoderConfig:
        if self.is_vlm:
            raise ValueError(f"encoder {self.encoder!r} is a Qwen3-VL, not a ViT EncoderConfig")
        return enc.get_config(self.encoder, dtype=self.dtype)

    def action_dim_mask(self) -> np.ndarray:
        """bool [A], False on padded action dimensions."""
        m = np.ones(self.action_dim, bool)
        m[list(self.padded_action_dims)] = False
        return m

    def tokenizer(self) -> ByteTokenizer | vlm.PromptTokenizer:
        """``encode(texts) -> (ids int32 [B, L], mask bool [B, L])``: bytes for the ViT, Qwen3-VL's chat
        template of [frame, text] for a VLM encoder."""
        if self.is_vlm:
            n = vlm.image_plan(*self.image_size).num_tokens
            return vlm.PromptTokenizer(self.encoder, self.vlm_path, self.prompt_max_len, n)
        return ByteTokenizer(max_len=self.prompt_max_len)


MIN_SPAN = 1e-3  # smallest data range of a normalised action dimension (radians or metres)
# Smallest data range of a normalised *state* dimension. A measured joint the demos never command
# (left arm/hand, a pinned finger) only jitters by 0.2-50 mrad; min-max over that jitter made it a
# full-scale [-1, 1] input, which closed-loop rollouts leave (measured: 21-75% of decision points
# outside, up to 23x the demo range) and the policy reacted to (a 5 mrad change moved the right-arm
# chunk by 0.04-0.08 rad). Every task-relevant state dim of BendPick spans >= 0.29 and is unaffected.
STATE_MIN_SPAN = 0.2


def _widen(lo: np.ndarray, hi: np.ndarray, min_span: float) -> tuple[np.ndarray, np.ndarray]:
    """Widens dims with ``hi - lo < min_span`` to ``min_span`` around their midpoint (0 = off). float32 [D] each."""
    if min_span < 0:
        raise ValueError(f"min_span must be >= 0 (0 = no widening), got {min_span}")
    if min_span == 0:
        return lo.astype(np.float32), hi.astype(np.float32)
    mid = 0.5 * (lo + hi)
    narrow = (hi - lo) < min_span
    lo = np.where(narrow, mid - 0.5 * min_span, lo).astype(np.float32)
    hi = np.where(narrow, mid + 0.5 * min_span, hi).astype(np.float32)
    return lo, hi


@struct.dataclass
class NormStats:
    """Min–max statistics. state_min/max float32 [S]; action_min/max float32 [A]."""

    state_min: jax.Array
    state_max: jax.Array
    action_min: jax.Array
    action_max: jax.Array

    @classmethod
    def from_arrays(cls, states, actions, min_span: float = 0.0, state_min_span: float = 0.0) -> NormStats:
        """From data: states float [N, S], actions float [..., A] (e.g. [N, A] or [N, H, A]).

        Defaults (0, 0) are Ψ0's plain min–max. Optional widening (a deviation from Ψ0 for small data; the
        CPU presets pass ``MIN_SPAN`` / ``STATE_MIN_SPAN``): an action dimension whose data range is below
        ``min_span`` (e.g. one the demos never move: the left hand, the velocity commands) is widened to
        ``[c - min_span/2, c + min_span/2]`` around its midpoint c. It then normalises to 0 and an output y
        un-normalises to c + y·min_span/2 (no clipping, as Ψ0), so an untrained or noisy policy output
        barely moves a dimension the data held fixed. (Passing such a dimension through un-normalised
        let raw N(0, 1) flow noise command ±1 rad torso tilts.)

        A state dimension whose range is below ``state_min_span`` is widened the same way to
        ``state_min_span``: its variation in the data is sensor jitter of a joint nobody commands, and
        min-max over the jitter alone would blow a few mrad up to a full-scale input (see
        ``STATE_MIN_SPAN``).
        """
        s = np.asarray(states, np.float32)
        a = np.asarray(actions, np.float32)
        if s.ndim != 2 or a.ndim < 2 or s.shape[0] == 0 or a.size == 0:
            raise ValueError(f"need states [N, S] and actions [..., A] with N > 0, got {s.shape} and {a.shape}")
        a = a.reshape(-1, a.shape[-1])
        if not (np.isfinite(s).all() and np.isfinite(a).all()):
            raise ValueError("states/actions contain non-finite values")
        s_lo, s_hi = _widen(s.min(0), s.max(0), state_min_span)
        a_lo, a_hi = _widen(a.min(0), a.max(0), min_span)
        return cls(jnp.asarray(s_lo), jnp.asarray(s_hi), jnp.asarray(a_lo), jnp.asarray(a_hi))

    @classmethod
    def from_psi0(cls, stats: dict, state_dim: int | None = None, action_dim: int | None = None) -> NormStats:
        """From Ψ0's parsed ``meta/stats_psi0.json``: {"action": {"min": [A], "max": [A], ...},
        "states": {"min": [S], "max": [S], ...}} ("bounds" normalisation = min/max).

        Validated by ``recap_jax.psi0_stats.validate_psi0_stats`` (the LeRobot importer's validator too):
        ValueError naming a missing group or statistic (all six of mean/std/min/max/q01/q99), a length that
        differs within a group or from ``state_dim``/``action_dim`` (when given), a non-finite value or
        min > max.
        """
        from recap_jax.psi0_stats import validate_psi0_stats

        v = validate_psi0_stats(stats, state_dim, action_dim)
        return cls(*(jnp.asarray(v[g][b]) for g in ("states", "action") for b in ("min", "max")))

    @classmethod
    def from_psi0_file(cls, path, state_dim: int | None = None, action_dim: int | None = None) -> NormStats:
        """``from_psi0`` of a ``meta/stats_psi0.json`` file (errors name the file)."""
        from recap_jax.psi0_stats import read_psi0_stats_file

        return cls.from_psi0(read_psi0_stats_file(path, state_dim, action_dim))

    @classmethod
    def identity(cls, state_dim: int = 32, action_dim: int = 36) -> NormStats:
        """Identity statistics: actions pass through (max = min); states have bounds −1, 1 (Ψ0's state
        rule maps constant dims to 0, so the identity there is min−max = [−1, 1])."""
        # Two separate zero arrays: one buffer in two leaves cannot be donated (train steps donate the state).
        za, zb = jnp.zeros(action_dim, jnp.float32), jnp.zeros(action_dim, jnp.float32)
        return cls(-jnp.ones(state_dim, jnp.float32), jnp.ones(state_dim, jnp.float32), za, zb)


def normalize(x: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Min–max to [−1, 1], clipped; dims with hi == lo pass through. x float [..., D] → float32 [..., D]."""
    x = jnp.asarray(x, jnp.float32)
    span = hi - lo
    ok = span > 0
    y = 2.0 * (x - lo) / jnp.where(ok, span, 1.0) - 1.0
    return jnp.where(ok, jnp.clip(y, -1.0, 1.0), x)


def normalize_states(x: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Ψ0's state rule: min–max to [−1, 1], clipped; dims with hi == lo → 0; NaN → 0.

    x float [..., S] → float32 [..., S].
    """
    x = jnp.asarray(x, jnp.float32)
    span = hi - lo
    ok = span > 0
    y = jnp.clip(2.0 * (x - lo) / jnp.where(ok, span, 1.0) - 1.0, -1.0, 1.0)
    y = jnp.where(ok, y, 0.0)
    return jnp.where(jnp.isnan(y), 0.0, y)


def unnormalize(y: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Inverse of ``normalize`` without clipping (Ψ0's); dims with hi == lo pass through.

    float [..., D] → float32 [..., D].
    """
    y = jnp.asarray(y, jnp.float32)
    span = hi - lo
    return jnp.where(span > 0, (y + 1.0) * 0.5 * span + lo, y)


class PolicyModel(nnx.Module):
    """Encoder (System-2) and action expert (System-1) in one NNX module."""

    def __init__(self, cfg: PolicyConfig, rngs: nnx.Rngs):
        if cfg.is_vlm:
            self.encoder = vlm.Qwen3VLEncoder(cfg.encoder, cfg.image_size, cfg.vlm_dtype, rngs)
        else:
            self.encoder = enc.VitEncoder(cfg.encoder_config(), rngs)
        self.expert = ae.ActionExpert(cfg.expert_config(), rngs)


@struct.dataclass
class PolicyParams:
    """The policy as a pytree: ``model`` (nnx.State of float32 params) and ``norm`` are traced."""

    model: nnx.State
    norm: NormStats
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    config: PolicyConfig = struct.field(pytree_node=False)


@functools.partial(jax.jit, static_argnums=0)
def _init_model_state(config: PolicyConfig, key: jax.Array) -> nnx.State:
    """All initialisers in one compiled program (eager NNX init compiles every small op separately)."""
    return nnx.state(PolicyModel(config, nnx.Rngs(params=key)))


def init_policy(config: PolicyConfig, key: jax.Array | int, norm_stats: NormStats | None = None) -> PolicyParams:
    """Initialises a policy (parameters float32). ``norm_stats=None`` → ``NormStats.identity``."""
    key = jax.random.key(key) if isinstance(key, int) else key
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: PolicyModel(config, nnx.Rngs(params=0))))
    state = _init_model_state(config, key)
    norm = norm_stats if norm_stats is not None else NormStats.identity(config.state_dim, config.action_dim)
    _check_norm(config, norm)
    return PolicyParams(model=state, norm=norm, graphdef=graphdef, config=config)


def abstract_policy(config: PolicyConfig) -> PolicyParams:
    """``init_policy`` as ShapeDtypeStructs (no allocation), e.g. for sharding rules or restore targets."""
    return jax.eval_shape(lambda: init_policy(config, jax.random.key(0)))


def with_norm_stats(params: PolicyParams, norm_stats: NormStats) -> PolicyParams:
    """Returns ``params`` carrying new normalisation statistics."""
    _check_norm(params.config, norm_stats)
    return params.replace(norm=norm_stats)


def trainable_mask(params: PolicyParams) -> PolicyParams:
    """Same-structure pytree of bools: True on the model parameters, False on the norm stats (and on a
    frozen Qwen3-VL System-2's weights).

    Use it with ``optax.masked`` (or ``optax.multi_transform``) so the optimiser never touches the
    statistics (``policy_loss`` stops their gradient; this also keeps weight decay off them).
    """
    frozen = params.config.is_vlm
    model = jax.tree_util.tree_map_with_path(
        lambda path, _: not (frozen and getattr(path[0], "key", None) == "encoder"), params.model
    )
    return params.replace(model=model, norm=jax.tree.map(lambda _: False, params.norm))


def _check_norm(config: PolicyConfig, norm: NormStats) -> None:
    want = {"state_min": config.state_dim, "state_max": config.state_dim}
    want |= {"action_min": config.action_dim, "action_max": config.action_dim}
    for name, d in want.items():
        if tuple(getattr(norm, name).shape) != (d,):
            raise ValueError(f"NormStats.{name} must have shape ({d},), got {getattr(norm, name).shape}")


def _model(params: PolicyParams) -> PolicyModel:
    return nnx.merge(params.graphdef, params.model)


def _inference_model(params: PolicyParams) -> PolicyModel:
    """The model with its float parameters cast once to the compute dtype (bf16 sampling then reads half
    the bytes per Euler step instead of re-casting float32 weights inside the loop)."""
    dt = jnp.dtype(params.config.dtype)
    if dt == jnp.float32:
        return _model(params)
    state = jax.tree.map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params.model)
    return nnx.merge(params.graphdef, state)


def _norm(params: PolicyParams) -> NormStats:
    return jax.lax.stop_gradient(params.norm)


def normalize_state(params: PolicyParams, state: jax.Array, t: jax.Array | None = None) -> jax.Array:
    """float [B, S] raw state (and, with ``phase_steps > 0``, the control step t int [B]) → float32 [B, A]:
    normalised, zero-padded to the action dim, the phase in slot ``state_dim`` (see ``PolicyConfig``)."""
    cfg, n = params.config, _norm(params)
    if state.shape[-1] != cfg.state_dim:
        raise ValueError(f"state must be [B, {cfg.state_dim}], got {state.shape}")
    s = normalize_states(state, n.state_min, n.state_max)
    s = jnp.pad(s, [(0, 0)] * (s.ndim - 1) + [(0, cfg.action_dim - cfg.state_dim)])
    if not cfg.phase_steps:
        return s
    if t is None:
        raise ValueError(f"phase_steps={cfg.phase_steps} needs the control step t (obs['t'] / batch['t'], int [B])")
    if t.shape != state.shape[:-1]:
        raise ValueError(f"t must be {list(state.shape[:-1])} (one control step per state), got {list(t.shape)}")
    phase = 2.0 * jnp.minimum(jnp.asarray(t, jnp.float32) / cfg.phase_steps, 1.0) - 1.0
    return s.at[..., cfg.state_dim].set(phase)


def normalize_actions(params: PolicyParams, actions: jax.Array) -> jax.Array:
    """float [..., A] absolute actions → float32 [..., A] in [−1, 1] (constant dims passed through)."""
    n = _norm(params)
    return normalize(actions, n.action_min, n.action_max)


def unnormalize_actions(params: PolicyParams, actions: jax.Array) -> jax.Array:
    """float [..., A] normalised → float32 [..., A] absolute."""
    n = _norm(params)
    return unnormalize(actions, n.action_min, n.action_max)


def _prompt_mask(ids: jax.Array, mask: jax.Array | None, pad_id: int = PAD_ID) -> jax.Array:
    if mask is None:
        return ids != pad_id
    if mask.shape != ids.shape:
        raise ValueError(f"prompt mask {mask.shape} must match prompt ids {ids.shape}")
    return mask.astype(bool)


def _check_image(cfg: PolicyConfig, image: jax.Array, batch: int) -> None:
    want = (batch, *cfg.image_size, 3)
    if tuple(image.shape) != want or image.dtype != jnp.uint8:
        raise ValueError(f"image must be uint8 {list(want)}, got {image.dtype} {list(image.shape)}")


def encode_observation(
    params: PolicyParams, image: jax.Array, prompt_ids: jax.Array, prompt_mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """System-2 features: u8 [B, H, W, 3], i32 [B, L], bool [B, L] (default ids != PAD)
    → (tokens float32 [B, N, C], mask bool [B, N]). For a frozen-feature value function wrap the call
    in ``jax.lax.stop_gradient``."""
    _check_image(params.config, image, prompt_ids.shape[0])
    tokens, mask = _model(params).encoder(
        image, prompt_ids, _prompt_mask(prompt_ids, prompt_mask, params.config.pad_id)
    )
    return tokens.astype(jnp.float32), mask


def pooled_features(
    params: PolicyParams, image: jax.Array, prompt_ids: jax.Array, prompt_mask: jax.Array | None = None
) -> jax.Array:
    """Masked mean of ``encode_observation``'s tokens: float32 [B, C]."""
    return enc.pool(*encode_observation(params, image, prompt_ids, prompt_mask))


def _is_one(beta) -> bool | None:
    """Whether a concrete β (scalar or [B]) is 1 everywhere; None when β is traced."""
    try:
        arr = np.asarray(beta, np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    return bool(np.all(arr == 1.0))


def sample_actions(
    params: PolicyParams,
    obs: dict,
    prompt_ids: jax.Array,
    key: jax.Array,
    *,
    beta: float | jax.Array = 1.0,
    uncond_ids: jax.Array | None = None,
    prefix: jax.Array | None = None,
    prefix_valid: jax.Array | None = None,
    prompt_mask: jax.Array | None = None,
    uncond_mask: jax.Array | None = None,
    noise_scale: float = 1.0,
) -> jax.Array:
    """Samples a chunk of absolute actions with ``config.num_steps`` Euler steps (σ: 1 → 0).

    Args:
      params: ``PolicyParams``.
      obs: {"state": float [B, 32], "image": uint8 [B, H, W, 3]}, with ``config.phase_steps > 0`` also
        "t": int [B] (the control step; ``recap_jax.rollout`` supplies it). Extra keys are ignored.
      prompt_ids: int32 [B, L] conditioned prompt ("advantage: high. ...") or the bare instruction.
      key: PRNG key for the initial noise.
      beta: CFG weight (scalar or [B]); v = v_uncond + β(v_cond − v_uncond). β = 1 (default) needs no
        ``uncond_ids``. β ≠ 1 needs ``uncond_ids`` and a checkpoint trained with indicator dropout.
        A traced β (under jit) with ``uncond_ids`` always runs guidance, so it too needs such a checkpoint;
        a traced β without ``uncond_ids`` cannot be checked and has no effect.
      uncond_ids: int32 [B, L] bare-instruction ids for CFG (None = no guidance).
      prefix: optional float [B, P, 36] absolute actions (P ≤ H, static) for real-time chunking, e.g. the
        previous chunk's actions [Ta:] (P = H − Ta). ``config.rtc`` = "psi0": normalised and re-imposed
        before every Euler step with σ = 0 on those tokens (Ψ0's sampler, ``flow.euler_sample(prefix=)``);
        "inpaint": the first P tokens follow the straight path from their noise to the prefix and the
        returned chunk starts with exactly ``prefix``; "off": a prefix raises. Normalising an absolute
        prefix clips it to [−1, 1]; closed loops should feed back the sampler's own normalised chunk
        instead (``sample_actions_rtc``, which the rollout and the server use).
      prefix_valid: optional bool [B]: rows where it is False ignore ``prefix`` and sample plainly (a
        batch mixing first queries of an episode with later ones). None = every row uses the prefix.
      prompt_mask / uncond_mask: bool [B, L]; default ids != PAD.
      noise_scale: multiplies the σ = 1 draw, a sampling temperature: > 1 spreads the chunks the policy
        samples, e.g. for more diverse collection. A Python number (1, the default, is the trained sampler and
        adds no operation) or a traced float scalar or [B].

    Returns: float32 [B, H, 36] absolute actions.
    """
    if prefix is not None:
        _check_prefix(params.config, prefix, prompt_ids.shape[0])
    pn = None if prefix is None else normalize_actions(params, prefix)
    actions, _ = _sample(
        params, obs, prompt_ids, key, beta, uncond_ids, prefix, pn, prefix_valid, prompt_mask, uncond_mask, noise_scale
    )
    return actions


def sample_actions_rtc(
    params: PolicyParams,
    obs: dict,
    prompt_ids: jax.Array,
    key: jax.Array,
    *,
    beta: float | jax.Array = 1.0,
    uncond_ids: jax.Array | None = None,
    prev_chunk: jax.Array | None = None,
    prev_valid: jax.Array | None = None,
    prompt_mask: jax.Array | None = None,
    uncond_mask: jax.Array | None = None,
    noise_scale: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """One closed-loop query with real-time chunking as ``config.rtc`` says: the act of the rollout
    (``recap_jax.rollout.run_wave(rtc=True)``) and of the policy server, one code path for both.

    The previous query's chunk is fed back in the policy's *normalised* action space (Ψ0's server keeps
    the sampler's raw output): its actions [Ta:] (Ta = ``config.execute``, d = H − Ta) are the prefix.
    "psi0": Ψ0's RTC sampler (prefix re-imposed before every Euler step, σ = 0 on it); "inpaint": the
    older exact inpainting of the un-normalised prefix; "off": ``prev_chunk`` is ignored (plain sampling).
    Rows with ``prev_valid`` False (the first query of an episode) sample plainly.

    Args:
      params, obs, prompt_ids, key, beta, uncond_ids, prompt_mask, uncond_mask, noise_scale: as ``sample_actions``.
      prev_chunk: float [B, H, 36] the second output of this function at the previous query, or None
        (every row is a first query).
      prev_valid: bool [B] rows whose ``prev_chunk`` is real (None = all, when ``prev_chunk`` is given).

    Returns: (actions float32 [B, H, 36] absolute, chunk float32 [B, H, 36] the same actions normalised:
      the sampler's output at σ = 0, to pass back as ``prev_chunk`` at the next query).
    """
    cfg = params.config
    if prev_chunk is None:
        if prev_valid is not None:
            raise ValueError("prev_valid needs prev_chunk")
        return _sample(
            params, obs, prompt_ids, key, beta, uncond_ids, None, None, None, prompt_mask, uncond_mask, noise_scale
        )
    b, h, a = prompt_ids.shape[0], cfg.chunk, cfg.action_dim
    if prev_chunk.shape != (b, h, a):
        raise ValueError(f"prev_chunk must be [{b}, {h}, {a}] (the previous normalised chunk), got {prev_chunk.shape}")
    if cfg.rtc == "off" or cfg.execute == cfg.chunk:  # no prefix (d = 0): plain sampling
        return _sample(
            params, obs, prompt_ids, key, beta, uncond_ids, None, None, None, prompt_mask, uncond_mask, noise_scale
        )
    pn = jnp.asarray(prev_chunk, jnp.float32)[:, cfg.execute :]
    pa = unnormalize_actions(params, pn)
    return _sample(
        params, obs, prompt_ids, key, beta, uncond_ids, pa, pn, prev_valid, prompt_mask, uncond_mask, noise_scale
    )


def _check_prefix(cfg: PolicyConfig, prefix: jax.Array, b: int) -> None:
    h, a = cfg.chunk, cfg.action_dim
    if prefix.ndim != 3 or prefix.shape[0] != b or prefix.shape[2] != a or not 0 < prefix.shape[1] <= h:
        raise ValueError(f"prefix must be [{b}, P, {a}] with 0 < P ≤ {h}, got {prefix.shape}")
    if cfg.rtc == "off":
        raise ValueError("config.rtc='off' refuses a prefix; use rtc='psi0' or 'inpaint'")


def _sample(
    params,
    obs,
    prompt_ids,
    key,
    beta,
    uncond_ids,
    prefix,
    prefix_norm,
    prefix_valid,
    prompt_mask,
    uncond_mask,
    noise_scale: float = 1.0,
):
    """The sampler behind ``sample_actions`` / ``sample_actions_rtc``: ``prefix`` f32[B, P, A] absolute and
    ``prefix_norm`` the same normalised (both or neither). Returns (absolute f32[B, H, A], normalised
    f32[B, H, A])."""
    cfg = params.config
    state, image = obs["state"], obs["image"]
    b = prompt_ids.shape[0]
    if state.shape != (b, cfg.state_dim):
        raise ValueError(f"obs['state'] must be [{b}, {cfg.state_dim}], got {state.shape}")
    _check_image(cfg, image, b)
    beta_is_one = _is_one(beta)
    use_cfg = uncond_ids is not None and beta_is_one is not True
    if uncond_ids is None and beta_is_one is False:
        raise ValueError(f"beta={beta} ≠ 1 needs uncond_ids (the bare-instruction prompt) for guidance")
    if use_cfg and cfg.indicator_dropout <= 0.0:
        raise ValueError(
            "classifier-free guidance (beta ≠ 1 with uncond_ids) needs a checkpoint trained with "
            "indicator_dropout > 0; this one was trained without (the bare prompt is out of distribution)"
        )

    h, a = cfg.chunk, cfg.action_dim
    if prefix is not None:
        _check_prefix(cfg, prefix, b)
    if prefix_valid is not None:
        if prefix is None:
            raise ValueError("prefix_valid needs a prefix")
        if jnp.shape(prefix_valid) != (b,):
            raise ValueError(f"prefix_valid must be bool [{b}], got {jnp.shape(prefix_valid)}")

    model = _inference_model(params)
    mask = _prompt_mask(prompt_ids, prompt_mask, cfg.pad_id)
    s = normalize_state(params, state, obs.get("t"))
    if use_cfg:
        if uncond_ids.shape != prompt_ids.shape:
            raise ValueError(f"uncond_ids {uncond_ids.shape} must match prompt_ids {prompt_ids.shape}")
        umask = _prompt_mask(uncond_ids, uncond_mask, cfg.pad_id)
        ctx, cmask = model.encoder(
            jnp.concatenate([image, image]),
            jnp.concatenate([prompt_ids, uncond_ids]),
            jnp.concatenate([mask, umask]),
        )
        s = jnp.concatenate([s, s])
    else:
        ctx, cmask = model.encoder(image, prompt_ids, mask)

    dim_mask = jnp.asarray(cfg.action_dim_mask())
    noise = jax.random.normal(key, (b, h, a), jnp.float32)
    if isinstance(noise_scale, int | float):
        if noise_scale <= 0:
            raise ValueError(f"noise_scale must be positive, got {noise_scale}")
        if noise_scale != 1.0:
            noise = noise * noise_scale
    else:  # traced: a scalar or one scale per row
        noise = noise * jnp.reshape(jnp.asarray(noise_scale, jnp.float32), (-1, 1, 1))
    row_ok = jnp.ones((b,), bool) if prefix_valid is None else jnp.asarray(prefix_valid, bool)
    inpaint = prefix is not None and cfg.rtc == "inpaint"
    if inpaint:
        p = prefix.shape[1]
        pad = [(0, 0), (0, h - p), (0, 0)]
        prefix_abs = jnp.pad(jnp.asarray(prefix, jnp.float32), pad)
        prefix_n = jnp.pad(jnp.asarray(prefix_norm, jnp.float32), pad)
        prefix_v = noise - prefix_n  # velocity of the straight path
        in_prefix = (jnp.arange(h) < p)[None, :, None] & row_ok[:, None, None]

    def velocity(x: jax.Array, sigma: jax.Array) -> jax.Array:
        if use_cfg:
            sig2 = jnp.concatenate([sigma, sigma]) if jnp.ndim(sigma) == 2 else sigma  # per-token σ [B, H]
            v_c, v_u = jnp.split(
                model.expert(jnp.concatenate([x, x]), sig2, ctx, cmask, s, action_dim_mask=dim_mask), 2
            )
            v = flow.cfg_velocity(v_c, v_u, beta)
        else:
            v = model.expert(x, sigma, ctx, cmask, s, action_dim_mask=dim_mask)
        return jnp.where(in_prefix, prefix_v, v) if inpaint else v

    if prefix is not None and cfg.rtc == "psi0":
        pn = jnp.asarray(prefix_norm, jnp.float32)
        x0 = flow.euler_sample(velocity, noise, cfg.num_steps, prefix=pn, prefix_valid=row_ok)
    else:
        x0 = flow.euler_sample(velocity, noise, cfg.num_steps)
    actions = unnormalize_actions(params, x0)
    if inpaint:
        return jnp.where(in_prefix, prefix_abs, actions), jnp.where(in_prefix, prefix_n, x0)
    return actions, x0.astype(jnp.float32)


def drop_indicator(
    key: jax.Array, rate: float, ids: jax.Array, mask: jax.Array, uncond_ids: jax.Array, uncond_mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Advantage-indicator dropout: per example, the bare prompt replaces the labelled one with prob. ``rate``.

    Args: key; rate in [0, 1]; ids / uncond_ids int32 [B, L]; mask / uncond_mask bool [B, L].
    Returns: (ids int32 [B, L], mask bool [B, L], dropped bool [B]).
    """
    if uncond_ids.shape != ids.shape or uncond_mask.shape != ids.shape or mask.shape != ids.shape:
        raise ValueError(
            f"prompt ids/mask {ids.shape}/{mask.shape} and uncond ids/mask {uncond_ids.shape}/{uncond_mask.shape} "
            "must all have the same shape [B, L]"
        )
    dropped = jax.random.bernoulli(key, rate, (ids.shape[0],))
    ids = jnp.where(dropped[:, None], uncond_ids, ids)
    mask = jnp.where(dropped[:, None], uncond_mask.astype(bool), mask.astype(bool))
    return ids, mask, dropped


BATCH_KEYS = ("image", "state", "prompt_ids", "prompt_mask", "actions", "action_mask")
# A batch of cached System-2 features (``recap_jax.data.features``) replaces image and prompt by these.
FEATURE_KEYS = ("context", "context_mask", "state", "actions", "action_mask")


def policy_loss(
    params: PolicyParams, batch: dict, key: jax.Array, *, per_example: bool = False
) -> tuple[jax.Array, dict]:
    """Flow-matching loss of one batch (masked MSE of the predicted velocity, normalised units).

    Args:
      params: ``PolicyParams`` (differentiate w.r.t. it; the norm stats get zero gradient).
      batch: "image" u8 [B, H, W, 3], "state" f32 [B, 32], "prompt_ids" i32 [B, L], "prompt_mask" bool [B, L],
        "actions" f32 [B, 30, 36] absolute, "action_mask" bool [B, 30]; with ``indicator_dropout > 0`` also
        "uncond_prompt_ids" i32 [B, L] and "uncond_prompt_mask" bool [B, L] (the bare instruction),
        used instead of the labelled prompt with probability ``indicator_dropout`` per example; with
        ``phase_steps > 0`` also "t" i32 [B] (the window's control step). Optional "label" int8 [B] (only
        reported). Cached features instead of image and prompt (a frozen System-2, e.g. Qwen3-VL):
        "context" f32/bf16 [B, N, C] and "context_mask" bool [B, N] (the encoder's output on the labelled
        prompt), and with ``indicator_dropout > 0`` "uncond_context" / "uncond_context_mask" (on the
        bare prompt); the same key drops the same rows as on the fly, so the loss is the same.
      key: PRNG key (σ, noise, indicator dropout, input dropouts).
      per_example: return each example's loss (``loss_reduction``'s per-example form) instead of the batch's.

    Returns: (loss float32 [] (or [B] with ``per_example``), metrics {"loss", "sigma_mean", "indicator_dropped"}).
    """
    cfg = params.config
    cached = "context" in batch
    missing = [k for k in (FEATURE_KEYS if cached else BATCH_KEYS) if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing} (has {sorted(batch)})")
    b = batch["state"].shape[0]
    h, a = cfg.chunk, cfg.action_dim
    if batch["actions"].shape != (b, h, a) or batch["action_mask"].shape != (b, h):
        raise ValueError(
            f"actions must be [{b}, {h}, {a}] and action_mask [{b}, {h}], got "
            f"{batch['actions'].shape} and {batch['action_mask'].shape}"
        )
    if batch["state"].shape != (b, cfg.state_dim):
        raise ValueError(f"state must be [{b}, {cfg.state_dim}], got {batch['state'].shape}")
    k_sigma, k_noise, k_ind, k_drop = jax.random.split(key, 4)
    model = _model(params)
    dropped = jnp.zeros((b,), bool)
    if cached:
        ctx, cmask = batch["context"], batch["context_mask"].astype(bool)
        if ctx.ndim != 3 or ctx.shape[0] != b or cmask.shape != ctx.shape[:2]:
            raise ValueError(f"context must be [{b}, N, C] and context_mask [{b}, N], got {ctx.shape}, {cmask.shape}")
        if cfg.indicator_dropout > 0.0:
            if "uncond_context" not in batch or "uncond_context_mask" not in batch:
                raise ValueError(
                    f"indicator_dropout={cfg.indicator_dropout} needs 'uncond_context' and 'uncond_context_mask' "
                    "(features of the bare instruction) in a cached-feature batch"
                )
            if batch["uncond_context"].shape != ctx.shape or batch["uncond_context_mask"].shape != cmask.shape:
                raise ValueError("uncond_context/uncond_context_mask must match context/context_mask in shape")
            dropped = jax.random.bernoulli(k_ind, cfg.indicator_dropout, (b,))
            ctx = jnp.where(dropped[:, None, None], batch["uncond_context"], ctx)
            cmask = jnp.where(dropped[:, None], batch["uncond_context_mask"].astype(bool), cmask)
        ctx = ctx.astype(jnp.float32)
    else:
        ids, mask = batch["prompt_ids"], batch["prompt_mask"].astype(bool)
        _check_image(cfg, batch["image"], b)
        if cfg.indicator_dropout > 0.0:
            if "uncond_prompt_ids" not in batch or "uncond_prompt_mask" not in batch:
                raise ValueError(
                    f"indicator_dropout={cfg.indicator_dropout} needs 'uncond_prompt_ids' and 'uncond_prompt_mask' "
                    "(the bare instruction) in the batch"
                )
            ids, mask, dropped = drop_indicator(
                k_ind, cfg.indicator_dropout, ids, mask, batch["uncond_prompt_ids"], batch["uncond_prompt_mask"]
            )
        ctx, cmask = model.encoder(batch["image"], ids, mask)
        if cfg.is_vlm:  # frozen System-2
            ctx = jax.lax.stop_gradient(ctx)
    s = normalize_state(params, batch["state"], batch.get("t"))
    x = normalize_actions(params, batch["actions"])
    sigma = flow.sample_sigma(k_sigma, (b,), cfg.sigma_kind)
    noise = jax.random.normal(k_noise, x.shape, jnp.float32)
    dim_mask = jnp.asarray(cfg.action_dim_mask())
    valid = batch["action_mask"].astype(bool)
    x = jnp.where(valid[..., None], x, 0.0)  # steps past the episode end may hold anything
    tok_sigma = jnp.broadcast_to(sigma[:, None], (b, h))
    loss_mask = valid
    if cfg.rtc_max_delay > 0:  # Ψ0's training-time RTC: a clean prefix of d ~ U{0..D-1} tokens, σ = 0
        delay = jax.random.randint(jax.random.fold_in(k_sigma, 1), (b,), 0, cfg.rtc_max_delay)
        clean = jnp.arange(h)[None, :] < delay[:, None]
        tok_sigma = jnp.where(clean, 0.0, tok_sigma)
        loss_mask = valid & ~clean
    pred = model.expert(
        flow.interpolate(x, noise, tok_sigma),
        tok_sigma,
        ctx,
        cmask,
        s,
        action_dim_mask=dim_mask,
        action_mask=valid if cfg.mask_padded_keys else None,
        dropout_key=k_drop,
    )
    reduction = cfg.loss_reduction
    if per_example:
        reduction = {"mean": "per_example", "psi0": "psi0_per_example"}[reduction]
    loss = flow.flow_matching_loss(pred, x, noise, loss_mask, dim_mask=dim_mask, reduction=reduction)
    metrics = {
        "loss": loss,
        "sigma_mean": jnp.mean(sigma),
        "indicator_dropped": jnp.mean(dropped.astype(jnp.float32)),
    }
    return loss, metrics


def tokenize(config: PolicyConfig, texts) -> tuple[np.ndarray, np.ndarray]:
    """Host-side: prompts → (int32 [B, L], bool [B, L]) with L = ``config.prompt_max_len``."""
    return config.tokenizer().encode(texts)


def replace_config(params: PolicyParams, **changes) -> PolicyParams:
    """``params`` with config fields changed that do not alter parameter shapes (e.g. dropouts, num_steps)."""
    new = dataclasses.replace(params.config, **changes)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: PolicyModel(new, nnx.Rngs(0))))
    old = [(p, x.shape) for p, x in jax.tree_util.tree_flatten_with_path(params.model)[0]]
    want = [(p, x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]]
    if old != want:
        raise ValueError(f"config change {changes} alters the parameter shapes; re-initialise instead")
    return params.replace(config=new, graphdef=graphdef)
