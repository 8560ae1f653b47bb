"""Does one action chunk decide an episode's outcome, and can the advantage token learn which (issue 23)?

Branched rollouts with common random numbers. For each of S scenes, the run's collection policy (its SFT
collection checkpoint) plays the episode K times. The K plays share the env reset and every policy key except the
flow noise of one decision point q_s (drawn per scene), so they are identical up to control step q_s·Ta. Any
difference in their outcomes is caused by the chunk sampled at q_s and what followed from it. The study's labels
(Monte-Carlo return minus V̂(s)) mix that action effect with everything else that happens in an episode; these
labels isolate it:

* a branch whose outcome is above its group's mean is labelled high at q_s, one below it low; groups whose K
  plays agree are unlabelled (``--speed`` also ranks successes by their length, faster = better);
* the windows at q_s of 80% of the scenes train the advantage prompt (``token_learnability.track_gaps``, from the
  same SFT checkpoint and optimiser); the other scenes' windows measure the label-swap gap held out.

The fraction of groups whose plays disagree measures how much one chunk decides the outcome. A held-out gap > 0
shows that chunk-level labels carry action information the policy can learn from its observation. Branched
episodes are kept in ``RUN/branch/store`` (a rerun with the same settings reuses them). Writes the
``branch_credit`` section of ``benchmarks/RESULTS.md``.

    python -m benchmarks.branch_credit --run runs/cpu_power/seed0 [--scenes 256] [--branches 4] [--num-envs 32]
        [--q 0 1 2 3 4 5] [--lrs 3e-4 2e-3] [--steps 1200] [--eval-every 400] [--speed]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from recap_jax import _platform

_platform.apply_xla_flags()

import numpy as np  # noqa: E402

from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402

SECTION = "branch_credit"
NAMESPACE = 50  # episode-key namespace of the branched scenes (disjoint from the study's: glue.key_space)
BRANCH_FOLD = 7_919  # branch b's key at its branch point: fold_in(key, BRANCH_FOLD + b)
SIGNAL_HEADER = [
    "q",
    "episodes",
    "success − failure mean chunk, rms (range units)",
    "the same / spread",
    "AUC from the chunk",
    "AUC from the next state",
]


@dataclasses.dataclass(frozen=True)
class BranchedAct:
    """A rollout ``act`` whose key at one decision point is replaced per branch.

    Called by ``rollout.run_wave`` for one env (batch of 1) with ``act_kwargs`` ``branch_q`` i32[1] (the decision
    point where the branches part) and ``branch_id`` i32[1]; at every other decision point the key is the episode's
    own, so all branches of a scene share it. Hashable: a static argument of the wave program."""

    act: Callable
    ta: int
    temperature: float = 1.0  # the branch point's noise_scale (policy.sample_actions); 1 = the trained sampler

    def __call__(self, params, obs, prompt_ids, key, *, beta, branch_q, branch_id, **kwargs):
        import jax
        import jax.numpy as jnp

        hit = (obs["t"] // self.ta == branch_q)[0]
        branched = jax.random.fold_in(key, BRANCH_FOLD + branch_id[0])
        data = jnp.where(hit, jax.random.key_data(branched), jax.random.key_data(key))
        if self.temperature != 1.0:
            kwargs["noise_scale"] = jnp.where(hit, jnp.float32(self.temperature), jnp.float32(1.0))
        return self.act(params, obs, prompt_ids, jax.random.wrap_key_data(data), beta=beta, **kwargs)


def scene_plan(seed: int, scenes: int, q_choices: tuple[int, ...]) -> np.ndarray:
    """The branch point q_s of each scene, i32 [S] (seeded)."""
    return np.random.default_rng(seed + 17).choice(np.asarray(q_choices, np.int32), size=scenes)


def branch_dir(run: Path, temperature: float) -> Path:
    """Where the branched plays are kept: ``run/branch`` (temperature 1) or ``run/branch_T<temperature>``."""
    return run / ("branch" if temperature == 1.0 else f"branch_T{temperature:g}")


def collect_branches(
    cfg, run: Path, branch_q: np.ndarray, k: int, num_envs: int, temperature: float = 1.0
) -> tuple[dict, dict]:
    """Plays every scene ``k`` times (see the module docstring) into ``branch_dir(run, temperature)/store``; ids
    ``s·k + b``. ``temperature`` scales the flow noise of the branch point's chunk only.

    A store written with other settings (branches, branch points, policy) is refused: its ids would mean other
    plays. Returns ({episode_id: Episode}, {"policy": str, "seconds": float})."""
    import jax

    from experiments import collect, common, glue
    from recap_jax import rollout
    from recap_jax.data import EpisodeStore
    from recap_jax.models.tokenizer import ByteTokenizer

    if num_envs % k:
        raise ValueError(f"--num-envs {num_envs} must be a multiple of --branches {k}")
    step = collect.checkpoint_step(run)
    settings = {"branches": k, "policy_step": step, "seed": int(cfg.seed), "branch_q": branch_q.tolist()}
    saved = branch_dir(run, temperature) / "settings.json"
    if saved.exists():
        old = common.read_json(saved)
        n = min(len(old["branch_q"]), len(branch_q))
        if {**old, "branch_q": old["branch_q"][:n]} != {**settings, "branch_q": settings["branch_q"][:n]}:
            raise ValueError(f"{saved}: the branched store there was made with other settings; move {saved.parent}")
    params = glue.load_policy(run / "sft", glue.policy_config(cfg), step)
    act, rtc = glue.policy_act(params)
    bact = BranchedAct(act, int(cfg.env.replan_every), float(temperature))
    env = glue.make_env(cfg)
    store = EpisodeStore(saved.parent / "store", create=True)
    common.atomic_write_json(saved, settings)
    have = set(store.episode_ids())
    key = jax.random.fold_in(jax.random.key(cfg.seed), NAMESPACE)
    ids0 = np.asarray(ByteTokenizer().encode(glue.INSTRUCTION)[0], np.int32).reshape(1, -1)  # as collection's
    rows = np.broadcast_to(ids0, (num_envs, ids0.shape[1]))
    per_wave = num_envs // k
    scenes = len(branch_q)
    t0 = time.perf_counter()
    for s0 in range(0, scenes, per_wave):
        group = np.arange(s0, min(s0 + per_wave, scenes))
        eids = (group[:, None] * k + np.arange(k)[None]).reshape(-1)
        if all(int(e) in have for e in eids):
            continue
        pad = per_wave - len(group)
        g = np.concatenate([group, np.repeat(group[-1:], pad)])
        kw = {
            "branch_q": np.repeat(branch_q[g], k).astype(np.int32),
            "branch_id": np.tile(np.arange(k, dtype=np.int32), per_wave),
        }
        out = jax.device_get(
            rollout.run_wave(
                env, bact, params, rows, 1.0, key, np.repeat(g, k).astype(np.int32),
                ta=int(cfg.env.replan_every), record=True, act_kwargs=kw, rtc=rtc,
            )
        )  # fmt: skip
        n = len(eids)
        wave = rollout.WaveResult(
            episode_ids=eids.astype(np.int64),
            success=out["success"][:n],
            n_steps=out["n_steps"][:n],
            cause=out["cause"][:n],
            ta=int(cfg.env.replan_every),
            images=out["images"][:n],
            states=out["states"][:n],
            actions=out["actions"][:n],
        )
        eps = wave.episodes(glue.INSTRUCTION, {"policy": f"sft@{step}", "branches": k})
        for e in eps:
            s = int(e.episode_id) // k
            e.tags.update(scene=s, branch=int(e.episode_id) % k, branch_q=int(branch_q[s]))
        store.append(eps)
        print(f"  [branch] scenes {group[0]}..{group[-1]}: {int(wave.success.sum())}/{n} successes", flush=True)
    eps = {e.episode_id: e for e in store.iter_episodes() if e.episode_id < scenes * k}
    missing = scenes * k - len(eps)
    if missing:
        raise ValueError(f"{saved.parent / 'store'}: {missing} branched episodes missing after collection")
    return eps, {"policy": f"sft@{step}", "seconds": time.perf_counter() - t0}


def _groups(eps: dict, k: int):
    """Yields (branch point q, the scene's k plays in branch order) for each scene of a branched store."""
    for s in range(len(eps) // k):
        group = [eps[s * k + b] for b in range(k)]
        yield int(group[0].tags["branch_q"]), group


def prefix_difference(eps: dict, k: int, ta: int) -> float:
    """The largest |state difference| between the branches of a scene up to and including their branch point's
    observation (0 when the plays are exactly common up to there)."""
    worst = 0.0
    for q, group in _groups(eps, k):
        n = min(q * ta + 1, *(e.n_steps for e in group))
        ref = group[0].states[:n]
        for e in group[1:]:
            worst = max(worst, float(np.max(np.abs(e.states[:n] - ref), initial=0.0)))
    return worst


def group_labels(eps: dict, k: int, episode_length: int, speed: bool) -> tuple[dict, dict]:
    """Labels at each scene's branch point: {episode_id: int8 [Q_e]} (−1 except at q_s), and counts."""
    labels, counts = {}, {"groups": len(eps) // k, "mixed_success": 0, "labelled_groups": 0, "high": 0, "low": 0}
    for q, group in _groups(eps, k):
        succ = np.array([e.success for e in group], np.float64)
        score = succ * (2.0 - np.array([e.n_steps for e in group]) / episode_length) if speed else succ
        alive = all(q < len(e.image_steps) for e in group)  # every play reached its branch point
        mixed = int(alive and 0 < succ.sum() < k)
        counts["mixed_success"] += mixed
        by_q = counts.setdefault("by_q", {}).setdefault(q, [0, 0])  # [groups, groups whose plays disagree]
        by_q[0] += 1
        by_q[1] += mixed
        mean = score.mean()
        for e, sc in zip(group, score):
            lab = np.full(len(e.image_steps), -1, np.int8)
            if alive and abs(sc - mean) > 1e-9:
                lab[q] = int(sc > mean)
                counts["high" if sc > mean else "low"] += 1
            labels[e.episode_id] = lab
        counts["labelled_groups"] += int(alive and np.ptp(score) > 1e-9)
    return labels, counts


def _ridge_logistic_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: float = 0.1, folds: int = 5) -> float:
    """Held-out ROC AUC of an L2-regularised logistic regression (Newton steps on standardised features),
    ``folds``-fold cross-validated over ``groups`` (rows of a group are never split)."""
    from recap_jax import stats

    uniq = np.random.default_rng(0).permutation(np.unique(groups))
    pred = np.zeros(len(y))
    for fold in np.array_split(uniq, folds):
        te = np.isin(groups, fold)
        mu, sd = x[~te].mean(0), x[~te].std(0) + 1e-6
        xtr = np.hstack([(x[~te] - mu) / sd, np.ones((int((~te).sum()), 1))])
        xte = np.hstack([(x[te] - mu) / sd, np.ones((int(te.sum()), 1))])
        reg = 2 * l2 * len(xtr) * np.eye(xtr.shape[1])
        reg[-1, -1] = 0.0  # no penalty on the bias
        w = np.zeros(xtr.shape[1])
        for _ in range(30):
            pr = 1 / (1 + np.exp(-xtr @ w))
            hess = (xtr * (pr * (1 - pr))[:, None]).T @ xtr + reg + 1e-8 * np.eye(len(w))
            w -= np.linalg.solve(hess, xtr.T @ (pr - y[~te]) + reg @ w)
        pred[te] = xte @ w
    return stats.roc_auc(pred, y.astype(bool))


def action_signal(rollouts, span: np.ndarray, ta: int, chunk: int) -> list[list]:
    """How much the run's rollouts' actions and states say about the outcome, per decision point q (0, 1, 3):
    rows [q, episodes, rms of (mean chunk of successes − of failures) in units of each action dim's range, the same
    in units of the dims' spread across episodes, 5-fold AUC of a logistic probe from the executed chunk, and from
    the state at the next decision point]."""
    rows = []
    for q in (0, 1, 3):
        eps = [e for e in rollouts if e.n_steps >= (q + 1) * ta + 1 and len(e.actions) >= q * ta + chunk]
        y = np.array([e.success for e in eps], np.float64)
        acts = np.stack([e.actions[q * ta : q * ta + chunk] / span for e in eps])  # [E, H, A] in range units
        diff = acts[y > 0].mean(0) - acts[y == 0].mean(0)
        spread = acts.std(0) + 1e-9
        ids = np.arange(len(eps))
        flat = acts[:, :ta].reshape(len(eps), -1)
        nxt = np.stack([e.states[(q + 1) * ta] for e in eps])
        rows.append(
            [
                q,
                len(eps),
                f"{np.sqrt(np.mean(diff**2)):.4f}",
                f"{np.sqrt(np.mean((diff / spread) ** 2)):.2f}",
                f"{_ridge_logistic_auc(flat, y, ids):.2f}",
                f"{_ridge_logistic_auc(nxt, y, ids):.2f}",
            ]
        )
    return rows


def branch_contrast(eps: dict, labels: dict, span: np.ndarray, ta: int, chunk: int, k: int) -> tuple[float, float]:
    """Over the labelled groups, in units of each action dim's range: the rms within-group spread of the branch
    point's chunk, and the rms of (mean high chunk − mean low chunk), each chunk centred on its group's mean."""
    centred, high = [], []
    for q, group in _groups(eps, k):
        labs = [labels[e.episode_id] for e in group]
        if not any((lab >= 0).any() for lab in labs):
            continue
        if any(len(e.actions) < q * ta + chunk for e in group):  # a play ended inside the chunk: left out
            continue
        acts = np.stack([e.actions[q * ta : q * ta + chunk] / span for e in group])
        centred.extend(acts - acts.mean(0))
        high.extend(lab[q] for lab in labs)
    if not centred:
        return float("nan"), float("nan")
    x, h = np.stack(centred), np.asarray(high)
    d = x[h == 1].mean(0) - x[h == 0].mean(0) if (h == 1).any() and (h == 0).any() else np.full(x.shape[1:], np.nan)
    return float(np.sqrt(np.mean(x**2))), float(np.sqrt(np.mean(d**2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a study run directory with its collection stage done")
    ap.add_argument("--scenes", type=int, default=256)
    ap.add_argument("--branches", type=int, default=4)
    ap.add_argument("--num-envs", type=int, default=32, help="envs per wave (a multiple of --branches)")
    ap.add_argument("--q", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="decision points to branch at")
    ap.add_argument("--holdout", type=float, default=0.2, help="fraction of scenes whose windows are held out")
    ap.add_argument("--speed", action="store_true", help="also rank successes by episode length (faster = high)")
    ap.add_argument("--temperature", type=float, default=1.0, help="noise scale of the branch point's chunk")
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 2e-3])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/RESULTS.md")
    args = ap.parse_args()

    from benchmarks.token_learnability import EVAL_WINDOWS, track_gaps
    from experiments import common, finetune

    common.setup_jax()
    cfg = common.read_config(args.run)
    load = os.getloadavg()[0]
    k, ta = args.branches, int(cfg.env.replan_every)
    branch_q = scene_plan(cfg.seed, args.scenes, tuple(args.q))
    eps, info = collect_branches(cfg, args.run, branch_q, k, args.num_envs, args.temperature)
    prefix_diff = prefix_difference(eps, k, ta)
    labels, counts = group_labels(eps, k, int(cfg.env.episode_length), args.speed)
    rng = np.random.default_rng(cfg.seed + 23)
    held_scenes = set(rng.permutation(args.scenes)[: round(args.holdout * args.scenes)].tolist())
    held = {eid for eid in eps if eid // k in held_scenes}
    rows = [(eid, int(np.flatnonzero(lab >= 0)[0])) for eid, lab in sorted(labels.items()) if (lab >= 0).any()]
    success = float(np.mean([e.success for e in eps.values()]))
    temp = "" if args.temperature == 1.0 else f", the branch point's chunk sampled at noise scale {args.temperature:g}"
    summary = (
        f"{args.scenes} scenes × {k} branches from `{info['policy']}`{temp} (success {success:.1%} over all plays); "
        f"branch points q ∈ {sorted(set(args.q))}; plays of a scene agree up to their branch point to "
        f"{prefix_diff:.1e} (max |state difference|). Groups whose plays disagree on success: "
        f"{counts['mixed_success']}/{counts['groups']} ({counts['mixed_success'] / counts['groups']:.1%}); labelled "
        f"groups {counts['labelled_groups']} ({counts['high']} high, {counts['low']} low windows"
        f"{', successes ranked by length' if args.speed else ''}). By branch point q: "
        + ", ".join(f"q={q}: {m}/{g}" for q, (g, m) in sorted(counts.get("by_q", {}).items()))
        + "."
    )
    print(summary, flush=True)
    from recap_jax.data import EpisodeStore

    params0 = finetune.init_params(cfg, args.run, "recap")
    span = np.asarray(params0.norm.action_max - params0.norm.action_min, np.float64)
    rollouts = [e for e in EpisodeStore(args.run / "rollouts").iter_episodes() if e.tags.get("kind") == "rollout"]
    signal = action_signal(rollouts, span, ta, params0.config.chunk)
    print(markdown_table(SIGNAL_HEADER, signal), flush=True)
    spread, high_low = branch_contrast(eps, labels, span, ta, params0.config.chunk, k)
    contrast = (
        f" At the branch points, the chunks of a group spread by {spread:.4f} of each action's range (rms within "
        f"groups) and the high chunks differ from the low ones by {high_low:.4f} (rms of the mean difference)."
    )
    print(contrast, flush=True)
    summary += contrast
    table = []
    if rows:
        for lr in args.lrs:
            for r in track_gaps(cfg, params0, eps, labels, rows, held, lr, args.steps, args.eval_every, name="branch"):
                table.append(
                    [
                        f"{lr:.0e}",
                        r["step"],
                        "–" if r["train_loss"] is None else f"{r['train_loss']:.4f}",
                        f"{r['held_out_swapped_minus_true']:+.2e} ± {r['held_out_swapped_minus_true_se']:.1e}",
                        f"{r['in_sample_swapped_minus_true']:+.2e} ± {r['in_sample_swapped_minus_true_se']:.1e}",
                        r["windows"],
                        f"{r['seconds']:.0f}",
                    ]
                )
    body = (
        f"Machine: {machine_description()}; load average {load:.1f} at the start.\n\n"
        f"Run `{args.run}` (preset `{cfg.name}`, seed {cfg.seed}). {summary} Collection took {info['seconds']:.0f} s "
        f"(0 when reused). Gap = loss with the swapped label − with the true label (± paired SE) on up to "
        f"{EVAL_WINDOWS} windows of the {len(held_scenes)} held-out scenes and of the training scenes, fine-tuning "
        f"from the same SFT checkpoint with the preset's optimiser at batch {cfg.finetune.batch_size}.\n\n"
        + f"What the run's own {len(rollouts)} rollouts say about the outcome, by decision point q (probes: "
        "L2-logistic, 5-fold, held-out AUC; the positive control of `token_learnability` moves every action dim by "
        "0.2 of its range between its two labels):\n\n"
        + markdown_table(SIGNAL_HEADER, signal)
        + "\n\nBranched labels, label-swap gap while fine-tuning:\n\n"
        + (
            markdown_table(["lr", "step", "train loss", "held-out gap", "in-sample gap", "train windows", "s"], table)
            if table
            else "No group's plays disagreed: nothing to label."
        )
    )
    if not args.no_write:
        write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
