"""Credit assignment by the value function (issue 22): out-of-fold metrics and baselines per backbone.

For one mixed-outcome collection, the study's value recipe (``glue.value_config`` of a preset: Eq. (1) over
599, the episode clock, k-fold ``value_training.cross_fit`` with out-of-fold V̂, at least ``min_steps`` Adam
steps per fold) with three backbones — the small CNN trained end to end, the frozen System-2 encoder of an SFT
checkpoint, and the state alone (a constant image feature) — and, as ablations, the CNN without the clock
and the CNN on two-hot targets. Reports step MSE against the naive and the clock-only baselines fit on the
same training folds, step AUC, the within-decision-index step AUC the clock cannot raise, episode AUC,
whether the goal of issue 22 is met, and the training time. Writes the ``value_credit`` section of
``benchmarks/RESULTS.md``.

    python -m benchmarks.value_credit --out runs/value_credit --episodes 96 [--sft-run runs/smoke_sft]

Data (``OUT/store``, reused and completed when present): the noised scripted expert (noise 0.5 succeeds
~48 %, benchmarks RESULTS ``expert_success``) in the smoke preset's env, recorded as the study records rollouts
(``benchmarks.value_backbones.make_store``). ``--run DIR`` uses a study run's rollouts instead (and its SFT
checkpoint for System-2 unless ``--sft-run`` is given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

from recap_jax import _platform

_platform.apply_xla_flags()

import numpy as np  # noqa: E402

from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402

VARIANTS = ("cnn", "system2", "state_only", "cnn_no_clock", "cnn_two_hot")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_data(args):
    """(episodes, description, SFT run for System-2 or None)."""
    from benchmarks import value_backbones as vb

    if args.run is not None:
        from recap_jax.data import EpisodeStore

        eps = [e for e in EpisodeStore(args.run / "rollouts").iter_episodes() if e.tags.get("kind") == "rollout"]
        return eps, f"the rollouts of study run `{args.run}`", args.sft_run or args.run
    batches = [(args.noise, args.episodes)]
    vb.make_store(args.out, batches, args.seed)
    eps = vb.load_episodes(args.out, batches)
    desc = (
        f"the noised scripted expert (noise {args.noise}) in the smoke preset's env (216 control steps, 48×80 "
        f"camera, Ta = 24), recorded as the study records rollouts. {vb.store_note(args.out)}"
    )
    return eps, desc, args.sft_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/value_credit"))
    p.add_argument("--run", type=Path, default=None, help="a study run dir whose rollouts to use")
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--episodes", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-run", type=Path, default=None, help="study run with an SFT checkpoint (System-2)")
    p.add_argument("--preset", default="cpu_long", help="whose value settings to use")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--min-steps", type=int, default=None, help="override the preset's value_training.min_steps")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--note", default=None, help="a Markdown file appended to the section (the reading)")
    args = p.parse_args()
    _platform.enable_compilation_cache()
    args.out.mkdir(parents=True, exist_ok=True)

    from experiments import glue
    from experiments.presets import get_preset, override
    from recap_jax import value_training as vt

    eps, desc, sft_run = load_data(args)
    cfg = get_preset(args.preset)
    if args.min_steps is not None:
        cfg = override(cfg, **{"value_training.min_steps": args.min_steps})
    base_cfg = glue.value_config(cfg)
    data = vt.stage_data(eps, dataclasses.replace(base_cfg, backbone="cnn"))
    succ = np.array([e.success for e in eps])
    print(f"{len(eps)} episodes, {succ.sum()} successes, {len(data)} decision points", flush=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    key = f"{len(eps)}_{args.preset}_{base_cfg.min_steps}"
    results = results if results.get("key") == key else {"key": key, "rows": {}}
    sources = {}
    for name in args.variants:
        vcfg, d = base_cfg, data
        if name == "cnn_no_clock":
            vcfg = dataclasses.replace(base_cfg, clock_steps=0)
            sources[name] = "the CNN without the episode clock"
        elif name == "cnn_two_hot":
            vcfg = dataclasses.replace(base_cfg, target="two_hot")
            sources[name] = "the CNN trained on two-hot targets"
        elif name == "cnn":
            sources[name] = f"SmallCNN{tuple(base_cfg.cnn_channels)} trained end to end"
        elif name == "state_only":
            vcfg = dataclasses.replace(base_cfg, backbone="state")
            d = data.with_inputs(vt.state_only_features(data.inputs))
            sources[name] = "a constant image feature: the 32-d state (and the clock) only"
        else:
            if sft_run is None:
                print("system2: no --sft-run, skipped", flush=True)
                continue
            from benchmarks.value_backbones import sft_encoder

            params, step, scfg = sft_encoder(sft_run, "collect")
            vcfg = dataclasses.replace(base_cfg, backbone="system2")
            d = data.with_inputs(vt.system2_features(params, data.inputs, glue.INSTRUCTION).astype(np.float32))
            sources[name] = (
                f"the frozen System-2 encoder of `{sft_run}/sft` @ step {step} ({scfg.sft.steps} SFT steps on "
                f"{scfg.demos.num_demos} demos), pooled tokens, {d.inputs.shape[1]}-d"
            )
        if name in results["rows"]:
            continue
        t0, c0 = time.perf_counter(), _cpu_seconds()
        cf = vt.cross_fit(d, vcfg, log=lambda r, n=name: print(n, r, flush=True) if r["epoch"] % 10 == 0 else None)
        m = cf.metrics
        results["rows"][name] = {
            **{k: m[k] for k in ("mse", "naive_mse", "clock_only_mse", "step_auc", "within_bin_step_auc")},
            **{k: m[k] for k in ("episode_auc", "clock_only_step_auc", "train_steps", "epochs", "folds", "goal")},
            "best_epochs": m["best_epochs"],
            "wall_s": time.perf_counter() - t0,
            "cpu_s": _cpu_seconds() - c0,
        }
        results_path.write_text(json.dumps(results, indent=1, default=float))
        print(name, json.dumps(results["rows"][name], default=float), flush=True)

    def f(x, n=3):
        return "n/a" if x is None or not np.isfinite(x) else f"{x:.{n}f}"

    rows = []
    for name, r in results["rows"].items():
        g = r["goal"]
        rows.append(
            [
                name,
                f(r["mse"], 4),
                f(r["naive_mse"], 4),
                f(r["clock_only_mse"], 4),
                f(r["mse"] / r["clock_only_mse"], 2),
                f(r["step_auc"]),
                f(r["within_bin_step_auc"]),
                f(r["episode_auc"]),
                f(r["clock_only_step_auc"]),
                "yes" if g["met"] else "no (" + ", ".join(k for k, v in g.items() if k != "met" and v is False) + ")",
                f"{r['folds']} × {r['train_steps']}",
                f"{r['wall_s']:.0f} / {r['cpu_s']:.0f}",
            ]
        )
    body = "\n".join(
        [
            f"Machine: {machine_description()} (2-core CPU, loaded by parallel work).",
            "",
            f"**Data**: {len(eps)} episodes, {int(succ.sum())} successes ({succ.mean():.0%}), {len(data)} decision "
            f"points: {desc}",
            "",
            f"**Recipe**: the `{args.preset}` preset's value settings (`glue.value_config`): returns "
            f"{base_cfg.returns!r} normalised by {base_cfg.max_steps} − 1, bins on [{base_cfg.v_min}, "
            f"{base_cfg.v_max}], target {base_cfg.target!r}, batch {base_cfg.batch_size}, Adam "
            f"{base_cfg.learning_rate}, {base_cfg.folds}-fold `cross_fit` (out-of-fold V̂; each fold keeps the epoch "
            f"with the lowest pooled held-out MSE of the other folds), ≥ {base_cfg.min_steps} Adam steps per fold. "
            "Baselines fit on the same training folds: naive = mean return, clock-only = mean return per decision "
            "index. Backbones: " + "; ".join(f"`{k}` = {v}" for k, v in sources.items()) + ".",
            "",
            markdown_table(
                [
                    "backbone",
                    "step MSE",
                    "naive MSE",
                    "clock-only MSE",
                    "MSE / clock-only",
                    "step AUC",
                    "within-bin step AUC",
                    "episode AUC",
                    "clock-only step AUC",
                    "goal met",
                    "folds × steps",
                    "wall / CPU s",
                ],
                rows,
            ),
            "",
            "Goal (issue 22): step MSE ≤ 0.9 × clock-only and ≤ 0.6 × naive, step AUC ≥ 0.75, within-bin step AUC ≥ "
            f"0.65, on ≥ {vt.GOAL_EPISODES} rollouts ('episodes' fails below that size).",
            *([] if args.note is None else ["", Path(args.note).read_text().strip()]),
        ]
    )
    (args.out / "summary.md").write_text(body + "\n")
    print(body, flush=True)
    if not args.no_write:
        write_section("value_credit", body)


if __name__ == "__main__":
    main()
