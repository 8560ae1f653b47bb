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

    marker = common.read_json(Path(out) / collect.stage_name(0) / common.MARKER)
    sft = glue.load_policy(Path(out) / "sft", glue.policy_config(cfg), marker["outputs"]["checkpoint_step"])
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


def label_swap_loss(
    params,
    store_root,
    *,
    episode_ids=None,
    windows: int = SWAP_WINDOWS,
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """Whether a RECAP policy reads its advantage token: its flow-matching loss on labelled rollout windows with
    the true label in the prompt vs the swapped one (high ↔ low), the same σ and noise for both (issue 22).

    Up to ``windows`` decision points with a label in {0, 1} are drawn from the store's rollouts (``seed``),
    restricted to ``episode_ids`` when given (the held-out split, ``holdout_ids``: episodes the policy never
    trained on); each is a training window (image, state, clock, the chunk from its control step), as
    ``WindowLoader`` builds them. A policy that ignores the token scores the same loss for both prompts; one that
    reads it scores lower with the true label (``swapped_minus_true`` > 0). Without ``episode_ids`` the windows
    come from every rollout, i.e. from RECAP's training set (``held_out`` False).

    Returns: {"true", "swapped", "swapped_minus_true", "swapped_minus_true_se", "windows", "held_out"}; None values
      when there are no labelled windows. ``swapped_minus_true_se``: the standard error of the mean per-window
      difference (the two losses share σ and noise per window, so the difference is paired).
    """
    import jax

    from recap_jax import advantage, policy
    from recap_jax.data import EpisodeStore
    from recap_jax.data.loader import action_window

    store = EpisodeStore(store_root)
    labels = store.read_annotation("label")
    eps = {e.episode_id: e for e in store.iter_episodes() if e.tags.get("kind") == "rollout"}
    held_out = episode_ids is not None
    if held_out:
        keep = {int(i) for i in episode_ids}
        eps = {k: e for k, e in eps.items() if k in keep}
    rows = [(eid, q) for eid, lab in labels.items() if eid in eps for q in range(len(lab)) if lab[q] in (0, 1)]
    out = {
        "true": None,
        "swapped": None,
        "swapped_minus_true": None,
        "swapped_minus_true_se": None,
        "windows": 0,
        "held_out": held_out,
    }
    if not rows:
        return out
    rng = np.random.default_rng(seed)
    pick = [rows[i] for i in rng.permutation(len(rows))[:windows]]
    pad = -len(pick) % batch_size  # the last batch is filled with repeats, which are not counted
    pick_padded = pick + (pick * batch_size)[:pad]
    pcfg = params.config
    params = policy.replace_config(params, indicator_dropout=0.0) if pcfg.indicator_dropout else params
    tok = pcfg.tokenizer()
    loss = jax.jit(lambda p, b, k: policy.policy_loss(p, b, k, per_example=True)[0])
    per = {"true": [], "swapped": []}
    for start in range(0, len(pick_padded), batch_size):
        chunk = pick_padded[start : start + batch_size]
        batch = {"image": [], "state": [], "t": [], "actions": [], "action_mask": []}
        lab, prompts = [], []
        for eid, q in chunk:
            e, t = eps[eid], int(eps[eid].image_steps[q])
            a, m = action_window(np.asarray(e.actions, np.float32), t, pcfg.chunk)
            for k, v in (("image", e.images[q]), ("state", e.states[t]), ("t", t), ("actions", a), ("action_mask", m)):
                batch[k].append(v)
            lab.append(int(labels[eid][q]))
            prompts.append(e.prompt)
        batch = {k: np.stack(v) for k, v in batch.items()}
        batch["t"] = batch["t"].astype(np.int32)
        key = jax.random.fold_in(jax.random.key(seed), start)
        for name, labs in (("true", lab), ("swapped", [1 - x for x in lab])):
            ids, mask = tok.encode(advantage.format_prompts(prompts, labs))
            per[name].append(np.asarray(loss(params, batch | {"prompt_ids": ids, "prompt_mask": mask}, key)))
    n = len(pick)
    true, swapped = (np.concatenate(per[k])[:n].astype(np.float64) for k in ("true", "swapped"))
    diff = swapped - true
    out.update(true=float(true.mean()), swapped=float(swapped.mean()), windows=n)
    out["swapped_minus_true"] = float(diff.mean())
    out["swapped_minus_true_se"] = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else None
    return out


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
        seed=cfg.seed,
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
