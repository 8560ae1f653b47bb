"""Ψ0 action-expert weights: released safetensors (PyTorch layout) ⇄ this package's NNX parameters.

PyTorch ``Linear.weight`` is [out, in]; ``nnx.Linear.kernel`` is [in, out], so weights are transposed.
The key layout (``expert_key_map``) follows the released standalone expert:

    time_ins_embed.out_net.{0,2}            → time_fc1, time_fc2
    obs_proj.views_proj                     → views_proj          (context C → D)
    obs_proj._obs_proc.1                    → state_proj          (state A → D; ``.0`` is the dropout)
    action_proj_in.ac_proj.{0,2}            → ac_fc1, ac_fc2
    action_proj_in.dec_pos                  → dec_pos             ([H, D]; a leading 1 is accepted)
    transformer_blocks.{i}.norm1_{act,obs}.linear, .attn.{to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,
      to_out.0,to_add_out}, .ff_{act,obs}.net.{0.proj,2}          → blocks[i].…
    action_proj_out.linear / .adaLN_modulation.1                  → out_proj / out_mod

(The last block has no ``to_add_out`` and no ``ff_obs``.) Loading consumes every key of the file and
reports every missing, unexpected or mis-shaped key in one ``ValueError``. ``blocks_only=True`` loads
only ``transformer_blocks.*`` (e.g. the released 16-step position table does not fit H = 30): the other
keys must still be known names, but their shapes are not checked and their values are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recap_jax.models.action_expert import ActionExpertConfig

BLOCK_PREFIX = "transformer_blocks."


def expert_key_map(cfg: ActionExpertConfig) -> dict[str, tuple[tuple, str]]:
    """Released key → (path in the expert's pure-dict state, kind). kind: "linear_w" (transpose),
    "bias", or "param" (copied as is)."""
    out: dict[str, tuple[tuple, str]] = {}

    def lin(torch_name: str, path: tuple) -> None:
        out[f"{torch_name}.weight"] = ((*path, "kernel"), "linear_w")
        out[f"{torch_name}.bias"] = ((*path, "bias"), "bias")

    lin("time_ins_embed.out_net.0", ("time_fc1",))
    lin("time_ins_embed.out_net.2", ("time_fc2",))
    lin("obs_proj.views_proj", ("views_proj",))
    lin("obs_proj._obs_proc.1", ("state_proj",))
    lin("action_proj_in.ac_proj.0", ("ac_fc1",))
    lin("action_proj_in.ac_proj.2", ("ac_fc2",))
    out["action_proj_in.dec_pos"] = (("dec_pos",), "param")
    for i in range(cfg.depth):
        last = i == cfg.depth - 1
        t, p = f"{BLOCK_PREFIX}{i}", ("blocks", i)
        lin(f"{t}.norm1_act.linear", (*p, "norm1_act"))
        lin(f"{t}.norm1_obs.linear", (*p, "norm1_obs"))
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            lin(f"{t}.attn.{name}", (*p, name))
        lin(f"{t}.attn.to_out.0", (*p, "to_out"))
        lin(f"{t}.ff_act.net.0.proj", (*p, "ff_act", "fc1"))
        lin(f"{t}.ff_act.net.2", (*p, "ff_act", "fc2"))
        if not last:
            lin(f"{t}.attn.to_add_out", (*p, "to_add_out"))
            lin(f"{t}.ff_obs.net.0.proj", (*p, "ff_obs", "fc1"))
            lin(f"{t}.ff_obs.net.2", (*p, "ff_obs", "fc2"))
    lin("action_proj_out.linear", ("out_proj",))
    lin("action_proj_out.adaLN_modulation.1", ("out_mod",))
    return out


def _get(tree: Mapping, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _to_torch_layout(value: np.ndarray, kind: str) -> np.ndarray:
    return np.ascontiguousarray(value.T) if kind == "linear_w" else np.ascontiguousarray(value)


def _from_torch_layout(value: np.ndarray, kind: str, want: tuple[int, ...]) -> np.ndarray | None:
    """Converts one released tensor to the NNX layout; None if its shape does not fit ``want``."""
    if kind == "linear_w":
        value = value.T
    elif kind == "param" and value.ndim == len(want) + 1 and value.shape[0] == 1:
        value = value[0]
    return value if tuple(value.shape) == tuple(want) else None


def read_safetensors(path_or_tensors: str | os.PathLike | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A safetensors file (or an already loaded dict) → {key: numpy array}."""
    if isinstance(path_or_tensors, Mapping):
        return {k: np.asarray(v) for k, v in path_or_tensors.items()}
    from safetensors.numpy import load_file

    return load_file(os.fspath(path_or_tensors))


def load_expert_state(
    tensors: str | os.PathLike | Mapping[str, np.ndarray],
    expert_state: nnx.State,
    cfg: ActionExpertConfig,
    *,
    blocks_only: bool = False,
) -> nnx.State:
    """Loads released weights into (a copy of) the expert's parameter state.

    Args:
      tensors: path of a safetensors file or a {key: array} dict in the released layout.
      expert_state: the expert's ``nnx.State`` (e.g. ``nnx.state(expert)`` or ``params.model["expert"]``);
        it supplies the target shapes and the values of anything not loaded.
      cfg: the expert's config (depth decides which keys exist).
      blocks_only: load only ``transformer_blocks.*``; other known keys are accepted and ignored.

    Returns: a new ``nnx.State`` (float32 parameters).

    Raises:
      ValueError naming every missing, unexpected and mis-shaped key.
    """
    src = read_safetensors(tensors)
    key_map = expert_key_map(cfg)
    pure = nnx.to_pure_dict(expert_state)
    missing, mismatched = [], []
    unexpected = sorted(set(src) - set(key_map))
    for key, (path, kind) in key_map.items():
        is_block = key.startswith(BLOCK_PREFIX)
        if blocks_only and not is_block:
            continue
        if key not in src:
            missing.append(key)
            continue
        want = tuple(_get(pure, path).shape)
        value = _from_torch_layout(np.asarray(src[key]), kind, want)
        if value is None:
            torch_want = want[::-1] if kind == "linear_w" else want
            mismatched.append(f"{key}: file {tuple(src[key].shape)}, expected {torch_want}")
            continue
        _set(pure, path, jnp.asarray(value, jnp.float32))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"mis-shaped keys ({len(mismatched)}): {mismatched}")
    if problems:
        raise ValueError("cannot load Ψ0 expert weights: " + "; ".join(problems))
    out = jax_tree_copy(expert_state)
    nnx.replace_by_pure_dict(out, pure)
    return out


def jax_tree_copy(state: nnx.State) -> nnx.State:
    """A structural copy of an ``nnx.State`` (leaves shared, containers new)."""
    return jax.tree.map(lambda x: x, state)


def export_expert_state(expert_state: nnx.State, cfg: ActionExpertConfig) -> dict[str, np.ndarray]:
    """Expert parameter state → {released key: float32 numpy array} (PyTorch layout)."""
    pure = nnx.to_pure_dict(expert_state)
    return {
        key: _to_torch_layout(np.asarray(_get(pure, path), np.float32), kind)
        for key, (path, kind) in expert_key_map(cfg).items()
    }


def save_expert_safetensors(expert_state: nnx.State, cfg: ActionExpertConfig, path: str | os.PathLike) -> None:
    """Writes ``export_expert_state`` to a safetensors file."""
    from safetensors.numpy import save_file

    save_file(export_expert_state(expert_state, cfg), os.fspath(path))


def load_policy_expert(params, tensors, *, blocks_only: bool = False):
    """``PolicyParams`` with the action expert's weights replaced by released ones (see ``load_expert_state``)."""
    cfg = params.config.expert_config()
    model = jax_tree_copy(params.model)
    model["expert"] = load_expert_state(tensors, params.model["expert"], cfg, blocks_only=blocks_only)
    return params.replace(model=model)


def export_policy_expert(params) -> dict[str, np.ndarray]:
    """The action expert of ``PolicyParams`` in the released key layout."""
    return export_expert_state(params.model["expert"], params.config.expert_config())
