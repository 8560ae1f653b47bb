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

(The last block has no ``to_add_out`` and no ``ff_obs``.) The file also holds Ψ0's two non-trainable
tensors, ``time_ins_embed.w`` [128] and ``obs_proj.enc_pos.pe`` [max_len, 1, D] (``BUFFER_KEYS``): they
are checked against what the model computes (``action_expert.time_frequencies`` within 1e-6 relative,
``psi0_positions`` within 1e-3: the stored float32 table differs from the formula by up to ~2e-4 at
high positions, more in bf16) and then dropped; ``export_expert_state`` writes them back so the file
has exactly Ψ0's layout (``load_state_dict(strict=True)``). bf16 files are upcast to float32. A Ψ0 run
directory (``run_dir/checkpoints/ckpt_N/model.safetensors``, or that file) has the expert under
``action_header.``: the prefix is stripped and the ``vlm_model.*`` keys are left for System-2 (their
names are returned by ``read_psi0_checkpoint``). Loading consumes every key of the file and
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
TIME_W_KEY = "time_ins_embed.w"
OBS_PE_KEY = "obs_proj.enc_pos.pe"
BUFFER_KEYS = (TIME_W_KEY, OBS_PE_KEY)
OBS_PE_LEN = 5000  # Ψ0's PositionalEncoding max_len
PE_TOL = 1e-3
HEADER_PREFIX = "action_header."
VLM_PREFIX = "vlm_model."


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


def _resolve_path(path: str | os.PathLike) -> str:
    """A file, or a Ψ0 run directory → its latest ``checkpoints/ckpt_N/model.safetensors``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        ck = os.path.join(path, "checkpoints")
        steps = []
        if os.path.isdir(ck):
            for name in os.listdir(ck):
                f = os.path.join(ck, name, "model.safetensors")
                if name.startswith("ckpt_") and name[5:].isdigit() and os.path.isfile(f):
                    steps.append((int(name[5:]), f))
        if not steps:
            raise ValueError(f"{path}: a directory without checkpoints/ckpt_N/model.safetensors (not a Ψ0 run dir)")
        return max(steps)[1]
    return path


def read_safetensors(path_or_tensors: str | os.PathLike | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A safetensors file (or an already loaded dict) → {key: numpy array} (bf16 kept; the loader upcasts).

    Raises: ValueError naming the file if it cannot be parsed (e.g. truncated).
    """
    if isinstance(path_or_tensors, Mapping):
        return {k: np.asarray(v) for k, v in path_or_tensors.items()}
    from safetensors import safe_open

    path = _resolve_path(path_or_tensors)
    out = {}
    try:
        with safe_open(path, framework="flax") as f:
            for k in f.keys():
                out[k] = np.asarray(f.get_tensor(k))  # bfloat16 stays ml_dtypes bfloat16
    except Exception as e:  # safetensors raises its own error types on a bad header / short file
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    return out


def read_psi0_checkpoint(
    path_or_tensors: str | os.PathLike | Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Ψ0 weights → (expert tensors with ``action_header.`` stripped, sorted ``vlm_model.*`` key names).

    A standalone expert file has no prefixes and gives an empty VLM list.
    """
    src = read_safetensors(path_or_tensors)
    if not any(k.startswith(HEADER_PREFIX) for k in src):
        return src, []
    expert = {k[len(HEADER_PREFIX) :]: v for k, v in src.items() if k.startswith(HEADER_PREFIX)}
    vlm = sorted(k for k in src if k.startswith(VLM_PREFIX))
    other = {k: v for k, v in src.items() if not k.startswith((HEADER_PREFIX, VLM_PREFIX))}
    expert.update(other)  # reported as unexpected by the loader
    return expert, vlm


def _check_buffers(src: dict, cfg: ActionExpertConfig, name: str) -> list[str]:
    """Checks and removes Ψ0's non-trainable tensors; returns problem strings."""
    from recap_jax.models.action_expert import psi0_positions, time_frequencies

    problems = []
    if TIME_W_KEY in src:
        raw = src.pop(TIME_W_KEY)
        tol = 1e-5 if raw.dtype == np.float32 else 1e-2  # relative; bf16 keeps 8 bits
        w, ref = np.asarray(raw, np.float32), time_frequencies()
        if w.shape != ref.shape:
            problems.append(f"{TIME_W_KEY}: file {w.shape}, expected {ref.shape}")
        elif np.max(np.abs(w - ref) / ref) > tol:
            problems.append(f"{TIME_W_KEY}: differs from Ψ0's frequencies by {np.max(np.abs(w - ref)):.3g}")
    if OBS_PE_KEY in src:
        raw = src.pop(OBS_PE_KEY)
        # float32: within 1e-3; bf16 rounds values near 1 by up to 2^-9, so allow one bf16 ulp there.
        tol = PE_TOL if raw.dtype == np.float32 else 2.0**-8
        pe = np.asarray(raw, np.float32)
        if pe.ndim == 3 and pe.shape[1] == 1:
            pe = pe[:, 0]
        if pe.ndim != 2 or pe.shape[1] != cfg.width:
            problems.append(f"{OBS_PE_KEY}: file shape {pe.shape}, expected [N, 1, {cfg.width}]")
        else:
            err = float(np.max(np.abs(pe - np.asarray(psi0_positions(pe.shape[0], cfg.width)))))
            if err > tol:
                problems.append(f"{OBS_PE_KEY}: differs from Ψ0's interleaved sin/cos table by {err:.3g} > {tol:.3g}")
    return problems


def load_expert_state(
    tensors: str | os.PathLike | Mapping[str, np.ndarray],
    expert_state: nnx.State,
    cfg: ActionExpertConfig,
    *,
    blocks_only: bool = False,
) -> nnx.State:
    """Loads released weights into (a copy of) the expert's parameter state.

    Args:
      tensors: path of a safetensors file (float32 or bf16; the standalone expert or a run checkpoint
        with ``action_header.*`` keys), a Ψ0 run directory, or a {key: array} dict in the released layout.
        ``time_ins_embed.w`` / ``obs_proj.enc_pos.pe`` are optional and checked if present.
      expert_state: the expert's ``nnx.State`` (e.g. ``nnx.state(expert)`` or ``params.model["expert"]``);
        it supplies the target shapes and the values of anything not loaded.
      cfg: the expert's config (depth decides which keys exist).
      blocks_only: load only ``transformer_blocks.*``; other known keys are accepted and ignored.

    Returns: a new ``nnx.State`` (float32 parameters).

    Raises:
      ValueError naming the file and every missing, unexpected and mis-shaped key (and a non-trainable
      tensor that disagrees with the model's formula); an unreadable/truncated file also names the file.
    """
    name = "<dict>" if isinstance(tensors, Mapping) else _resolve_path(tensors)
    src, _vlm = read_psi0_checkpoint(tensors)
    src = dict(src)
    buffer_problems = _check_buffers(src, cfg, name)
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
        value = _from_torch_layout(np.asarray(src[key], np.float32), kind, want)
        if value is None:
            torch_want = want[::-1] if kind == "linear_w" else want
            mismatched.append(f"{key}: file {tuple(src[key].shape)}, expected {torch_want}")
            continue
        _set(pure, path, jnp.asarray(value, jnp.float32))
    problems = list(buffer_problems)
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"mis-shaped keys ({len(mismatched)}): {mismatched}")
    if problems:
        raise ValueError(f"cannot load Ψ0 expert weights from {name}: " + "; ".join(problems))
    out = jax_tree_copy(expert_state)
    nnx.replace_by_pure_dict(out, pure)
    return out


def jax_tree_copy(state: nnx.State) -> nnx.State:
    """A structural copy of an ``nnx.State`` (leaves shared, containers new)."""
    return jax.tree.map(lambda x: x, state)


def export_expert_state(expert_state: nnx.State, cfg: ActionExpertConfig) -> dict[str, np.ndarray]:
    """Expert parameter state → {released key: float32 numpy array}, Ψ0's full standalone layout
    (PyTorch [out, in] weights, ``dec_pos`` [H, D], plus ``time_ins_embed.w`` [128] and
    ``obs_proj.enc_pos.pe`` [5000, 1, D]), as Ψ0's ``load_state_dict(strict=True)`` expects."""
    from recap_jax.models.action_expert import psi0_positions, time_frequencies

    pure = nnx.to_pure_dict(expert_state)
    out = {
        key: _to_torch_layout(np.asarray(_get(pure, path), np.float32), kind)
        for key, (path, kind) in expert_key_map(cfg).items()
    }
    out[TIME_W_KEY] = time_frequencies()
    out[OBS_PE_KEY] = np.asarray(psi0_positions(OBS_PE_LEN, cfg.width))[:, None, :]
    return out


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
