"""The whole Ψ0 (Qwen3-VL System-2 + the System-1 expert) from and to a Ψ0 run directory.

A Ψ0 training run directory, as read here:

* ``checkpoints/ckpt_N/model.safetensors``: the expert under ``action_header.*`` (Ψ0's key names, see
  ``recap_jax.models.convert``) and the whole Qwen3-VL under ``vlm_model.*`` (Hugging Face's
  ``Qwen3VLForConditionalGeneration`` keys: ``model.visual.*``, ``model.language_model.*``, optionally
  the tied ``lm_head.weight``), bf16 in Ψ0's runs;
* ``run_config.json``: Ψ0's launch config (``LaunchConfig.model_dump_json``, written by Ψ0's
  ``scripts/train.py``). Its normalisation sits in ``data.transform.field`` (Ψ0's
  ``ActionStateTransform``): ``action_min``/``action_max`` [36] and, with ``normalize_state`` (SIMPLE
  fine-tuning sets it), ``state_min``/``state_max`` [32], already chosen by ``action_norm_type``
  ("bounds" = min/max, "bounds_q99" = q01/q99). A run without state normalisation is refused (our policy
  always normalises states). Failing that path, the first nested object holding ``"action"`` and
  ``"states"`` groups with ``"min"``/``"max"`` (``stats_psi0.json``'s layout) is used. The VLM config comes
  from the first nested object holding ``"text_config"`` and ``"vision_config"`` when the run stored one
  (Ψ0 itself builds it from the hub's Qwen3-VL-2B-Instruct, so usually it does not), else ``config.json``
  beside it, or the ``vlm_config`` argument (a preset name, a dict, or a config.json / model directory).

``export_psi0`` writes Ψ0's ``data.transform.field`` block (bounds, states normalised) plus
``{"vlm_config": …, "recap_jax": {"policy_config": …}}``, which ``load_psi0`` reads back.

The VLM config must match one of ``vlm_encoder.VLM_PRESETS`` (``qwen3vl-2b``, ``qwen3vl-tiny``): that
preset becomes ``PolicyConfig.encoder``. Every problem (no checkpoint, no stats, a config that matches
no preset, a missing / unexpected / mis-shaped key of either system) raises ``ValueError`` naming the
file and the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recap_jax import policy as P
from recap_jax.models import action_expert as ae
from recap_jax.models import convert
from recap_jax.models import vlm_encoder as vlm

RUN_CONFIG = "run_config.json"
HEADER_PREFIX = "action_header."
VLM_PREFIX = "vlm_model."
PSI0_IMAGE_SIZE = (180, 320)  # the frame Ψ0's VLM path starts from (a 360×640 frame is also accepted)
PSI0_PROMPT_LEN = 160  # 77 visual tokens + the template + the instruction with its advantage text


def checkpoint_file(run_dir: str | os.PathLike, step: int | None = None) -> Path:
    """``run_dir/checkpoints/ckpt_{step}/model.safetensors`` (``step=None``: the highest N)."""
    run_dir = Path(run_dir)
    ck = run_dir / "checkpoints"
    steps = sorted(
        int(p.name[5:])
        for p in (ck.iterdir() if ck.is_dir() else [])
        if p.name.startswith("ckpt_") and p.name[5:].isdigit() and (p / "model.safetensors").is_file()
    )
    if not steps:
        raise ValueError(f"{run_dir}: no checkpoints/ckpt_N/model.safetensors (not a Ψ0 run directory)")
    if step is None:
        step = steps[-1]
    path = ck / f"ckpt_{step}" / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no checkpoint at step {step} (have {steps})")
    return path


def _find(obj, pred):
    """The first nested dict (depth-first, in file order) for which ``pred`` holds, else None."""
    if isinstance(obj, dict):
        if pred(obj):
            return obj
        for v in obj.values():
            hit = _find(v, pred)
            if hit is not None:
                return hit
    elif isinstance(obj, list):
        for v in obj:
            hit = _find(v, pred)
            if hit is not None:
                return hit
    return None


def _is_stats(d: dict) -> bool:
    return all(isinstance(d.get(g), dict) and "min" in d[g] and "max" in d[g] for g in ("action", "states"))


def _is_vlm_config(d: dict) -> bool:
    return isinstance(d.get("text_config"), dict) and isinstance(d.get("vision_config"), dict)


def read_run_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {RUN_CONFIG} (Ψ0's run config with the normalisation stats)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _bounds(path: Path, **arrays) -> P.NormStats:
    """NormStats from min/max lists, each checked (present, 1-D of the expected width, finite, min ≤ max)."""
    out = {}
    for name, (value, width) in arrays.items():
        if value is None:
            raise ValueError(f"{path}: normalisation field {name} is missing")
        a = np.asarray(value, np.float32)
        if a.shape != (width,) or not np.isfinite(a).all():
            raise ValueError(f"{path}: normalisation field {name} must be {width} finite numbers, got shape {a.shape}")
        out[name] = a
    for lo, hi in (("state_min", "state_max"), ("action_min", "action_max")):
        if (out[lo] > out[hi]).any():
            raise ValueError(f"{path}: {lo} > {hi} at dims {np.flatnonzero(out[lo] > out[hi]).tolist()}")
    return P.NormStats(*(jnp.asarray(out[k]) for k in ("state_min", "state_max", "action_min", "action_max")))


def run_norm_stats(run_dir: str | os.PathLike, run_config: dict | None = None) -> P.NormStats:
    """The run's ``NormStats``: Ψ0's ``data.transform.field`` bounds, else a ``stats_psi0.json``-style
    object inside ``run_config.json`` (see the module docstring)."""
    cfg = read_run_config(run_dir) if run_config is None else run_config
    path = Path(run_dir) / RUN_CONFIG
    field = ((cfg.get("data") or {}).get("transform") or {}).get("field")
    if isinstance(field, dict) and "action_min" in field:
        if not field.get("normalize_state", False):
            raise ValueError(
                f"{path}: data.transform.field.normalize_state is false (a run that feeds raw states); "
                "recap_jax policies always normalise states, so this run cannot be reproduced"
            )
        return _bounds(
            path,
            state_min=(field.get("state_min"), 32),
            state_max=(field.get("state_max"), 32),
            action_min=(field.get("action_min"), 36),
            action_max=(field.get("action_max"), 36),
        )
    stats = _find(cfg, _is_stats)
    if stats is None:
        raise ValueError(
            f"{path}: no normalisation stats (Ψ0's data.transform.field action_min/action_max/state_min/"
            "state_max, or an object with 'action' and 'states' min/max)"
        )
    return _bounds(
        path,
        state_min=(stats["states"]["min"], 32),
        state_max=(stats["states"]["max"], 32),
        action_min=(stats["action"]["min"], 36),
        action_max=(stats["action"]["max"], 36),
    )


def _load_vlm_config(run_dir: Path, run_config: dict, vlm_config) -> tuple[dict, str]:
    """(config dict, where it came from)."""
    if isinstance(vlm_config, str) and vlm.is_vlm(vlm_config):
        return vlm.vlm_config(vlm_config), f"preset {vlm_config}"
    if isinstance(vlm_config, dict):
        return vlm_config, "the vlm_config argument"
    if vlm_config is not None:
        p = Path(vlm_config)
        p = p / "config.json" if p.is_dir() else p
        if not p.is_file():
            raise ValueError(f"vlm_config {vlm_config}: no such config.json")
        return json.loads(p.read_text()), str(p)
    hit = _find(run_config, _is_vlm_config)
    if hit is not None:
        return hit, str(run_dir / RUN_CONFIG)
    for p in (run_dir / "config.json", run_dir / "vlm" / "config.json"):
        if p.is_file():
            cfg = json.loads(p.read_text())
            if _is_vlm_config(cfg):
                return cfg, str(p)
    raise ValueError(
        f"{run_dir}: no Qwen3-VL config (text_config + vision_config) in {RUN_CONFIG} or config.json; "
        f"pass vlm_config= (the backbone's config.json, its directory, or one of {sorted(vlm.VLM_PRESETS)})"
    )


def match_vlm_preset(config: dict, where: str) -> str:
    """The ``VLM_PRESETS`` name a Qwen3-VL config equals; ValueError listing the differences otherwise."""
    diffs = {name: vlm.config_mismatches(name, config) for name in vlm.VLM_PRESETS}
    for name, d in diffs.items():
        if not d:
            return name
    detail = "; ".join(f"{n}: {d[:4]}{' …' if len(d) > 4 else ''}" for n, d in diffs.items())
    raise ValueError(f"{where}: the Qwen3-VL config matches no preset ({detail})")


def split_checkpoint(tensors: dict, where: str) -> tuple[dict, dict]:
    """{key: array} of a run checkpoint → (expert tensors, ``action_header.`` stripped; VLM tensors,
    ``vlm_model.`` stripped). Keys with neither prefix are named in a ValueError."""
    other = sorted(k for k in tensors if not k.startswith((HEADER_PREFIX, VLM_PREFIX)))
    if other:
        raise ValueError(f"{where}: keys outside action_header.* / vlm_model.*: {other[:10]}")
    expert = {k[len(HEADER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(HEADER_PREFIX)}
    vlm_t = {k[len(VLM_PREFIX) :]: v for k, v in tensors.items() if k.startswith(VLM_PREFIX)}
    if not expert:
        raise ValueError(f"{where}: no action_header.* keys (the System-1 expert)")
    if not vlm_t:
        raise ValueError(f"{where}: no vlm_model.* keys (the Qwen3-VL System-2)")
    return expert, vlm_t


@functools.partial(jax.jit, static_argnums=0)
def _init_expert(cfg: ae.ActionExpertConfig, key: jax.Array) -> nnx.State:
    return nnx.state(ae.ActionExpert(cfg, nnx.Rngs(params=key)))


def assemble(
    config: P.PolicyConfig, vlm_tensors: dict, expert_tensors: dict, norm: P.NormStats, where: str = "<dict>"
) -> P.PolicyParams:
    """``PolicyParams`` of a Qwen3-VL policy from {HF key: array} and Ψ0's expert {key: array} (neither
    system is randomly initialised beyond what the expert file replaces)."""
    if not config.is_vlm:
        raise ValueError(f"assemble needs a Qwen3-VL encoder, got {config.encoder!r}")
    abstract = P.abstract_policy(config)
    ecfg = config.expert_config()
    problems = []
    try:
        vlm.check_hf_tensors(config.encoder, vlm_tensors, where)
    except ValueError as e:
        problems.append(str(e))
    try:
        expert = convert.load_expert_state(expert_tensors, _init_expert(ecfg, jax.random.key(0)), ecfg)
    except ValueError as e:
        problems.append(str(e).replace("<dict>", f"{where} (action_header.*)"))
    if problems:
        raise ValueError(" | ".join(problems))
    model = jax.tree.map(lambda x: x, abstract.model)
    model["encoder"] = vlm.encoder_state_with_weights(
        abstract.model["encoder"], config.encoder, config.vlm_dtype, vlm_tensors, where
    )
    model["expert"] = expert
    P._check_norm(config, norm)
    return P.PolicyParams(model=model, norm=norm, graphdef=abstract.graphdef, config=config)


def load_psi0(
    run_dir: str | os.PathLike,
    step: int | None = None,
    *,
    action_expert: str = "psi0",
    vlm_config=None,
    **config_overrides,
) -> P.PolicyParams:
    """A Ψ0 run directory → the whole Ψ0 as ``PolicyParams`` (frozen Qwen3-VL + expert + norm stats).

    Args:
      run_dir: the run directory (see the module docstring).
      step: checkpoint step N (None = the latest).
      action_expert: the expert preset the file holds ("psi0"; "tiny" for the test-sized run).
      vlm_config: where the VLM config comes from when the run does not hold one (preset name, dict,
        config.json or its directory).
      config_overrides: further ``PolicyConfig`` fields (e.g. ``vlm_path``, ``rtc``, ``chunk``);
        ``image_size`` defaults to (180, 320) and ``prompt_max_len`` to 160.

    Returns: ``PolicyParams`` with ``config.encoder`` the matched Qwen3-VL preset.
    """
    run_dir = Path(run_dir)
    ckpt = checkpoint_file(run_dir, step)
    run_cfg = read_run_config(run_dir)
    norm = run_norm_stats(run_dir, run_cfg)
    vcfg, where = _load_vlm_config(run_dir, run_cfg, vlm_config)
    preset = match_vlm_preset(vcfg, where)
    fields = {"image_size": PSI0_IMAGE_SIZE, "prompt_max_len": PSI0_PROMPT_LEN} | dict(config_overrides)
    config = P.PolicyConfig(encoder=preset, action_expert=action_expert, **fields)
    tensors = convert.read_safetensors(ckpt)
    expert_t, vlm_t = split_checkpoint(tensors, str(ckpt))
    try:
        return assemble(config, vlm_t, expert_t, norm, f"{ckpt} (vlm_model.*)")
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if str(ckpt) in msg else f"{ckpt}: {msg}") from e


def export_psi0(params: P.PolicyParams, run_dir: str | os.PathLike, step: int) -> Path:
    """Writes ``params`` as a Ψ0 run directory: ``checkpoints/ckpt_{step}/model.safetensors``
    (``action_header.*`` float32 in Ψ0's layout incl. its two buffers; ``vlm_model.*`` in the VLM's dtype,
    Hugging Face keys) and ``run_config.json`` (norm stats in ``stats_psi0.json``'s layout, the VLM
    config, this package's policy config). Atomic per file. Returns the checkpoint path."""
    from safetensors.flax import save_file

    cfg = params.config
    if not cfg.is_vlm:
        raise ValueError(f"export_psi0 needs a Qwen3-VL policy, got encoder {cfg.encoder!r}")
    run_dir = Path(run_dir)
    out = {HEADER_PREFIX + k: jnp.asarray(v) for k, v in convert.export_policy_expert(params).items()}
    out |= {VLM_PREFIX + k: jnp.asarray(v) for k, v in vlm.hf_tensors(params.model["encoder"], cfg.encoder).items()}
    path = run_dir / "checkpoints" / f"ckpt_{int(step)}" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(out, str(tmp))
    os.replace(tmp, path)
    n = params.norm
    field = {  # Ψ0's ActionStateTransform fields ("bounds": min/max; SIMPLE fine-tuning normalises states)
        "action_norm_type": "bounds",
        "normalize_state": True,
        "stat_action_key": "action",
        "stat_state_key": "states",
        "action_min": np.asarray(n.action_min).tolist(),
        "action_max": np.asarray(n.action_max).tolist(),
        "state_min": np.asarray(n.state_min).tolist(),
        "state_max": np.asarray(n.state_max).tolist(),
    }
    policy_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    run_cfg = {
        "data": {"transform": {"field": field}},
        "vlm_config": vlm.vlm_config(cfg.encoder),
        "recap_jax": {"policy_config": policy_cfg},
    }
    rc = run_dir / RUN_CONFIG
    tmp = rc.with_suffix(".tmp")
    tmp.write_text(json.dumps(run_cfg, indent=1))
    os.replace(tmp, rc)
    return path


def with_vlm_weights(params: P.PolicyParams, path: str | os.PathLike) -> P.PolicyParams:
    """``params`` with System-2 weights from a Hugging Face Qwen3-VL directory (config checked against
    the policy's preset; every missing / mis-shaped key named)."""
    from safetensors.numpy import load_file

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    d = vlm.config_mismatches(params.config.encoder, cfg)
    if d:
        raise ValueError(f"{path / 'config.json'}: differs from preset {params.config.encoder}: {d[:6]}")
    index = path / "model.safetensors.index.json"
    files = (
        sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        if index.exists()
        else [path / "model.safetensors"]
    )
    tensors = {}
    for f in files:
        if not f.exists():
            raise ValueError(f"{f}: weights file not found")
        tensors.update(load_file(str(f)))
    model = jax.tree.map(lambda x: x, params.model)
    model["encoder"] = vlm.encoder_state_with_weights(
        params.model["encoder"], params.config.encoder, params.config.vlm_dtype, tensors, str(files[0])
    )
    return params.replace(model=model)
