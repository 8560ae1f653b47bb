"""Stage 5: RECAP (advantage token in the prompt) and BC-all (no token) on the same rollouts.

    python -m experiments.finetune --out runs/smoke

Both start from the SFT collection checkpoint (no pretrained Ψ0 base exists here; ``finetune.init =
"scratch"`` starts both from a fresh initialisation instead), with the same steps, optimiser, batch
size, seed (so the same window order) and data; they differ only in the prompt: RECAP trains on
``"advantage: high|low. <instruction>"`` from the ``label`` annotation (dropped to the bare instruction
with probability ``finetune.indicator_dropout``), BC-all on the bare instruction. With
``finetune.holdout_fraction > 0`` the same outcome-stratified share of the rollouts (``holdout_ids``) is
left out of both, and the label-swap diagnostic reads RECAP's token on those held-out episodes.
Writes ``DIR/finetune/recap/`` and ``DIR/finetune/bc_all/`` (orbax checkpoints, logs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import collect, common, glue
from experiments.presets import StudyConfig

RUNS = ("recap", "bc_all")


def run_dir(it: int, which: str) -> str:
    return f"finetune/{which}" if it == 0 else f"finetune_it{it}/{which}"


def init_params(cfg: StudyConfig, out: Path, which: str):
    """The shared starting point: the SFT collection checkpoint (or a fresh init with its norm stats)."""
    import jax

    from recap_jax import policy

    sft = glue.load_policy(Path(out) / "sft", glue.policy_config(cfg), collect.checkpoint_step(out))
    if cfg.finetune.init == "scratch":
        sft = policy.init_policy(glue.policy_config(cfg), jax.random.key(cfg.seed + 1), sft.norm)
    dropout = cfg.finetune.indicator_dropout if which == "recap" else 0.0
    return policy.replace_config(sft, indicator_dropout=dropout) if dropout else sft


SWAP_WINDOWS = 256  # labelled decision points the label-swap diagnostic reads (at most)


def holdout_ids(cfg: StudyConfig, out: Path) -> tuple[int, ...]:
    """Rollout episode ids held out of RECAP's and BC-all's training (``finetune.holdout_fraction`` of each
    outcome, ``value_training.stratified_split`` with the study seed); () when the fraction is 0."""
    if cfg.finetune.holdout_fraction <= 0:
        return ()
    from recap_jax.data import EpisodeStore
    from recap_jax.value_training import stratified_split

    eps = [e for e in EpisodeStore(Path(out) / "rollouts").iter_episodes() if e.tags.get("kind") == "rollout"]
    ids = np.asarray([e.episode_id for e in eps], np.int64)
    success = np.asarray([e.success for e in eps], bool)
    _, held = stratified_split(ids, success, cfg.finetune.holdout_fraction, seed=cfg.seed)
    return tuple(int(i) for i in held)


def window_batch(episodes, labels, rows, chunk: int) -> tuple[dict, list[int], list[str]]:
    """Training windows for labelled decision points, as ``WindowLoader`` builds them.

    Args:
      episodes: {episode_id: Episode}; labels: {episode_id: int8 [Q_e]}; rows: [(episode_id, decision index q)];
      chunk: the policy's action horizon H.

    Returns: (batch without prompts: image u8 [B, h, w, 3], state f32 [B, S], t i32 [B], actions f32 [B, H, A],
      action_mask bool [B, H]; the rows' labels; the rows' instructions).
    """
    from recap_jax.data.loader import action_window

    batch = {"image": [], "state": [], "t": [], "actions": [], "action_mask": []}
    labs, prompts = [], []
    for eid, q in rows:
        e = episodes[eid]
        t = int(e.image_steps[q])
        a, m = action_window(np.asarray(e.actions, np.float32), t, chunk)
        for k, v in (("image", e.images[q]), ("state", e.states[t]), ("t", t), ("actions", a), ("action_mask", m)):
            batch[k].append(v)
        labs.append(int(labels[eid][q]))
        prompts.append(e.prompt)
    batch = {k: np.stack(v) for k, v in batch.items()}
    batch["t"] = batch["t"].astype(np.int32)
    return batch, labs, prompts


def swap_losses(loss_fn, params, batch: dict, labs, prompts, key) -> tuple[np.ndarray, np.ndarray]:
    """Per-window flow-matching losses (float [B] each) with the true and the swapped (high ↔ low) advantage
    prompt, the same σ and noise (``key``) for both. ``loss_fn(params, batch, key) -> float [B]``."""
    from recap_jax import advantage

    tok = params.config.tokenizer()
    out = []
    for labels in (labs, [1 - x for x in labs]):
        ids, mask = tok.encode(advantage.format_prompts(prompts, labels))
        out.append(np.asarray(loss_fn(params, batch | {"prompt_ids": ids, "prompt_mask": mask}, key)))
    return out[0], out[1]


def per_example_loss():
    """The jitted per-window flow-matching loss ``(params, batch, key) -> float [B]`` the diagnostic reads."""
    import jax

    from recap_jax import policy

    return jax.jit(lambda p, b, k: policy.policy_loss(p, b, k, per_example=True)[0])


def paired_summary(true: np.ndarray, swapped: np.ndarray) -> dict:
    """Means of the paired per-window losses and the standard error of their difference."""
    true, swapped = np.asarray(true, np.float64), np.asarray(swapped, np.float64)
    diff, n = swapped - true, len(true)
    return {
        "true": float(true.mean()),
        "swapped": float(swapped.mean()),
        "swapped_minus_true": float(diff.mean()),
        "swapped_minus_true_se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        "windows": n,
    }


def label_swap_loss(
    params,
    store_root,
    *,
    episode_ids=None,
    windows: int = SWAP_WINDOWS,
    batch_size: int = 16,
    seed: int = 0,
    labels=None,
) -> dict:
    """Whether a RECAP policy reads its advantage token: its flow-matching loss on labelled rollout windows with
    the true label in the prompt vs the swapped one (high ↔ low), the same σ and noise for both (issue 22).

    Up to ``windows`` decision points with a label in {0, 1} are drawn from the store's rollouts (``seed``),
    restricted to ``episode_ids`` when given (the held-out split, ``holdout_ids``: episodes the policy never
    trained on); each is a training window (``window_batch``). A policy that ignores the token scores the same
    loss for both prompts; one that reads it scores lower with the true label (``swapped_minus_true`` > 0).
    Without ``episode_ids`` the windows come from every rollout, i.e. from RECAP's training set (``held_out``
    False). ``labels``: {episode_id: int8 [Q_e]} instead of the store's ``label`` annotation.

    Returns: {"true", "swapped", "swapped_minus_true", "swapped_minus_true_se", "windows", "held_out"}; None values
      when there are no labelled windows. ``swapped_minus_true_se``: the standard error of the mean per-window
      difference (the two losses share σ and noise per window, so the difference is paired).
    """
    import jax

    from recap_jax import policy
    from recap_jax.data import EpisodeStore

    store = EpisodeStore(store_root)
    labels = store.read_annotation("label") if labels is None else labels
    eps = {e.episode_id: e for e in store.iter_episodes() if e.tags.get("kind") == "rollout"}
    held_out = episode_ids is not None
    if held_out:
        keep = {int(i) for i in episode_ids}
        eps = {k: e for k, e in eps.items() if k in keep}
    rows = [(eid, q) for eid, lab in labels.items() if eid in eps for q in range(len(lab)) if lab[q] in (0, 1)]
    out = dict.fromkeys(("true", "swapped", "swapped_minus_true", "swapped_minus_true_se")) | {"windows": 0}
    out["held_out"] = held_out
    if not rows:
        return out
    rng = np.random.default_rng(seed)
    pick = [rows[i] for i in rng.permutation(len(rows))[:windows]]
    pad = -len(pick) % batch_size  # the last batch is filled with repeats, which are not counted
    pick_padded = pick + (pick * batch_size)[:pad]
    if params.config.indicator_dropout:
        params = policy.replace_config(params, indicator_dropout=0.0)
    loss = per_example_loss()
    per = {"true": [], "swapped": []}
    for start in range(0, len(pick_padded), batch_size):
        batch, labs, prompts = window_batch(eps, labels, pick_padded[start : start + batch_size], params.config.chunk)
        key = jax.random.fold_in(jax.random.key(seed), start)
        true, swapped = swap_losses(loss, params, batch, labs, prompts, key)
        per["true"].append(true)
        per["swapped"].append(swapped)
    n = len(pick)
    return out | paired_summary(np.concatenate(per["true"])[:n], np.concatenate(per["swapped"])[:n])


def training_seed(cfg: StudyConfig) -> int:
    """The seed of RECAP's and BC-all's window order and flow noise: the study seed, or for a training replicate
    ``finetune.train_seed = k > 0``, ``seed + 7919 k``."""
    if cfg.finetune.train_seed < 0:
        raise ValueError(f"finetune.train_seed must be >= 0, got {cfg.finetune.train_seed}")
    return cfg.seed + 7919 * cfg.finetune.train_seed


def finetune(cfg: StudyConfig, out: Path, which: str, it: int = 0) -> dict:
    from recap_jax import train

    params0 = init_params(cfg, out, which)
    held = holdout_ids(cfg, out)
    d = Path(out) / run_dir(it, which)
    final, history = glue.train_policy(
        params0=params0,
        store_root=Path(out) / "rollouts",
        kinds=("rollout",),
        label_annotation="label" if which == "recap" else None,
        settings=cfg.finetune,
        num_steps=cfg.finetune.steps,
        save_every=cfg.finetune.steps,
        out_dir=d,
        seed=training_seed(cfg),
        exclude_episodes=held,
        assets=train.make_assets(
            params0.norm, config=params0.config, preset=cfg.name, seed=cfg.seed, stage=f"finetune/{which}", iteration=it
        ),
    )
    return {
        "run": which,
        "iteration": it,
        "init": cfg.finetune.init,
        "steps": cfg.finetune.steps,
        "indicator_dropout": params0.config.indicator_dropout,
        "final_loss": history[-1]["loss"] if history else None,
        "held_out_episodes": list(held),
        "label_swap_loss": label_swap_loss(
            final,
            Path(out) / "rollouts",
            episode_ids=held or None,
            batch_size=cfg.finetune.batch_size,
            seed=cfg.seed,
        )
        if which == "recap"
        else None,
    }


def run(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    cfg_slice = {"finetune": cfg.finetune, "policy": cfg.policy, "labels": cfg.labels, "seed": cfg.seed}
    return {
        which: common.run_stage(out, run_dir(it, which), cfg_slice, lambda which=which: finetune(cfg, out, which, it))
        for which in RUNS
    }


def main(argv=None) -> None:
    common.stage_main(run, "RECAP and BC-all fine-tuning on the labelled rollouts (stage 5).", argv)


if __name__ == "__main__":
    main()
