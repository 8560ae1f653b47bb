"""Hugging Face weights ↔ the NNX module tree: `load_pretrained`, `to_hf`, `save_pretrained`, `abstract_params`.

Name mapping (module path → Hugging Face key), applied per stacked layer index i:

    visual.…            ↔ model.visual.…            language_model.… ↔ model.language_model.…
    blocks / layers / deepstack_merger_list (stacked axis, index i) ↔ ….{i}.…
    Linear kernel [in, out] ↔ weight [out, in] (transposed); the patch-embedding kernel
        [C·Tp·p·p, Dv] ↔ Conv3d weight [Dv, C, Tp, p, p]
    LayerNorm / RMSNorm scale ↔ weight;  Embed embedding ↔ weight;  bias ↔ bias
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from .config import param_shapes, read_config
from .model import Qwen3VL

_TOP = {"visual": "model.visual", "language_model": "model.language_model", "lm_head": "lm_head"}
_STACKED = ("blocks", "layers", "deepstack_merger_list")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_PATCH = ("visual", "patch_embed", "proj", "kernel")


def _hf_name(path: tuple) -> tuple[str, bool]:
    """Module path → (Hugging Face key template with `{}` for the layer index, stacked?)."""
    parts, stacked = [_TOP[path[0]]], False
    for p in path[1:-1]:
        parts.append(str(p))
        if p in _STACKED:
            parts.append("{}")
            stacked = True
    parts.append(_LEAF[path[-1]])
    return ".".join(parts), stacked


def _to_ours(path: tuple, w: np.ndarray) -> np.ndarray:
    """One layer's Hugging Face tensor → its module layout (a view where possible)."""
    if path[-1] == "kernel":
        return w.reshape(w.shape[0], -1).T
    return w


def _to_hf(path: tuple, a: np.ndarray, config: dict) -> np.ndarray:
    if path == _PATCH:
        vc = config["vision_config"]
        p, tp = vc["patch_size"], vc["temporal_patch_size"]
        return np.ascontiguousarray(a.T).reshape(a.shape[1], vc.get("in_channels", 3), tp, p, p)
    return np.ascontiguousarray(a.T) if path[-1] == "kernel" else np.asarray(a)


def _hf_shape(path: tuple, shape: tuple, config: dict) -> tuple:
    if path == _PATCH:
        vc = config["vision_config"]
        p, tp = vc["patch_size"], vc["temporal_patch_size"]
        return (shape[1], vc.get("in_channels", 3), tp, p, p)
    return tuple(shape[::-1]) if path[-1] == "kernel" else tuple(shape)


def _flat(state) -> dict:
    return traverse_util.flatten_dict(nnx.to_pure_dict(state))


def abstract_model(config: dict, dtype=jnp.float32, param_dtype=None) -> Qwen3VL:
    """The module with jax.ShapeDtypeStruct leaves (nnx.eval_shape: nothing allocated)."""
    return nnx.eval_shape(lambda: Qwen3VL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def to_hf(model: Qwen3VL) -> dict:
    """Hugging Face key → numpy array (Hugging Face layout, parameter dtype); a tied lm_head is omitted.

    Works on an abstract model too (then the values are jax.ShapeDtypeStruct of the Hugging Face shapes).
    """
    config = model.config
    out = {}
    for path, value in _flat(nnx.state(model, nnx.Param)).items():
        name, stacked = _hf_name(path)
        if isinstance(value, jax.ShapeDtypeStruct):
            shape = _hf_shape(path, value.shape[1:] if stacked else value.shape, config)
            for i in range(value.shape[0]) if stacked else [None]:
                out[name.format(i)] = jax.ShapeDtypeStruct(shape, value.dtype)
            continue
        value = np.asarray(value)
        if stacked:
            for i in range(value.shape[0]):
                out[name.format(i)] = _to_hf(path, value[i], config)
        else:
            out[name] = _to_hf(path, value, config)
    return out


def abstract_params(config: dict, dtype=jnp.float32) -> dict:
    """Hugging Face key → jax.ShapeDtypeStruct for `config`, through the module tree (nothing allocated)."""
    return to_hf(abstract_model(config, dtype))


def _check_keys(raw: dict, want: dict, where: str) -> None:
    missing = sorted(set(want) - set(raw))
    unexpected = sorted(set(raw) - set(want))
    bad = sorted(
        f"{k} {tuple(raw[k].shape)} != {want[k]}" for k in set(want) & set(raw) if tuple(raw[k].shape) != want[k]
    )
    if missing or unexpected or bad:
        raise ValueError(f"{where}: missing keys {missing}; unexpected keys {unexpected}; mis-shaped {bad}")


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, param_dtype=None, where: str = "weights") -> Qwen3VL:
    """Build the module from Hugging Face tensors (key → array, any float dtype incl. bfloat16).

    Raises ValueError naming `where` and each missing / unexpected / mis-shaped key.
    """
    param_dtype = jnp.dtype(param_dtype or dtype)
    tensors = dict(tensors)
    if "lm_head.weight" in tensors and "lm_head.weight" not in param_shapes(config):
        tensors.pop("lm_head.weight")  # a tied head some writers store anyway
    _check_keys(tensors, param_shapes(config), where)
    abstract = abstract_model(config, dtype, param_dtype)
    graphdef, state = nnx.split(abstract)
    values = {}
    for path, spec in _flat(state).items():
        name, stacked = _hf_name(path)
        if stacked:
            host = np.stack([_to_ours(path, np.asarray(tensors[name.format(i)])) for i in range(spec.shape[0])])
        else:
            host = _to_ours(path, np.asarray(tensors[name]))
        if host.shape != spec.shape:  # the mapping and param_shapes disagree: a bug here, not in the file
            raise AssertionError(f"{'/'.join(map(str, path))}: mapped {host.shape} != module {spec.shape}")
        values[path] = jnp.asarray(host.astype(param_dtype, copy=False))
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
    return nnx.merge(graphdef, state)


def load_pretrained(path, dtype: str = "float32", param_dtype: str | None = None):
    """Hugging Face model directory → (Qwen3VL, config dict).

    config.json in either style (`read_config`); model.safetensors or every shard that
    model.safetensors.index.json names; float32 or bfloat16 tensors. The embedding's row count comes
    from the file (Ψ0 resized the vocabulary); a tied lm_head is not stored. Parameters are stored in
    `param_dtype` (default `dtype`) and computed in `dtype` ("float32" / "bfloat16"). Raises ValueError
    naming the file and each missing, unexpected or mis-shaped key.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    cfg = read_config(path)
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
    model = from_hf(cfg, raw, jnp.dtype(dtype), jnp.dtype(param_dtype or dtype), where)
    return model, cfg


def save_pretrained(model: Qwen3VL, path, dtype: str | None = None) -> None:
    """Write config.json + model.safetensors (Hugging Face names and layouts; `dtype` casts, e.g.
    "bfloat16"). Each file is written to a temporary name and renamed into place."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = to_hf(model)
    if dtype is not None:
        tensors = {k: v.astype(jnp.dtype(dtype)) for k, v in tensors.items()}
    for name, write in (
        ("model.safetensors", lambda f: save_file(tensors, f)),
        ("config.json", lambda f: Path(f).write_text(json.dumps(model.config, indent=2))),
    ):
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
