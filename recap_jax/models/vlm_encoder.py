"""Qwen3-VL as the policy's System-2: Ψ0's frozen VLM behind the ``ContextEncoder`` interface.

The expert reads the VLM's ``last_layer`` states (the last decoder layer's output before the final
RMSNorm, Ψ0's ``hidden_states[-1]`` under transformers 4.57) of **all** tokens of the prompt
[frame, instruction] — the chat template of one user turn [image, text] with the generation prompt —
with their mask. The state token is appended after them by the expert (``ActionExpert``).

Prompt ids (``PromptTokenizer``): the chat template with the ``<|image_pad|>`` expanded to the frame's
visual token count (77 for a 180×320 or 360×640 frame), right-padded with the preset's pad id to
``PolicyConfig.prompt_max_len``. The advantage text sits inside the instruction
(``advantage.format_prompt``: "advantage: high. bend to pick up …").

Image path, on device (``device_pixels``, jit-able, exact to the host reference
``qwen3vl.preprocess_image(qwen3vl.psi0_image(frame))``): a 360×640 frame is resized (nearest) to
180×320; then PIL's bicubic smart resize to multiples of 32 (qwen_vl_utils, 180×320 → 192×320); then
the processor's antialiased bicubic resize (torchvision uint8) to its own smart size (→ 224×352), both
in integer fixed point as those libraries compute them; then (x/255 − 0.5)/0.5, the frame duplicated
over the temporal patch and patchified in Hugging Face's order (2×2 merge windows). Static shapes:
``image_plan(H, W)`` fixes every size from the policy's ``image_size``.

Presets: ``qwen3vl-2b`` (Qwen3-VL-2B-Instruct, 2,127,532,032 parameters, bf16 weights) and
``qwen3vl-tiny`` (the golden-sized random model of ``tests/data/qwen3vl_tiny``: text 3 layers ×
64, vision 3 × 32; float32), which pairs with the ``tiny`` expert (context 64) for CPU tests; its
tokenizer is a byte-level BPE built in memory (``tiny_tokenizer``) with the template's special tokens
at the tiny model's ids.

Frozen: the weights are ``qwen3vl.Qwen3VL``'s own (frozen: its output stops gradients);
``policy.trainable_mask`` marks them untrainable and ``policy_loss`` also stops gradients at the
encoder's output.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recap_jax.models import qwen3vl
from recap_jax.models.qwen3vl.image import resample_matrix

QWEN3VL_TINY = {
    "image_token_id": 900,
    "video_token_id": 901,
    "vision_start_token_id": 898,
    "vision_end_token_id": 899,
    "tie_word_embeddings": True,
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 1000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 3,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "in_channels": 3,
        "num_position_embeddings": 2304,
        "out_hidden_size": 64,
        "deepstack_visual_indexes": [0, 1],
    },
}


@dataclass(frozen=True)
class VlmPreset:
    """A Qwen3-VL System-2 preset: its config.json dict, weight dtype and prompt pad id."""

    config: dict
    dtype: str
    pad_id: int

    @property
    def hidden(self) -> int:
        return int(self.config["text_config"]["hidden_size"])


VLM_PRESETS: dict[str, VlmPreset] = {
    # <|endoftext|> pads Qwen's prompts.
    "qwen3vl-2b": VlmPreset(qwen3vl.PRESETS["qwen3vl-2b"], "bfloat16", 151643),
    "qwen3vl-tiny": VlmPreset(QWEN3VL_TINY, "float32", 895),
}


def is_vlm(name: str) -> bool:
    """Whether an encoder preset name is a Qwen3-VL System-2."""
    return name in VLM_PRESETS


def vlm_config(name: str) -> dict:
    """A copy of the preset's config.json dict."""
    if name not in VLM_PRESETS:
        raise ValueError(f"unknown Qwen3-VL preset {name!r} (known: {sorted(VLM_PRESETS)})")
    return copy.deepcopy(VLM_PRESETS[name].config)


def num_vlm_params(name: str) -> int:
    """Parameter count of a preset (tied lm_head counted once)."""
    return sum(int(np.prod(s)) for s in qwen3vl.param_shapes(VLM_PRESETS[name].config).values())


def config_mismatches(preset: str, config: dict) -> list[str]:
    """Where a Qwen3-VL config.json dict disagrees with a preset: every preset field (recursively) that
    the file sets to another value or lacks; token ids and weight-shape fields included. [] = compatible."""
    out: list[str] = []

    def walk(want, have, path):
        if isinstance(want, dict):
            if not isinstance(have, dict):
                out.append(f"{path or '<root>'}: expected a dict, got {have!r}")
                return
            for k, v in want.items():
                if k not in have:
                    if k not in ("rope_type", "mrope_interleaved", "in_channels", "tie_word_embeddings"):
                        out.append(f"{path}{k}: missing (preset {v!r})")
                    continue
                walk(v, have[k], f"{path}{k}.")
        elif isinstance(want, float):
            if not isinstance(have, int | float) or abs(float(have) - want) > 1e-9 * max(1.0, abs(want)):
                out.append(f"{path[:-1]}: {have!r} != preset {want!r}")
        elif isinstance(want, list | tuple):
            if not isinstance(have, list | tuple) or list(have) != list(want):
                out.append(f"{path[:-1]}: {have!r} != preset {want!r}")
        elif want != have:
            out.append(f"{path[:-1]}: {have!r} != preset {want!r}")

    cfg = dict(config)
    text = dict(cfg.get("text_config", {}))
    if "rope_parameters" not in text:  # transformers 4.x style
        rope = dict(text.get("rope_scaling") or {})
        if "rope_theta" in text:
            rope["rope_theta"] = text["rope_theta"]
        text["rope_parameters"] = rope
    cfg["text_config"] = text
    walk(VLM_PRESETS[preset].config, cfg, "")
    return out


# ---------------------------------------------------------------------------------------------
# The image path on device.
# ---------------------------------------------------------------------------------------------

PIL_BITS = 22  # PIL's PRECISION_BITS for 8-bit resampling


@dataclass(frozen=True)
class ImagePlan:
    """Static sizes of Ψ0's image path for frames of ``in_hw``: optional nearest to ``nearest_hw``,
    PIL bicubic to ``pil_hw``, the processor's resize to ``proc_hw``; ``grid`` = (1, h/16, w/16)."""

    in_hw: tuple[int, int]
    nearest_hw: tuple[int, int] | None
    pil_hw: tuple[int, int]
    proc_hw: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        return (1, self.proc_hw[0] // qwen3vl.PATCH, self.proc_hw[1] // qwen3vl.PATCH)

    @property
    def num_patches(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def num_tokens(self) -> int:
        """Visual tokens after the 2×2 merge (77 for a 180×320 frame)."""
        return self.num_patches // (qwen3vl.MERGE * qwen3vl.MERGE)


@functools.cache
def image_plan(height: int, width: int) -> ImagePlan:
    """The plan for uint8 [height, width, 3] frames (as ``qwen3vl.psi0_image`` + ``preprocess_image``)."""
    near = (180, 320) if (height, width) == (360, 640) else None
    h, w = near or (height, width)
    pil = qwen3vl.smart_resize(h, w, 32, qwen3vl.QVU_MIN_PIXELS, qwen3vl.QVU_MAX_PIXELS)
    proc = qwen3vl.smart_resize(*pil, qwen3vl.PATCH * qwen3vl.MERGE, qwen3vl.MIN_PIXELS, qwen3vl.MAX_PIXELS)
    return ImagePlan((height, width), near, pil, proc)


def _pass(x: jax.Array, in_size: int, out_size: int, axis: int, bits: int | None) -> jax.Array:
    """One separable resampling pass of int32 [B, H, W, C] along ``axis`` (1 rows, 2 columns), rounded to
    uint8 levels as the libraries do: (Σ w·x + 2^(bits−1)) >> bits, clipped to [0, 255]."""
    if in_size == out_size:
        return x
    m, b = resample_matrix(in_size, out_size, bits)
    m = jnp.asarray(m)
    if axis == 2:
        y = jnp.einsum("oi,bhic->bhoc", m, x, preferred_element_type=jnp.int32)
    else:
        y = jnp.einsum("oi,biwc->bowc", m, x, preferred_element_type=jnp.int32)
    return jnp.clip(jnp.right_shift(y + (1 << (b - 1)), b), 0, 255)


def device_pixels(images: jax.Array, plan: ImagePlan | None = None) -> jax.Array:
    """Ψ0's image path on device: uint8 [B, H, W, 3] → pixel_values float32 [B·P, 1536] (Hugging Face's
    layout, image after image; P = ``plan.num_patches``, the grid of each is ``plan.grid``).

    Equals ``qwen3vl.preprocess_image(qwen3vl.psi0_image(frame))[0]`` per frame (integer arithmetic
    throughout, so exactly)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [B, H, W, 3], got {images.dtype} {images.shape}")
    b, h, w, _ = images.shape
    plan = plan or image_plan(h, w)
    if plan.in_hw != (h, w):
        raise ValueError(f"image plan for {plan.in_hw} applied to frames of {(h, w)}")
    x = images
    if plan.nearest_hw is not None:
        nh, nw = plan.nearest_hw
        rows = np.minimum(np.floor(np.arange(nh) * (h / nh)).astype(np.int64), h - 1)
        cols = np.minimum(np.floor(np.arange(nw) * (w / nw)).astype(np.int64), w - 1)
        x = x[:, rows][:, :, cols]
        h, w = nh, nw
    x = x.astype(jnp.int32)
    (ph, pw), (qh, qw) = plan.pil_hw, plan.proc_hw
    x = _pass(_pass(x, w, pw, 2, PIL_BITS), h, ph, 1, PIL_BITS)  # PIL: horizontal, then vertical
    x = _pass(_pass(x, pw, qw, 2, None), ph, qh, 1, None)  # torchvision: width, then height
    x = (x.astype(jnp.float32) / 255.0 - 0.5) / 0.5  # [B, qh, qw, 3]
    tp, p, m = qwen3vl.TEMPORAL_PATCH, qwen3vl.PATCH, qwen3vl.MERGE
    _, gh, gw = plan.grid
    x = jnp.broadcast_to(jnp.transpose(x, (0, 3, 1, 2))[:, None], (b, tp, 3, qh, qw))
    x = x.reshape(b, tp, 3, gh // m, m, p, gw // m, m, p)
    x = jnp.transpose(x, (0, 3, 6, 4, 7, 2, 1, 5, 8))
    return x.reshape(b * gh * gw, 3 * tp * p * p)


# ---------------------------------------------------------------------------------------------
# Prompts.
# ---------------------------------------------------------------------------------------------

TINY_SPECIAL = {
    "<|endoftext|>": 895,
    "<|im_start|>": 896,
    "<|im_end|>": 897,
    "<|vision_start|>": 898,
    "<|vision_end|>": 899,
    "<|image_pad|>": 900,
    "<|video_pad|>": 901,
}
# Qwen3-VL-Instruct's chat template, reduced to what Ψ0 renders: user turns with image / text items and
# the generation prompt (no system turn).
CHAT_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}{%- else %}{%- for c in message.content %}"
    "{%- if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif c.type == 'text' %}{{ c.text }}{%- endif %}{%- endfor %}{%- endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """The ``qwen3vl-tiny`` tokenizer: byte-level BPE without merges (byte b → id b + 1) plus Qwen's
    special tokens at the tiny model's ids (``TINY_SPECIAL``) and the chat template. In memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=lambda c: _byte_of(c))
    vocab = {c: i + 1 for i, c in enumerate(byte_chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Special tokens are added at their fixed ids (the model's vocabulary has room up to 999).
    for name, idx in sorted(TINY_SPECIAL.items(), key=lambda kv: kv[1]):
        while tok.get_vocab_size(with_added_tokens=True) < idx:
            tok.add_tokens([f"<|unused{tok.get_vocab_size(with_added_tokens=True)}|>"])
        tok.add_special_tokens([name])
    got = {n: tok.token_to_id(n) for n in TINY_SPECIAL}
    if got != TINY_SPECIAL:
        raise RuntimeError(f"tiny tokenizer special ids {got} != {TINY_SPECIAL}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _byte_of(c: str) -> int:
    """Inverse of GPT-2's byte → unicode map used by ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))[c]


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str):
    """transformers' tokenizer of a local Qwen3-VL directory (tokenizer.json + its chat template)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer.json").exists() and not (Path(path) / "tokenizer_config.json").exists():
        raise ValueError(f"{path}: no tokenizer.json / tokenizer_config.json (a Qwen3-VL checkpoint directory?)")
    return AutoTokenizer.from_pretrained(path)


@dataclass(frozen=True)
class PromptTokenizer:
    """Texts → Qwen3-VL prompt ids of [frame, text] (``qwen3vl.prompt_ids``), right-padded to ``max_len``.

    Attributes: preset (encoder preset name), vlm_path ("" = the tiny in-memory tokenizer; the
    2B needs its checkpoint directory), max_len (L), num_image_tokens (``image_plan(...).num_tokens``).
    """

    preset: str
    vlm_path: str
    max_len: int
    num_image_tokens: int

    @property
    def pad_id(self) -> int:
        return VLM_PRESETS[self.preset].pad_id

    def hf(self):
        if self.vlm_path:
            return load_tokenizer(self.vlm_path)
        if self.preset != "qwen3vl-tiny":
            raise ValueError(f"encoder {self.preset!r} needs PolicyConfig.vlm_path (the Qwen3-VL checkpoint directory)")
        return tiny_tokenizer()

    def encode(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """str or [str] → (ids int32 [B, L], mask bool [B, L]); a prompt longer than L raises."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        tok = self.hf()
        ids = np.full((len(texts), self.max_len), self.pad_id, np.int32)
        for i, text in enumerate(texts):
            row, _ = qwen3vl.prompt_ids(tok, text, self.num_image_tokens)
            if row.shape[1] > self.max_len:
                raise ValueError(
                    f"prompt of {row.shape[1]} tokens ({self.num_image_tokens} visual) exceeds prompt_max_len "
                    f"{self.max_len}: {text!r}"
                )
            ids[i, : row.shape[1]] = row[0]
        return ids, ids != self.pad_id

    def decode(self, ids: np.ndarray) -> list[str]:
        tok = self.hf()
        return [tok.decode([int(t) for t in row if t != self.pad_id]) for row in np.atleast_2d(ids)]


# ---------------------------------------------------------------------------------------------
# The encoder module.
# ---------------------------------------------------------------------------------------------


class Qwen3VLEncoder(nnx.Module):
    """System-2 = frozen Qwen3-VL: (frames, prompt ids, mask) → (``last_layer`` [B, L, D], mask [B, L]).

    Args: preset (``VLM_PRESETS`` name), image_size (H, W) of the frames, dtype (weights and compute;
    "" = the preset's), rngs (random weights; ``psi0.load_psi0`` / ``psi0.with_vlm_weights`` replace
    them). The model is ``self.vlm``, a ``qwen3vl.Qwen3VL`` (frozen: its output stops gradients).
    """

    def __init__(self, preset: str, image_size: tuple[int, int], dtype: str, rngs: nnx.Rngs):
        vp = VLM_PRESETS[preset]
        self.preset = preset
        self.out_dim = vp.hidden
        self.plan = image_plan(*image_size)
        dt = jnp.dtype(dtype or vp.dtype)
        self.vlm = qwen3vl.Qwen3VL(vp.config, dtype=dt, param_dtype=dt, frozen=True, rngs=rngs)

    def __call__(
        self, images: jax.Array, prompt_ids: jax.Array, prompt_mask: jax.Array, *, dropout_key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """u8 [B, H, W, 3], i32 [B, L] (``PromptTokenizer`` ids: ``plan.num_tokens`` image tokens per row),
        bool [B, L] → (float32 [B, L, D] the last layer's states before the final norm, bool [B, L]).
        Traceable (the image grid is static)."""
        del dropout_key
        b = images.shape[0]
        if prompt_ids.shape != prompt_mask.shape or prompt_ids.shape[0] != b:
            raise ValueError(f"prompt_ids {prompt_ids.shape} and prompt_mask {prompt_mask.shape} must be [{b}, L]")
        pixels = device_pixels(images, self.plan)
        out = self.vlm(prompt_ids, prompt_mask.astype(jnp.int32), pixels, (self.plan.grid,) * b)
        return out["last_layer"].astype(jnp.float32), prompt_mask.astype(bool)


# ---------------------------------------------------------------------------------------------
# Weights in Hugging Face's key layout (what a Ψ0 run stores under ``vlm_model.``).
# ---------------------------------------------------------------------------------------------


def check_hf_tensors(preset: str, tensors: dict, where: str) -> dict:
    """{HF key: array} for a preset → the same without a tied ``lm_head.weight``, after checking every key.

    Raises: ValueError naming ``where`` and every missing, unexpected and mis-shaped key.
    """
    want = qwen3vl.param_shapes(VLM_PRESETS[preset].config)
    tensors = dict(tensors)
    if "lm_head.weight" in tensors and "lm_head.weight" not in want:
        tensors.pop("lm_head.weight")  # the tied head, stored by some writers
    missing = sorted(set(want) - set(tensors))
    unexpected = sorted(set(tensors) - set(want))
    bad = sorted(
        f"{k}: file {tuple(tensors[k].shape)}, expected {want[k]}"
        for k in set(want) & set(tensors)
        if tuple(tensors[k].shape) != tuple(want[k])
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if bad:
        problems.append(f"mis-shaped keys ({len(bad)}): {bad}")
    if problems:
        raise ValueError(f"cannot load Qwen3-VL ({preset}) weights from {where}: " + "; ".join(problems))
    return tensors


def encoder_state_with_weights(encoder_state: nnx.State, preset: str, dtype: str, tensors: dict, where: str):
    """A copy of the encoder's ``nnx.State`` holding ``tensors`` ({HF key: array}, checked, cast to
    ``dtype``; "" = the preset's)."""
    tensors = check_hf_tensors(preset, tensors, where)
    dt = jnp.dtype(dtype or VLM_PRESETS[preset].dtype)
    model = qwen3vl.from_hf(VLM_PRESETS[preset].config, tensors, dt, dt, where)
    out = jax.tree.map(lambda x: x, encoder_state)
    out["vlm"] = nnx.state(model)
    return out


def hf_tensors(encoder_state: nnx.State, preset: str) -> dict:
    """The encoder's weights as {HF key: numpy array} (their dtype; no tied lm_head)."""
    leaf = jax.tree.leaves(encoder_state["vlm"])[0]
    dt = leaf.dtype
    graphdef, _ = nnx.split(qwen3vl.abstract_model(VLM_PRESETS[preset].config, dt, dt))
    return qwen3vl.to_hf(nnx.merge(graphdef, encoder_state["vlm"]))
