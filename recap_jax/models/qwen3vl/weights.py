"""Hugging Face weights ↔ the NNX module tree: `load_pretrained`, `from_hf`, `to_hf`, `save_pretrained`,
`abstract_params` (the name mapping is in `names.py`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import param_shapes, read_config
from .model import Qwen3VL
from .names import flat, hf_name, hf_shape, to_hf_layout


def abstract_model(config: dict, dtype=jnp.float32, param_dtype=None) -> Qwen3VL:
    """The module with jax.ShapeDtypeStruct leaves (nnx.eval_shape: nothing allocated)."""
    return nnx.eval_shape(lambda: Qwen3VL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def to_hf(model: Qwen3VL) -> dict:
    """Hugging Face key → numpy array (Hugging Face layout, parameter dtype); a tied lm_head is omitted.

    Works on an abstract model too (then the values are jax.ShapeDtypeStruct of the Hugging Face shapes).
    """
    config = model.config
    out = {}
    for path, value in flat(nnx.state(model, nnx.Param)).items():
        name, stacked = hf_name(path)
        if isinstance(value, jax.ShapeDtypeStruct):
            shape = hf_shape(path, value.shape[1:] if stacked else value.shape, config)
            for i in range(value.shape[0]) if stacked else [None]:
                out[name.format(i)] = jax.ShapeDtypeStruct(shape, value.dtype)
            continue
        value = np.asarray(value)
        if stacked:
            for i in range(value.shape[0]):
                out[name.format(i)] = to_hf_layout(path, value[i], config)
        else:
            out[name] = to_hf_layout(path, value, config)
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
    return Qwen3VL(config, tensors, dtype=dtype, param_dtype=param_dtype)


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
