"""Module path ↔ Hugging Face key, per parameter (used by `Qwen3VL(config, params)`, `from_hf`, `to_hf`).

visual.…            ↔ model.visual.…            language_model.… ↔ model.language_model.…
blocks / layers / deepstack_merger_list (stacked axis, index i) ↔ ….{i}.…
Linear kernel [in, out] ↔ weight [out, in] (transposed); the patch-embedding kernel
    [C·Tp·p·p, Dv] ↔ Conv3d weight [Dv, C, Tp, p, p]
LayerNorm / RMSNorm scale ↔ weight;  Embed embedding ↔ weight;  bias ↔ bias
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

_TOP = {"visual": "model.visual", "language_model": "model.language_model", "lm_head": "lm_head"}
_STACKED = ("blocks", "layers", "deepstack_merger_list")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
PATCH_KERNEL = ("visual", "patch_embed", "proj", "kernel")


def hf_name(path: tuple) -> tuple[str, bool]:
    """Module path → (Hugging Face key, with `{}` for the layer index when stacked; stacked?)."""
    parts, stacked = [_TOP[path[0]]], False
    for p in path[1:-1]:
        parts.append(str(p))
        if p in _STACKED:
            parts.append("{}")
            stacked = True
    parts.append(_LEAF[path[-1]])
    return ".".join(parts), stacked


def hf_shape(path: tuple, shape: tuple, config: dict) -> tuple:
    """One layer's module shape → its Hugging Face shape."""
    if path == PATCH_KERNEL:
        vc = config["vision_config"]
        p, tp = vc["patch_size"], vc["temporal_patch_size"]
        return (shape[1], vc.get("in_channels", 3), tp, p, p)
    return tuple(shape[::-1]) if path[-1] == "kernel" else tuple(shape)


def to_ours(path: tuple, w):
    """One layer's Hugging Face tensor (numpy or jax) → its module layout (a view where possible)."""
    return w.reshape(w.shape[0], -1).T if path[-1] == "kernel" else w


def to_hf_layout(path: tuple, a: np.ndarray, config: dict) -> np.ndarray:
    """One layer's module array → its Hugging Face layout (numpy, contiguous)."""
    a = np.asarray(a)
    if path[-1] == "kernel":
        return np.ascontiguousarray(a.T).reshape(hf_shape(path, a.shape, config))
    return a


def flat(state) -> dict:
    """nnx.State → {path tuple: leaf value}."""
    return traverse_util.flatten_dict(nnx.to_pure_dict(state))


def values_from_hf(specs: dict, tensors: dict, param_dtype) -> dict:
    """{path: ShapeDtypeStruct} + {HF key: array} → {path: jax array in param_dtype}.

    numpy tensors are mapped and stacked on the host, jax arrays (possibly traced) with jnp.
    """
    wanted = {}
    for path, spec in specs.items():
        name, stacked = hf_name(path)
        wanted[path] = (stacked, [name.format(i) for i in range(spec.shape[0])] if stacked else [name])
    missing = sorted(k for _, keys in wanted.values() for k in keys if k not in tensors)
    if missing:
        raise ValueError(f"Qwen3-VL params: missing keys {missing}")
    out = {}
    for path, spec in specs.items():
        stacked, keys = wanted[path]
        parts = [to_ours(path, tensors[k]) for k in keys]
        if any(isinstance(p, jax.Array) for p in parts):
            value = jnp.stack(parts) if stacked else parts[0]
            value = jnp.asarray(value, param_dtype)
        else:
            value = np.stack([np.asarray(p) for p in parts]) if stacked else np.asarray(parts[0])
            value = jnp.asarray(value.astype(param_dtype, copy=False))
        if value.shape != spec.shape:  # the mapping and param_shapes disagree: a bug here, not in the input
            raise AssertionError(f"{'/'.join(map(str, path))}: mapped {value.shape} != module {spec.shape}")
        out[path] = value
    return out
