"""Cached System-2 features for training the expert behind a frozen Qwen3-VL.

The frozen VLM's output depends on the prompt (the advantage text sits after the image and the expert
reads all tokens), so the cache holds ``last_layer`` per (stored image, prompt variant) for the three
RECAP variants ``VARIANTS`` = high ("advantage: high. …", label 1), low (label 0) and bare (the
instruction alone, label −1: BC, a dropped indicator, or the unconditional branch of CFG).

Layout: two store annotations (``EpisodeStore.write_annotation``, one entry per imaged step):
``<name>`` [Q, 3, L, C] — float32 for a float32 VLM, or the **bit pattern of bfloat16 as uint16** for a
bf16 VLM (lossless: the VLM computes in bf16) — and ``<name>_mask`` bool [Q, 3, L]; plus a sidecar
``annotations/<name>.json`` with the fingerprint of what made them (encoder preset, image size, prompt
length, the VLM weights' checksum, each episode's instruction). ``WindowLoader`` with
``LoaderConfig.feature_annotation=<name>`` reads them and emits ``context`` / ``context_mask`` (the
variant of the window's label) and, with ``emit_uncond``, ``uncond_context`` / ``uncond_context_mask``
(bare); ``policy.policy_loss`` trains from those without running the VLM.

Image augmentation changes the VLM's input, so a run that augments (colour jitter; this package has no
such augmentation yet) must train on the fly (``feature_annotation=None``) — the cache holds features
of the stored, unaugmented images only.
"""

from __future__ import annotations

import functools
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from recap_jax.advantage import format_prompt
from recap_jax.data.store import ANNOTATIONS_DIR, EpisodeStore, atomic_write_bytes

VARIANTS = ("high", "low", "bare")
VARIANT_LABELS = (1, 0, -1)  # label → variant index: 1 → 0, 0 → 1, -1 → 2
DEFAULT_NAME = "vlm_features"


def variant_index(labels: np.ndarray) -> np.ndarray:
    """int8 labels {1, 0, −1} → variant indices {0, 1, 2} (int64, same shape)."""
    labels = np.asarray(labels)
    return np.where(labels == 1, 0, np.where(labels == 0, 1, 2))


def fingerprint(params) -> dict:
    """What the cached features depend on besides the images and prompts: the System-2 preset, image size,
    prompt length, tokenizer and a SHA-256 of the VLM's weights (bytes of every tensor, key order)."""
    cfg = params.config
    if not cfg.is_vlm:
        raise ValueError(f"feature caching needs a frozen Qwen3-VL encoder, got {cfg.encoder!r}")
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params.model["encoder"])[0]
    for path, x in leaves:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.asarray(jax.device_get(x)).tobytes())
    return {
        "encoder": cfg.encoder,
        "vlm_dtype": str(leaves[0][1].dtype),
        "image_size": list(cfg.image_size),
        "prompt_max_len": cfg.prompt_max_len,
        "vlm_path": cfg.vlm_path,
        "weights_sha256": h.hexdigest(),
    }


def _to_storage(x: jax.Array) -> np.ndarray:
    x = np.asarray(jax.device_get(x))
    if x.dtype == jnp.bfloat16:
        return x.view(np.uint16)
    return x.astype(np.float32)


def from_storage(x: np.ndarray) -> np.ndarray:
    """A stored feature array → float32 (uint16 = bfloat16 bits)."""
    x = np.asarray(x)
    if x.dtype == np.uint16:
        return x.view(jnp.bfloat16).astype(np.float32)
    return x.astype(np.float32)


@functools.cache
def _encode():
    from recap_jax import policy as P

    return jax.jit(P.encode_observation)


def encode_variants(params, images: np.ndarray, instruction: str, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """System-2 features of frames under the three prompt variants.

    Args: params (a Qwen3-VL ``PolicyParams``), images uint8 [Q, H, W, 3], the bare instruction,
    batch_size (frames per VLM call; the last call is padded to it, so one compiled shape).

    Returns: (features [Q, 3, L, C] in storage form (float32, or uint16 bf16 bits), mask bool [Q, 3, L]).
    """
    from recap_jax import policy as P

    cfg = params.config
    texts = [format_prompt(instruction, lab if lab >= 0 else None) for lab in VARIANT_LABELS]
    ids, mask = P.tokenize(cfg, texts)  # [3, L]
    dt = jax.tree.leaves(params.model["encoder"])[0].dtype
    q = images.shape[0]
    feats, masks = [], []
    for start in range(0, q, batch_size):
        img = np.asarray(images[start : start + batch_size])
        n = img.shape[0]
        if q > batch_size and n < batch_size:
            img = np.concatenate([img, np.repeat(img[-1:], batch_size - n, axis=0)])
        k = img.shape[0]
        rep = np.repeat(img, 3, axis=0)  # frame-major: [f0 high, f0 low, f0 bare, f1 high, ...]
        tok = np.tile(ids, (k, 1))
        msk = np.tile(mask, (k, 1))
        ctx, cm = _encode()(params, jnp.asarray(rep), jnp.asarray(tok), jnp.asarray(msk))
        ctx = ctx.astype(dt)  # the VLM's own precision (float32 for a float32 VLM)
        feats.append(_to_storage(ctx).reshape(k, 3, *ctx.shape[1:])[:n])
        masks.append(np.asarray(cm).reshape(k, 3, -1)[:n])
    return np.concatenate(feats), np.concatenate(masks)


def write_feature_cache(
    store: EpisodeStore,
    params,
    *,
    name: str = DEFAULT_NAME,
    batch_size: int = 8,
    episode_ids=None,
    flush_every: int = 16,
) -> dict:
    """Computes and stores the features of every imaged step of the store's episodes (or ``episode_ids``),
    once: episodes already cached under the same fingerprint and instruction are skipped (resumable). A
    cache with another fingerprint is replaced. Written atomically every ``flush_every`` episodes (each
    write rewrites the annotation file, so fewer, larger flushes cost less I/O). Returns the sidecar dict.
    """
    fp = fingerprint(params)
    side_path = store.root / ANNOTATIONS_DIR / f"{name}.json"
    side = json.loads(side_path.read_text()) if side_path.exists() else None
    replace = side is None or side.get("fingerprint") != fp
    if replace:
        side = {"fingerprint": fp, "variants": list(VARIANTS), "instructions": {}}
    cached = set() if replace else _cached_ids(store, name)
    ids = store.episode_ids() if episode_ids is None else [int(e) for e in episode_ids]
    todo = [e for e in ids if not (e in cached and side["instructions"].get(str(e)) is not None)]
    side_path.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), max(1, flush_every)):
        feats, masks = {}, {}
        for ep in store.load(todo[start : start + flush_every]):
            if ep.image_steps.size == 0:
                continue
            feats[ep.episode_id], masks[ep.episode_id] = encode_variants(params, ep.images, ep.prompt, batch_size)
            side["instructions"][str(ep.episode_id)] = ep.prompt
        if feats:
            store.write_annotation(name, feats, replace=replace)
            store.write_annotation(f"{name}_mask", masks, replace=replace)
            replace = False
            atomic_write_bytes(side_path, json.dumps(side, indent=1).encode())
    atomic_write_bytes(side_path, json.dumps(side, indent=1).encode())
    return side


def _cached_ids(store: EpisodeStore, name: str) -> set[int]:
    if name not in store.annotation_names():
        return set()
    return set(store.read_annotation(name))


def check_feature_cache(store: EpisodeStore, params, name: str = DEFAULT_NAME) -> None:
    """Raises ValueError when the store's cache ``name`` was made by another System-2 / image size /
    prompt length (``fingerprint``) or lacks an episode."""
    side_path = store.root / ANNOTATIONS_DIR / f"{name}.json"
    if not side_path.exists():
        raise ValueError(f"{store.root}: no feature cache {name!r} ({side_path} missing); run write_feature_cache")
    side = json.loads(side_path.read_text())
    fp = fingerprint(params)
    if side.get("fingerprint") != fp:
        diff = {k: (side.get("fingerprint", {}).get(k), v) for k, v in fp.items() if side["fingerprint"].get(k) != v}
        raise ValueError(f"{side_path}: made with other settings (cached, now): {diff}")
    missing = [e for e in store.episode_ids() if str(e) not in side["instructions"] and store.num_images(e)]
    if missing:
        raise ValueError(f"{side_path}: episodes {missing[:10]} are not cached")
