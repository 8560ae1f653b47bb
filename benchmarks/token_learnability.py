"""Can the policy learn to read its advantage token, and do the study's labels give it a reason to (issue 23)?

Starting from a study run's SFT collection checkpoint, fine-tunes the policy on the run's labelled rollout windows
with the advantage prompt under several label schemes and learning rates, and tracks the label-swap gap
(``finetune.label_swap_loss``'s statistic: flow-matching loss with the swapped label minus with the true one, the
same σ and noise for both) on held-out episodes and on training windows:

* ``real``: the run's ``label`` annotation (the labels RECAP trains on);
* ``nstepN``: N-step advantage labels over N decision points from the run's out-of-fold V̂
  (``labeling.compute_labels`` with ``n_step=N``; nothing is written to the store);
* ``temperature``: on a run with mixed-temperature rollouts (``collect.temperatures``, preset
  ``cpu_power_mixed``), high = the episode played at temperature 1 and low = at another, on the windows the real
  labels cover: the labels an oracle of the data's quality would give;
* ``random_offset``: the positive control. Each labelled window gets a random label (p = ½, seeded) and its
  action chunk is shifted by ``(2·label − 1)·offset·(action_max − action_min)``: a label that is perfectly
  predictive of the actions and unpredictable from the observation. Only the token can explain the shift.

A gap that opens on ``random_offset`` shows the model and optimiser can read two bytes of prompt; a gap that
stays at zero on the real labels, even in sample, shows those labels carry no action information the policy can
use beyond its observation. Writes the ``token_learnability`` section of ``benchmarks/RESULTS.md``.

    python -m benchmarks.token_learnability --run runs/cpu_power/seed0 [--schemes real nstep2 random_offset]
        [--lrs 3e-4 2e-3] [--steps 1200] [--eval-every 300] [--section token_learnability]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from recap_jax import _platform

_platform.apply_xla_flags()

import numpy as np  # noqa: E402

from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402

SECTION = "token_learnability"
EVAL_WINDOWS = 256


def scheme_labels(scheme: str, cfg, run: Path, store) -> dict[int, np.ndarray]:
    """{episode_id: int8 [Q_e]} labels of ``scheme`` (see the module docstring)."""
    from experiments import glue, train_value
    from recap_jax import labeling

    real = {int(k): np.asarray(v, np.int8) for k, v in store.read_annotation("label").items()}
    if scheme in ("real", "random_offset"):
        if scheme == "real":
            return real
        rng = np.random.default_rng(7)
        return {k: np.where(v >= 0, rng.integers(0, 2, len(v)), -1).astype(np.int8) for k, v in sorted(real.items())}
    if scheme == "temperature":
        temps = {e.episode_id: float(e.tags.get("temperature", 1.0)) for e in store.iter_episodes()}
        if len(set(temps.values())) < 2:
            raise ValueError(f"{run}: the temperature scheme needs rollouts of two temperatures (collect.temperatures)")
        return {k: np.where(v >= 0, int(temps[k] == 1.0), -1).astype(np.int8) for k, v in sorted(real.items())}
    if scheme.startswith("nstep") and scheme[5:].isdigit():
        values = train_value.load_values(run / train_value.stage_name(0) / "values.npz")
        metas = [labeling.EpisodeMeta.of(e) for e in store.iter_episodes() if e.episode_id in values]
        lc = dataclasses.replace(glue.label_config(cfg), n_step=int(scheme[5:]))
        return {
            int(k): np.asarray(v, np.int8) for k, v in labeling.compute_labels(metas, values, lc)[0]["label"].items()
        }
    raise ValueError(
        f"unknown label scheme {scheme!r}: expected real, temperature, random_offset or nstepN (e.g. nstep2)"
    )


def run_one(cfg, run: Path, scheme: str, lr: float, steps: int, eval_every: int, offset: float) -> list[dict]:
    """Fine-tunes from the SFT collection checkpoint under ``scheme`` at ``lr``; the gaps every ``eval_every``."""
    from experiments import finetune
    from recap_jax.data import EpisodeStore

    store = EpisodeStore(run / "rollouts")
    eps = {e.episode_id: e for e in store.iter_episodes() if e.tags.get("kind") == "rollout"}
    labels = scheme_labels(scheme, cfg, run, store)
    if cfg.finetune.holdout_fraction <= 0:  # a run without a holdout: hold out 10% of each outcome here
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, holdout_fraction=0.1))
    held = set(finetune.holdout_ids(cfg, run))
    rows = [(eid, q) for eid, lab in sorted(labels.items()) if eid in eps for q in range(len(lab)) if lab[q] in (0, 1)]
    params0 = finetune.init_params(cfg, run, "recap")
    shift = offset if scheme == "random_offset" else 0.0
    return track_gaps(cfg, params0, eps, labels, rows, held, lr, steps, eval_every, shift=shift, name=scheme)


def track_gaps(
    cfg, params0, eps, labels, rows, held, lr: float, steps: int, eval_every: int, *, shift: float = 0.0, name: str = ""
) -> list[dict]:
    """Fine-tunes ``params0`` with the advantage prompt on the labelled windows ``rows`` [(episode_id, q)] whose
    episode is not in ``held``, at ``lr`` for ``steps`` steps (the preset's optimiser otherwise), and reads the
    label-swap gap every ``eval_every`` steps on up to ``EVAL_WINDOWS`` held-out and training windows.

    ``eps``: {episode_id: Episode}; ``labels``: {episode_id: int8 [Q_e]} (1 high, 0 low); ``shift``: each
    window's actions move by ``(2·label − 1)·shift·(action_max − action_min)`` (the positive control; 0 for
    real labels). Returns one row per evaluation (dicts, printed as they come)."""
    import jax

    from experiments import finetune, glue
    from recap_jax import advantage, policy
    from recap_jax import train as T

    train_rows = [r for r in rows if r[0] not in held]
    held_rows = [r for r in rows if r[0] in held]
    if not train_rows or len(held_rows) < int(cfg.finetune.batch_size):
        raise ValueError(
            f"need training windows and >= {cfg.finetune.batch_size} held-out windows, got {len(train_rows)} "
            f"and {len(held_rows)}"
        )
    rng = np.random.default_rng(cfg.seed)
    in_sample = [train_rows[i] for i in rng.permutation(len(train_rows))[:EVAL_WINDOWS]]
    held_out = [held_rows[i] for i in rng.permutation(len(held_rows))[:EVAL_WINDOWS]]
    eval_sets = {"held_out": held_out, "in_sample": in_sample}

    pcfg, bsz = params0.config, int(cfg.finetune.batch_size)
    span = np.asarray(params0.norm.action_max - params0.norm.action_min, np.float32)
    tok = pcfg.tokenizer()

    def batch_for(chunk):
        batch, labs, prompts = finetune.window_batch(eps, labels, chunk, pcfg.chunk)
        batch["actions"] = batch["actions"] + shift * (2 * np.asarray(labs, np.float32) - 1)[:, None, None] * span
        return batch, labs, prompts

    def gaps(params) -> dict:
        res = {}
        for set_name, ev in eval_sets.items():
            true, swapped = [], []
            for s in range(0, len(ev) - bsz + 1, bsz):
                b, labs, prompts = batch_for(ev[s : s + bsz])
                t_, s_ = finetune.swap_losses(per_example, params, b, labs, prompts, jax.random.key(10_000 + s))
                true.append(t_)
                swapped.append(s_)
            res[set_name] = finetune.paired_summary(np.concatenate(true), np.concatenate(swapped))
        return res

    opt_cfg = glue.optimizer_config(dataclasses.replace(cfg.finetune, learning_rate=lr), steps)
    tx = T.make_optimizer(opt_cfg)
    state = T.TrainState.create(params0, tx, jax.random.key(cfg.seed), mask=policy.trainable_mask)
    step = jax.jit(T.make_train_step(policy.policy_loss, tx))
    per_example = finetune.per_example_loss()
    out, losses, t0 = [], [], time.perf_counter()
    order = np.random.default_rng(cfg.seed + 1)
    for i in range(steps + 1):
        if i % eval_every == 0 or i == steps:
            g = gaps(state.inference_params)
            row = {"scheme": name, "lr": lr, "step": i, "train_loss": float(np.mean(losses)) if losses else None}
            row |= {f"{k}_{m}": v[m] for k, v in g.items() for m in ("swapped_minus_true", "swapped_minus_true_se")}
            row |= {"true_loss": g["held_out"]["true"], "seconds": time.perf_counter() - t0, "windows": len(train_rows)}
            print(row, flush=True)
            out.append(row)
            losses = []
        if i == steps:
            break
        b, labs, prompts = batch_for([train_rows[j] for j in order.integers(0, len(train_rows), bsz)])
        ids, mask = tok.encode(advantage.format_prompts(prompts, labs))
        state, metrics = step(state, b | {"prompt_ids": ids, "prompt_mask": mask})
        losses.append(float(metrics["loss"]))
    return out


def _fmt(mean, se) -> str:
    return f"{mean:+.2e} ± {se:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a study run directory with its labels stage done")
    ap.add_argument("--schemes", nargs="+", default=["real", "nstep2", "random_offset"])
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 2e-3])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--offset", type=float, default=0.1, help="random_offset's shift, a fraction of the action range")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/RESULTS.md")
    ap.add_argument("--section", default=SECTION, help="the RESULTS.md section to write (one per run studied)")
    args = ap.parse_args()

    from experiments import common

    common.setup_jax()
    cfg = common.read_config(args.run)
    load = os.getloadavg()[0]
    rows = []
    for scheme in args.schemes:
        for lr in args.lrs:
            for r in run_one(cfg, args.run, scheme, lr, args.steps, args.eval_every, args.offset):
                rows.append(
                    [
                        r["scheme"],
                        f"{r['lr']:.0e}",
                        r["step"],
                        "–" if r["train_loss"] is None else f"{r['train_loss']:.4f}",
                        f"{r['true_loss']:.4f}",
                        _fmt(r["held_out_swapped_minus_true"], r["held_out_swapped_minus_true_se"]),
                        _fmt(r["in_sample_swapped_minus_true"], r["in_sample_swapped_minus_true_se"]),
                        f"{r['seconds']:.0f}",
                    ]
                )
    body = (
        f"Machine: {machine_description()}; load average {load:.1f} at the start.\n\n"
        f"Run `{args.run}` (preset `{cfg.name}`, seed {cfg.seed}): fine-tuning from its SFT collection checkpoint "
        f"with the preset's optimiser (AdamW, warmup {cfg.finetune.warmup_steps}, cosine over {args.steps} steps) "
        f"at batch {cfg.finetune.batch_size}, the advantage prompt always present. Gap = loss with the swapped "
        f"label − loss with the true label (± paired SE) on {EVAL_WINDOWS} held-out windows (episodes outside the "
        f"training split) and {EVAL_WINDOWS} training windows; a policy that reads its token has a gap > 0. "
        f"`random_offset` shifts each window's actions by ±{args.offset} of the action range by a random label: "
        "the positive control.\n\n"
        + markdown_table(
            ["labels", "lr", "step", "train loss", "held-out loss", "held-out gap", "in-sample gap", "s"], rows
        )
    )
    if not args.no_write:
        write_section(args.section, body)
    print(body)


if __name__ == "__main__":
    main()
