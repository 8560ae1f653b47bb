"""Value-function backbones on a mixed-outcome rollout set: frozen System-2 encoder vs a small CNN.

Issue #7's open item: "Feature backbones: (a) the SFT policy's System-2 encoder, frozen; (b) a small CNN
trained end to end. Report which works best here, by episode AUC." Writes the ``value_backbones``
section of ``benchmarks/RESULTS.md``. Run from the repository root:

    python -m benchmarks.value_backbones --out runs/value_backbones [--seeds 0 1 2] [--folds 5] \
        [--epochs 30 60] [--variants system2 cnn] [--report-only]

The committed section: the defaults at 30 epochs (seeds 0-2), then ``--epochs 60 --seeds 0 1 --variants
system2 state_only cnn``, then ``--report-only --epochs 30 60`` (about 1 h on the shared 2-core CPU, nearly
all of it the CNN's training).

1. Data (reused when ``OUT/store`` already holds the requested episodes): the noised scripted expert
   (``envs.g1.expert.noisy_config``) at two noise levels, rolled out in the smoke preset's env
   (randomisation level 0, 216 control steps, 48×80 camera, Ta = 24) and recorded exactly as the study
   records its demos and rollouts (``experiments.sft._expert`` + ``recap_jax.rollout.collect``: states,
   actions, images at the decision points, success, n_steps), 8 envs per wave (the smoke preset's
   compiled expert wave). Level 0.5 succeeds ~58 % and level 0.75 ~15 % (benchmarks RESULTS
   ``expert_success``), so both outcomes are well represented.
2. System-2 encoder: the smoke study's SFT checkpoint (``--sft-run``, default ``runs/smoke_fix``) at the
   collection step its ``collect`` stage recorded, loaded as ``experiments.train_value`` loads it; features
   are the masked-mean-pooled encoder tokens (``value_training.system2_features``) for the bare instruction.
3. Training: ``value_training.train_value`` with the same config for both backbones except ``backbone``
   (same epochs, batch, Adam 3e-4, the episode-level stratified split with seed 42, one run per seed), then
   the held-out metrics (``evaluate_value``); plus ``--folds``-fold cross-validated metrics
   (``value_training.cross_validated_metrics``: every episode predicted by a model that never saw it), whose
   episode AUC rests on all episodes instead of the ~10 % held out. Variants besides (a) ``system2`` and
   (b) ``cnn``: ``system2_final`` (the last SFT checkpoint), ``cnn_wide`` (the gpu preset's CNN widths) and
   ``state_only`` (a constant image feature: what the 32-d state alone gives). Results are kept per
   setting in ``OUT/results_e{epochs}_b{batch}_f{folds}.json`` (a rerun trains only what is missing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recap_jax import _platform

_platform.apply_xla_flags()

import numpy as np  # noqa: E402

from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402

METRICS = ("episode_auc", "step_auc", "mse", "naive_mse", "kendall_tau", "kendall_p")
ID_STRIDE = 10_000  # episode ids of noise batch k start at k * ID_STRIDE


def study_config(noise: float, seed: int):
    """The smoke preset with the demos' expert noise set (env, Ta and image size are the smoke preset's)."""
    from experiments.presets import SMOKE, override

    return override(SMOKE, seed=seed, **{"demos.expert_noise": noise, "demos.num_envs": 8})


def make_store(out: Path, batches: list[tuple[float, int]], seed: int) -> dict:
    """Collects (or completes) the mixed-outcome store ``out/store``: ``batches`` = [(noise level, episodes)]."""
    from experiments import glue, sft
    from recap_jax import rollout
    from recap_jax.data import EpisodeStore

    store = EpisodeStore(out / "store", create=True)
    summary = []
    for k, (noise, n) in enumerate(batches):
        cfg = study_config(noise, seed + k)
        env = glue.make_env(cfg)
        act, params = sft._expert(cfg)
        t0 = time.time()
        stats = rollout.collect(
            env,
            act,
            params,
            store,
            n,
            prompt=glue.INSTRUCTION,
            seed=cfg.seed,
            first_id=k * ID_STRIDE,
            num_envs=cfg.demos.num_envs,
            ta=cfg.env.replan_every,
            tags={"kind": "rollout", "policy": f"expert(noise={noise})", "iteration": 0},
        )
        summary.append({"noise": noise, "episodes": n, "seconds": time.time() - t0, **stats})
        print(f"noise {noise}: {stats}", flush=True)
        if stats["collected"]:
            # The env and expert code the episodes came from (a later env change makes a fresh store differ).
            prov = out / "store_provenance.json"
            rows = json.loads(prov.read_text()) if prov.exists() else []
            rows.append({"noise": noise, "collected": stats["collected"], "git_commit": git_commit(), "utc": utc()})
            prov.write_text(json.dumps(rows, indent=1))
    return {"batches": summary}


def git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def store_note(out: Path) -> str:
    """Where the store's episodes came from (``store_provenance.json``), as a sentence."""
    prov = out / "store_provenance.json"
    if not prov.exists():
        return "Collection commit not recorded."
    rows = json.loads(prov.read_text())
    commits = sorted({r["git_commit"] for r in rows})
    when = sorted({r["utc"] for r in rows})
    note = f"Collected at commit {', '.join(commits)} ({when[0]}"
    note += f" – {when[-1]})." if len(when) > 1 else ")."
    return note + " " + " ".join(r.get("note", "") for r in rows if r.get("note")).strip()


def load_episodes(out: Path, batches: list[tuple[float, int]]) -> list:
    from recap_jax.data import EpisodeStore

    want = {k * ID_STRIDE + i for k, (_, n) in enumerate(batches) for i in range(n)}
    store = EpisodeStore(out / "store")
    eps = [e for e in store.iter_episodes() if e.episode_id in want]
    if {e.episode_id for e in eps} != want:
        raise RuntimeError(f"{out / 'store'} lacks {len(want) - len(eps)} of the requested episodes")
    return sorted(eps, key=lambda e: e.episode_id)


# Backbone variants: (ValueTrainConfig.backbone, extra settings).
VARIANTS = {
    "system2": ("system2", {"sft_step": "collect"}),  # the SFT checkpoint the study collects with
    "system2_final": ("system2", {"sft_step": "final"}),  # the last SFT checkpoint
    "cnn": ("cnn", {"cnn_channels": (8, 16)}),  # the smoke preset's value CNN
    "cnn_wide": ("cnn", {"cnn_channels": (32, 64, 128, 128)}),  # the gpu preset's value CNN
    "state_only": ("features", {}),  # control: a constant image feature, so V̂ sees the 32-d state only
}


def sft_encoder(run: Path, which: str):
    """(policy params, step) of the SFT checkpoint of study ``run`` (``which``: "collect" or "final"),
    loaded as ``experiments.train_value`` loads the System-2 encoder."""
    from experiments import collect, common, glue
    from recap_jax import train as T

    cfg = common.load_or_init_config(run, None)
    if which == "collect":
        step = collect.checkpoint_step(run)
    else:
        step = max(T.Checkpointer(run / "sft").all_steps())
    return glue.load_policy(run / "sft", glue.policy_config(cfg), step), int(step), cfg


def auc_by_decision(values: dict[int, np.ndarray], success: dict[int, bool]) -> list[tuple[int, int, float]]:
    """[(decision index q, episodes with a decision q, AUC of V̂(o_q) vs success)]."""
    from recap_jax import stats

    out = []
    for q in range(max(len(v) for v in values.values())):
        ids = [i for i, v in values.items() if len(v) > q]
        y = np.array([success[i] for i in ids])
        v = np.array([values[i][q] for i in ids])
        auc = stats.roc_auc(v, y) if 0 < y.sum() < y.size else float("nan")
        out.append((q, len(ids), float(auc)))
    return out


def null_auc_sd(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the AUC of an uninformative score (Mann-Whitney U under H0, no ties)."""
    if n_pos < 1 or n_neg < 1:
        return float("nan")
    return float(np.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg)))


def auc_verdict(aucs: dict[str, float], null_sd: float) -> str:
    """Which backbone is better by episode AUC, or that none is distinguishable from chance / from another."""
    above = {k: v for k, v in aucs.items() if v - 0.5 > 2 * null_sd}
    if not above:
        return (
            "No backbone's episode AUC differs from chance by 2 sd, so by episode AUC neither (a) nor (b) is better "
            "here: the data cannot rank them."
        )
    ranked = sorted(aucs.items(), key=lambda kv: -kv[1])
    (best, a), (second, b) = ranked[0], ranked[1] if len(ranked) > 1 else (None, float("nan"))
    if second is not None and a - b <= 2 * null_sd:
        return f"`{best}` leads `{second}` by {a - b:.3f}, within 2 sd of the chance spread: a tie."
    return f"`{best}` is better by episode AUC ({a:.3f} vs {b:.3f})."


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def mean_sd(xs: list[float], digits: int = 3) -> str:
    xs = np.asarray([x for x in xs if x is not None and np.isfinite(x)], np.float64)
    if xs.size == 0:
        return "n/a"
    if xs.size == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{xs.mean():.{digits}f} ± {xs.std(ddof=1):.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/value_backbones"))
    p.add_argument("--noise", type=float, nargs="+", default=[0.5, 0.75], help="expert noise level per batch")
    p.add_argument("--episodes", type=int, nargs="+", default=[48, 24], help="episodes per noise batch")
    p.add_argument("--seed", type=int, default=0, help="collection seed (batch k uses seed + k)")
    p.add_argument("--collect-only", action="store_true")
    p.add_argument("--sft-run", type=Path, default=Path("runs/smoke_fix"), help="smoke study with the SFT run")
    p.add_argument(
        "--variants", nargs="+", default=["system2", "system2_final", "cnn", "state_only"], choices=sorted(VARIANTS)
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="value-training seeds (init, shuffle)")
    p.add_argument("--epochs", type=int, nargs="+", default=[30], help="one setting per entry (first: primary)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (0: none)")
    p.add_argument("--section", default="value_backbones")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--report-only", action="store_true", help="report the saved results, train nothing")
    args = p.parse_args()
    _platform.enable_compilation_cache()
    if len(args.noise) != len(args.episodes):
        p.error("--noise and --episodes need one entry per batch")
    batches = list(zip(args.noise, args.episodes))
    args.out.mkdir(parents=True, exist_ok=True)
    info = make_store(args.out, batches, args.seed)
    eps = load_episodes(args.out, batches)
    succ = np.array([e.success for e in eps])
    print(f"{len(eps)} episodes, {succ.sum()} successes ({succ.mean():.1%})", flush=True)
    (args.out / "collect.json").write_text(json.dumps(info, indent=1, default=str))
    if args.collect_only:
        return

    from experiments import glue
    from recap_jax import value_training as vt

    env_cfg = study_config(args.noise[0], args.seed).env
    base = vt.decision_points(eps, max_steps=env_cfg.episode_length)
    ids, ep_succ = base.episodes()
    success = dict(zip(ids.tolist(), ep_succ.tolist()))
    per_batch = []
    for k, (noise, _) in enumerate(batches):
        sel = [e for e in eps if e.episode_id // ID_STRIDE == k]
        ok = [e for e in sel if e.success]
        per_batch.append((noise, len(sel), len(ok), np.mean([e.n_steps for e in ok]) if ok else float("nan")))
    _, split_va = vt.stratified_split(ids, ep_succ, 0.1, 42)

    inputs, sources = {}, {}
    for name in args.variants:
        backbone, extra = VARIANTS[name]
        if backbone == "cnn":
            inputs[name] = base.inputs
            sources[name] = f"SmallCNN{tuple(extra['cnn_channels'])} trained end to end on the uint8 images"
            continue
        if backbone == "features":
            inputs[name] = np.zeros((len(base), 1), np.float32)
            sources[name] = "no image (a constant 1-d feature): the 32-d state alone, a control"
            continue
        t0 = time.time()
        policy_params, step, scfg = sft_encoder(args.sft_run, extra["sft_step"])
        if tuple(scfg.env.image_size) != tuple(env_cfg.image_size):
            raise SystemExit(
                f"{args.sft_run} was trained on {scfg.env.image_size} images, the data is {env_cfg.image_size}"
            )
        feats = vt.system2_features(policy_params, base.inputs, glue.INSTRUCTION)
        inputs[name] = feats.astype(np.float32)
        sources[name] = (
            f"frozen System-2 encoder of `{args.sft_run}/sft` @ step {step} "
            f"(`{scfg.policy}`; {scfg.sft.steps} SFT steps on {scfg.demos.num_demos} clean demos), "
            f"pooled tokens, {feats.shape[1]}-d ({time.time() - t0:.0f} s)"
        )
        print(f"{name}: features {feats.shape}", flush=True)

    blocks, primary = [], None
    for epochs in args.epochs:
        results = train_all(args, epochs, base, inputs, success, env_cfg)
        block = report_block(args, epochs, results, split_va, success, len(eps), int(succ.sum()))
        if block is None:
            continue
        blocks.append(block)
        primary = primary or block
    if primary is None:
        raise SystemExit("no results to report")
    lines = [
        f"Machine: {machine_description()} (2 cores shared with other jobs).",
        "",
        "**Data** (`OUT/store`, reused when present): the noised scripted expert (`envs.g1.expert.noisy_config`) "
        f"in the smoke preset's env (randomisation level 0, {env_cfg.episode_length} control steps, "
        f"{env_cfg.image_size[0]}×{env_cfg.image_size[1]} camera, Ta = {env_cfg.replan_every}), recorded with the "
        "study's own recorder (`experiments.sft._expert` + `recap_jax.rollout.collect`, 8 envs per wave): "
        + "; ".join(f"noise {nz}: {ok}/{n} successes (mean {st:.0f} steps to success)" for nz, n, ok, st in per_batch)
        + f". In all {len(eps)} episodes, {int(succ.sum())} successes ({succ.mean():.0%}), {len(base)} decision "
        "points. Returns: Eq. (1) (time to completion, failures −1). " + store_note(args.out),
        "",
        "**Backbones**: " + "; ".join(f"`{k}` = {v}" for k, v in sources.items()) + ". Same head (the paper's "
        f"3-layer MLP on features ⊕ 32-d state), batch {args.batch_size}, Adam 3e-4, the best-validation-CE epoch "
        "kept, the same episode-level stratified split (seed 42) and folds for every backbone; training seeds vary "
        "initialisation and shuffling.",
    ]
    for block in blocks:
        lines += ["", *block["lines"]]
    lines += ["", *primary["verdict"]]
    for block in blocks[1:]:
        lines += ["", block["short_verdict"]]
    body = "\n".join(lines)
    (args.out / "summary.md").write_text(body + "\n")
    print(body, flush=True)
    if not args.no_write:
        write_section(args.section, body)


def results_file(args, epochs: int) -> Path:
    return args.out / f"results_e{epochs}_b{args.batch_size}_f{args.folds}.json"


def train_all(args, epochs: int, base, inputs: dict, success: dict, env_cfg) -> dict:
    """Trains (unless ``--report-only``) every variant × seed not yet in the results file; returns the results."""
    from recap_jax import value_training as vt

    results_path = results_file(args, epochs)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    settings = {"epochs": epochs, "batch_size": args.batch_size, "folds": args.folds, "n": len(success)}
    if results.get("settings") != settings:
        results = {"settings": settings, "runs": {}}
    if args.report_only:
        return results
    for name in args.variants:
        backbone, extra = VARIANTS[name]
        data = base.with_inputs(inputs[name])
        for seed in args.seeds:
            key = f"{name}/{seed}"
            if key in results["runs"]:
                print(f"{key} ({epochs} epochs): done earlier", flush=True)
                continue
            cfg = vt.ValueTrainConfig(
                backbone=backbone,
                epochs=epochs,
                batch_size=args.batch_size,
                learning_rate=3e-4,
                val_fraction=0.1,
                split_seed=42,
                max_steps=env_cfg.episode_length,
                cnn_channels=tuple(extra.get("cnn_channels", (32, 64, 128, 128))),
                seed=seed,
            )
            t0 = time.time()
            res = vt.train_value(data, cfg)
            held = vt.evaluate_value(res, data)
            held["best_epoch"] = res.best_epoch
            row = {"held_out": held, "train_seconds": time.time() - t0}
            if args.folds:
                t0 = time.time()
                cv, values, _ = vt.cross_validated_metrics(data, cfg, args.folds)
                cv["auc_by_decision"] = auc_by_decision(values, success)
                row["cv"], row["cv_seconds"] = cv, time.time() - t0
            results["runs"][key] = row
            results_path.write_text(json.dumps(results, indent=1, default=float))
            print(f"{key} ({epochs} epochs): held-out {held}\n  cv {row.get('cv')}", flush=True)
    return results


def report_block(args, epochs: int, results: dict, split_va, success: dict, n_eps: int, n_succ: int) -> dict | None:
    """Markdown tables of one training setting (``epochs``) and its verdict lines; None without results."""
    held_rows, cv_rows, q_rows = [], [], []
    held_vals, cv_vals, secondary = {}, {}, {}
    for name in args.variants:
        runs = [(s, results["runs"][f"{name}/{s}"]) for s in args.seeds if f"{name}/{s}" in results["runs"]]
        if not runs:
            continue
        for s, r in runs:
            h = r["held_out"]
            held_rows.append(
                [
                    name,
                    s,
                    fmt(h["episode_auc"]),
                    fmt(h["step_auc"]),
                    fmt(h["mse"], 4),
                    fmt(h["naive_mse"], 4),
                    fmt(h["kendall_tau"]),
                    fmt(h["kendall_p"]),
                    h["best_epoch"],
                    f"{r['train_seconds']:.0f}",
                ]
            )

        def col(part, k, runs=runs):
            return [r[part][k] for _, r in runs if part in r]

        held_rows.append(
            [
                f"**{name}** mean ± sd",
                f"{len(runs)} seeds",
                mean_sd(col("held_out", "episode_auc")),
                mean_sd(col("held_out", "step_auc")),
                mean_sd(col("held_out", "mse"), 4),
                mean_sd(col("held_out", "naive_mse"), 4),
                mean_sd(col("held_out", "kendall_tau")),
                mean_sd(col("held_out", "kendall_p")),
                "",
                "",
            ]
        )
        held_vals[name] = float(np.nanmean(col("held_out", "episode_auc")))
        if args.folds and all("cv" in r for _, r in runs):
            cv_vals[name] = float(np.nanmean(col("cv", "episode_auc")))
            secondary[name] = {
                "mse": float(np.mean(col("cv", "mse"))),
                "naive_mse": float(np.mean(col("cv", "naive_mse"))),
                "step_auc": float(np.mean(col("cv", "step_auc"))),
                "late_auc": float(
                    np.nanmean([[a for q, _, a in r["cv"]["auc_by_decision"] if q >= 4] for _, r in runs])
                ),
            }
            cv_rows.append(
                [
                    name,
                    len(runs),
                    mean_sd(col("cv", "episode_auc")),
                    mean_sd(col("cv", "fold_episode_auc")),
                    mean_sd(col("cv", "step_auc")),
                    mean_sd(col("cv", "mse"), 4),
                    mean_sd(col("cv", "naive_mse"), 4),
                    mean_sd(col("cv", "kendall_tau")),
                    mean_sd(col("cv", "kendall_p")),
                ]
            )
            qs = [r["cv"]["auc_by_decision"] for _, r in runs]
            q_rows.append([name] + [mean_sd([q[i][2] for q in qs], 2) for i in range(len(qs[0]))])
    if not held_rows:
        return None
    n_q = max((len(r) - 1 for r in q_rows), default=0)
    n_va = len(split_va)
    n_va_succ = int(sum(success[int(i)] for i in split_va))
    lines = [
        f"### {epochs} epochs — held-out split (episode-level, stratified, seed 42: {n_va} episodes, "
        f"{n_va_succ} successes)",
        "",
        markdown_table(
            [
                "backbone",
                "seed",
                "episode AUC",
                "step AUC",
                "step MSE",
                "naive MSE",
                "Kendall τ",
                "τ p",
                "best epoch",
                "train s",
            ],
            held_rows,
        ),
    ]
    if cv_rows:
        lines += [
            "",
            f"### {epochs} epochs — {args.folds}-fold cross-validation (outcome-stratified folds, seed 42; every "
            "episode predicted by a model that never saw it; `value_training.cross_validated_metrics`), mean ± sd "
            "over seeds",
            "",
            markdown_table(
                [
                    "backbone",
                    "seeds",
                    "episode AUC (pooled)",
                    "episode AUC (per-fold mean)",
                    "step AUC",
                    "step MSE",
                    "naive MSE",
                    "Kendall τ",
                    "τ p",
                ],
                cv_rows,
            ),
            "",
            "Out-of-fold AUC of V̂(o_q) vs success at each decision point q (control step 24·q), mean ± sd over seeds:",
            "",
            markdown_table(["backbone"] + [f"q={q}" for q in range(n_q)], q_rows),
        ]
    null_held = null_auc_sd(n_va_succ, n_va - n_va_succ)
    null_cv = null_auc_sd(n_succ, n_eps - n_succ)
    text = (
        f"**Conclusion ({epochs} epochs).** Episode AUC = AUC of V̂(o_0) vs success. Held-out split (mean over "
        "seeds): "
        + ", ".join(f"`{k}` {v:.3f}" for k, v in held_vals.items())
        + f"; with {n_va} held-out episodes one pair is 1/{max(n_va_succ * (n_va - n_va_succ), 1)} of AUC and a "
        f"chance-level AUC has sd {null_held:.2f} (and all seeds share these episodes, so their spread is training "
        "noise, not sampling noise): this number cannot rank the backbones."
    )
    short = f"At {epochs} epochs, held-out episode AUC " + ", ".join(f"`{k}` {v:.3f}" for k, v in held_vals.items())
    if cv_vals:
        cv_text = (
            f"Cross-validated over all {n_eps} episodes: "
            + ", ".join(f"`{k}` {v:.3f}" for k, v in cv_vals.items())
            + f" (chance level 0.5 ± {null_cv:.3f} sd). "
            + auc_verdict(cv_vals, null_cv)
        )
        text += " " + cv_text
        short += "; " + cv_text[0].lower() + cv_text[1:]
    else:
        short += "."
    verdict = [text]
    if secondary:
        verdict += [
            "",
            "Secondary (cross-validated, mean over seeds): "
            + "; ".join(
                f"`{k}` step MSE {v['mse']:.4f} (naive {v['naive_mse']:.4f}), step AUC {v['step_auc']:.3f}, "
                f"mean AUC of V̂(o_q) over q ≥ 4 {v['late_auc']:.3f}"
                for k, v in secondary.items()
            )
            + ". o_0 barely reveals the outcome (the noised expert's per-episode grasp offset is a pseudo-random hash "
            "of the initial box pose, not learnable from these few episodes; the joint-target noise is drawn every "
            "step; the noise level is not observable), so V̂(o_0) has little to go on here; later decision points "
            "(reach, grasp, lift) carry the signal.",
        ]
        ctrl = secondary.get("state_only")
        if ctrl is not None and len(secondary) > 1:
            verdict[-1] += (
                " Against the `state_only` control (the same head without an image): "
                + "; ".join(
                    f"`{k}` step MSE {v['mse'] - ctrl['mse']:+.4f}, step AUC {v['step_auc'] - ctrl['step_auc']:+.3f}, "
                    f"late AUC {v['late_auc'] - ctrl['late_auc']:+.3f}"
                    for k, v in secondary.items()
                    if k != "state_only"
                )
                + " (negative MSE and positive AUC differences would mean the image adds information)."
            )
        short += (
            " Secondary: "
            + "; ".join(f"`{k}` step MSE {v['mse']:.4f}, step AUC {v['step_auc']:.3f}" for k, v in secondary.items())
            + "."
        )
    return {"lines": lines, "verdict": verdict, "short_verdict": short}


if __name__ == "__main__":
    main()
