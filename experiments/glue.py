"""Thin glue between a ``StudyConfig`` and the stages' own configs and functions.

Nothing here is new method: it maps preset fields onto ``envs.make``, ``PolicyConfig``,
``ValueTrainConfig``, ``LabelConfig``, ``LoaderConfig`` and ``OptimizerConfig``, and wires the
library's train loop (``recap_jax.train``) and rollouts (``recap_jax.rollout``) for the scripts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.presets import StudyConfig

ENV_NAME = "G1BendPick-v0"
INSTRUCTION = "bend to pick up the cracker box"  # SIMPLE's prompt, "bend to pick up the {object}" lower-cased


# ---- episode key spaces ---------------------------------------------------------------------------
# Episode i of a stage is keyed ``rollout.episode_key(seed, namespace, i)`` with (seed, namespace) from
# ``key_space``: every stage has its own namespace, so no two stages of a study replay the same scene.
COLLECT_NAMESPACE = 0  # = rollout.COLLECT, collection iteration 0; iteration k uses COLLECT_NAMESPACE_BASE + k
EVAL_NAMESPACE = 1  # = rollout.EVAL
SCREEN_NAMESPACE = 2  # SFT checkpoint screening (collect.choose_checkpoint)
DEMO_NAMESPACE = 3  # scripted-expert demos (sft.collect_demos)
COLLECT_NAMESPACE_BASE = 100  # collection iteration k >= 1: namespace 100 + k
KEY_STAGES = ("demos", "screen", "collect", "eval")


def key_space(cfg: StudyConfig, stage: str, it: int = 0) -> tuple[int, int]:
    """(seed, namespace) of a stage's episode keys.

    demos / screen / collect use ``cfg.seed``; collection iteration ``it`` has its own namespace (its ids
    ``it·collect.episodes …`` are disjoint too, so the episode store's ids stay unique). Evaluation uses
    ``evaluate.key_seed + cfg.seed`` in namespace ``EVAL_NAMESPACE``: held out from every training-side
    key, the same for every condition of one study (paired), different for every study seed.
    """
    if stage not in KEY_STAGES:
        raise ValueError(f"unknown key stage {stage!r}; expected one of {KEY_STAGES}")
    if stage == "eval":
        return cfg.evaluate.key_seed + cfg.seed, EVAL_NAMESPACE
    if stage == "collect":
        if not isinstance(it, int) or it < 0:
            raise ValueError(f"collection iteration must be an int >= 0, got {it!r}")
        return cfg.seed, COLLECT_NAMESPACE if it == 0 else COLLECT_NAMESPACE_BASE + it
    return cfg.seed, {"demos": DEMO_NAMESPACE, "screen": SCREEN_NAMESPACE}[stage]


# ---- configs --------------------------------------------------------------------------------------


def make_env(cfg: StudyConfig, image_size: tuple[int, int] | None = None):
    """The study's env; one object per env setting per process, so jitted rollout waves (the env is a static
    argument) are compiled once and reused by every stage and condition. ``image_size`` (H, W) overrides the
    size ``env.render`` renders at (e.g. SIMPLE's 360×640 frame for evaluation through a policy server)."""
    settings = cfg.env if image_size is None else dataclasses.replace(cfg.env, image_size=tuple(image_size))
    return _make_env(settings)


@functools.lru_cache(maxsize=4)
def _make_env(settings):
    import envs
    from envs.g1.bendpick import parse_physics

    cfg = settings
    env = envs.make(
        ENV_NAME,
        episode_length=cfg.episode_length,
        image_size=tuple(cfg.image_size),
        randomization_level=cfg.randomization_level,
        camera=False,  # the rollout renders at decision points only
        **(parse_physics(cfg.physics).overrides() if cfg.physics else {}),
    )
    # System-0's warn-once host callback (jax.debug.callback) keeps every program that steps the env out
    # of JAX's persistent compilation cache ("uses host callbacks"), so each stage would recompile the
    # env for minutes. The env still flags such commands in metrics["unsupported_command"].
    s0 = getattr(env, "system0_params", None)
    if s0 is not None and getattr(s0, "warn_unsupported", False):
        env.system0_params = s0.replace(warn_unsupported=False)
    return env


def policy_config(cfg: StudyConfig, indicator_dropout: float = 0.0):
    from recap_jax.policy import PolicyConfig

    return PolicyConfig(
        **dict(cfg.policy),
        image_size=tuple(cfg.env.image_size),
        execute=cfg.env.replan_every,
        indicator_dropout=indicator_dropout,
    )


def system2_description(cfg: StudyConfig) -> str:
    """Which System-2 the study's policy uses (for provenance)."""
    pcfg = policy_config(cfg)
    if pcfg.is_vlm:
        src = pcfg.vlm_path or "random weights (no policy.vlm_path)"
        return f"Qwen3-VL preset {pcfg.encoder}, frozen, features cached per image and prompt variant; weights: {src}"
    return f"ViT encoder preset {pcfg.encoder!r} (trained with the expert; a stand-in for Ψ0's Qwen3-VL-2B)"


RETURN_FIELDS = ("returns", "c_fail", "max_steps")


def return_definition(cfg: StudyConfig) -> dict[str, Any]:
    """The study's one return definition, {"returns", "c_fail", "max_steps"} for both ``ValueTrainConfig`` and
    ``LabelConfig`` (``max_steps`` = ``value_training.return_horizon``, the T of the normaliser T − 1)."""
    v = cfg.value_training
    if v.return_horizon < cfg.env.episode_length:
        raise ValueError(
            f"value_training.return_horizon={v.return_horizon} is below the episode limit "
            f"env.episode_length={cfg.env.episode_length}: returns would leave [-1, 0]"
        )
    return {"returns": v.returns, "c_fail": float(v.c_fail), "max_steps": int(v.return_horizon)}


def value_config(cfg: StudyConfig):
    from recap_jax.labeling import return_range
    from recap_jax.value_training import ValueTrainConfig

    v = cfg.value_training
    overrides = {k: (tuple(x) if isinstance(x, list) else x) for k, x in cfg.value}
    clash = sorted(set(overrides) & {*RETURN_FIELDS, "v_min", "v_max", "clock_steps", "folds", "min_steps"})
    if clash:
        raise ValueError(f"value overrides {clash} are study settings: set them in value_training (ValueSettings)")
    ret = return_definition(cfg)
    v_min, v_max = return_range(
        ret["returns"], max_steps=ret["max_steps"], c_fail=ret["c_fail"], episode_limit=cfg.env.episode_length
    )
    return ValueTrainConfig(
        **overrides,
        **ret,
        epochs=v.epochs,
        batch_size=v.batch_size,
        learning_rate=v.learning_rate,
        val_fraction=v.val_fraction,
        split_seed=v.split_seed,
        v_min=v_min,
        v_max=v_max,
        clock_steps=cfg.env.episode_length if v.clock else 0,
        folds=v.folds,
        min_steps=v.min_steps,
        seed=cfg.seed,
    )


def label_config(cfg: StudyConfig):
    from recap_jax.labeling import LabelConfig

    return LabelConfig(
        positive_fraction=cfg.labels.positive_fraction, n_step=cfg.labels.n_step, **return_definition(cfg)
    )


def optimizer_config(settings, total_steps: int):
    from recap_jax.train import OptimizerConfig

    return OptimizerConfig.psi0(
        total_steps=total_steps,
        lr=settings.learning_rate,
        warmup_steps=min(settings.warmup_steps, max(total_steps - 1, 0)),
        weight_decay=settings.weight_decay,
        clip_norm=settings.grad_clip,
    )


# ---- policy training ------------------------------------------------------------------------------


def train_policy(
    *,
    params0,
    store_root: str | os.PathLike,
    kinds: tuple[str, ...],
    label_annotation: str | None,
    settings,
    num_steps: int,
    save_every: int,
    out_dir: str | os.PathLike,
    seed: int,
    assets: Mapping[str, Any],
    progress: bool = True,
    exclude_episodes: tuple[int, ...] = (),
) -> tuple[Any, list[dict]]:
    """Flow-matching training of ``params0`` on the store's windows (less ``exclude_episodes``) with the
    library's loop.

    Resumes from ``out_dir``'s latest checkpoint when there is one. Saves every ``save_every`` steps
    (all kept) and at the end; returns (final inference params, logged history).
    """
    import jax

    from recap_jax import policy
    from recap_jax import train as T
    from recap_jax.data import EpisodeStore
    from recap_jax.data.loader import LoaderConfig, WindowLoader

    pcfg = params0.config
    mesh = T.make_mesh()
    n_dev = mesh.devices.size
    batch = int(settings.batch_size)
    if batch % n_dev:
        raise ValueError(f"batch_size {batch} must be a multiple of the {n_dev} devices")
    opt_cfg = optimizer_config(settings, num_steps)
    tx = T.make_optimizer(opt_cfg)
    store = EpisodeStore(store_root)
    feature_annotation = None
    if pcfg.is_vlm:  # frozen Qwen3-VL (the whole Ψ0): train the expert from cached System-2 features
        from recap_jax.data import features

        features.write_feature_cache(store, params0)
        features.check_feature_cache(store, params0)
        feature_annotation = features.DEFAULT_NAME
    loader_cfg = LoaderConfig(
        batch_size=batch,
        horizon=pcfg.chunk,
        seed=seed,
        max_prompt_len=pcfg.prompt_max_len,
        label_annotation=label_annotation,
        emit_uncond=pcfg.indicator_dropout > 0,
        kinds=kinds,
        feature_annotation=feature_annotation,
        exclude_episodes=tuple(int(i) for i in exclude_episodes),
    )
    keep = max(1, math.ceil(num_steps / save_every)) + 1
    ckpt = T.Checkpointer(out_dir, max_to_keep=keep)

    def init_fn(key):
        return T.TrainState.create(params0, tx, key, mask=policy.trainable_mask)

    state, shardings, position = T.init_or_restore(init_fn, mesh, jax.random.PRNGKey(seed), ckpt)
    step_fn = T.jit_train_step(
        T.make_train_step(policy.policy_loss, tx, lr_schedule=T.learning_rate_schedule(opt_cfg)), shardings, mesh
    )
    loop = T.LoopConfig(num_steps=num_steps, log_every=settings.log_every, save_every=save_every, progress=progress)
    with (
        WindowLoader(store, loader_cfg, mesh=mesh, tokenizer=pcfg.tokenizer()) as loader,
        T.MetricWriter(Path(out_dir) / "logs") as writer,
    ):
        if position:
            loader.load_state_dict(position)
        state, history = T.train(state, step_fn, loader, loop, checkpointer=ckpt, writer=writer, assets=dict(assets))
    ckpt.close()
    return jax.device_get(state.inference_params), history


def load_policy(run_dir: str | os.PathLike, pcfg, step: int | None = None):
    """Inference params of a policy run (``step`` or the latest)."""
    import jax

    from recap_jax import policy
    from recap_jax import train as T

    # Rollouts run on one device (a wave program partitioned over 8 virtual CPU devices was seen to
    # deadlock), so the run is restored whole onto it, whatever mesh it was trained on.
    return T.load_inference_params(run_dir, policy.abstract_policy(pcfg), step=step, device=jax.local_devices()[0])


def norm_stats(store_root: str | os.PathLike, kinds: tuple[str, ...], widen: bool = False):
    """Min–max stats of the store's episodes of ``kinds``; ``widen``: the MIN_SPAN / STATE_MIN_SPAN
    range widening (``SFTSettings.norm_widen``; off = Ψ0's plain min–max)."""
    from recap_jax.data import EpisodeStore
    from recap_jax.data.loader import norm_stats as _stats
    from recap_jax.policy import MIN_SPAN, STATE_MIN_SPAN, NormStats

    eps = [e for e in EpisodeStore(store_root).iter_episodes() if e.tags.get("kind") in kinds]
    s = _stats(eps)
    spans = (MIN_SPAN, STATE_MIN_SPAN) if widen else (0.0, 0.0)
    return NormStats.from_arrays(
        np.stack([s["state_min"], s["state_max"]]), np.stack([s["action_min"], s["action_max"]]), *spans
    )


def prompt_for(condition_label: str | None) -> str:
    from recap_jax.advantage import format_prompt

    return format_prompt(INSTRUCTION, condition_label)


# ---- closed-loop evaluation (paired, held-out keys) ------------------------------------------------


def policy_act(params):
    """The rollout's act for a learned policy and its ``rtc`` flag: ``policy.sample_actions_rtc`` with the
    previous chunk carried (Ψ0's real-time chunking) unless the policy's ``config.rtc`` is "off", then
    plain ``policy.sample_actions``. Pass both to ``rollout.run_wave``/``collect``/``evaluate``."""
    from recap_jax import policy

    if params.config.rtc == "off":
        return policy.sample_actions, False
    return policy.sample_actions_rtc, True


def evaluate_policy(
    env,
    params,
    *,
    num_episodes: int,
    num_envs: int,
    seed: int,
    prompt: str,
    ta: int,
    beta: float = 1.0,
    keep_images: tuple[int, ...] = (),
    namespace: int | None = None,
) -> dict[str, Any]:
    """Held-out closed-loop evaluation, episode ``i`` keyed as ``rollout.evaluate`` keys it.

    Runs the same recorded wave program as collection (``record=True``) so that one compiled program
    serves collection, every condition and the GIF frames. The policy runs with its own ``config.rtc``
    (``policy_act``: the previous chunk's [Ta:] as the clean prefix of every query after an episode's
    first). Returns per-episode ``success``, ``n_steps``,
    ``cause`` (index into ``rollout.FAILURE_CAUSES``) and ``images`` {episode id: u8[Q, H, W, 3]} for
    ``keep_images``.
    """
    import jax

    from recap_jax import rollout

    act, rtc = policy_act(params)
    if rtc and ta != params.config.execute:
        raise ValueError(f"ta={ta} must equal the policy's execute={params.config.execute} (RTC prefix = chunk[Ta:])")
    tok = params.config.tokenizer()
    ids_row = tok.encode(prompt)[0]
    rows = np.broadcast_to(ids_row, (num_envs, ids_row.shape[1]))
    act_kwargs = None
    if beta != 1.0:
        uncond = tok.encode(INSTRUCTION)[0]
        act_kwargs = {"uncond_ids": np.broadcast_to(uncond, (num_envs, uncond.shape[1]))}
    key = jax.random.fold_in(jax.random.key(seed), rollout.EVAL if namespace is None else namespace)
    ids = list(range(num_episodes))
    out = {"success": [], "n_steps": [], "cause": [], "images": {}}
    for start in range(0, num_episodes, num_envs):
        chunk = ids[start : start + num_envs]
        padded = np.array(chunk + [chunk[-1]] * (num_envs - len(chunk)), np.int32)
        res = jax.device_get(
            rollout.run_wave(
                env, act, params, rows, beta, key, padded, ta=ta, record=True, act_kwargs=act_kwargs, rtc=rtc
            )
        )
        k = len(chunk)
        for name in ("success", "n_steps", "cause"):
            out[name].append(np.asarray(res[name][:k]))
        for j, eid in enumerate(chunk):
            if eid in keep_images:
                q = -(-int(res["n_steps"][j]) // ta)
                out["images"][eid] = np.asarray(res["images"][j, : max(q, 1)])
    for name in ("success", "n_steps", "cause"):
        out[name] = np.concatenate(out[name]) if out[name] else np.zeros(0)
    return out


def dataclass_dict(x) -> dict:
    return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else dict(x)
