"""Scripted-expert success on G1BendPick-v0 (MJX): per randomisation level, and versus the noise knob.

Writes the ``expert_success`` section of ``benchmarks/RESULTS.md``. Run from the repository root:

    python -m benchmarks.expert_success --episodes 200 --batch 50 --levels 0 1 2 --noise 0.25 0.5 1.0

Each randomisation level is one compile of ``envs.g1.expert.rollout_stats`` (the expert config is traced,
so the noise sweep at level 0 reuses the level-0 compile). Episodes run until success, fall or the env's
600-step limit; a batch stops early once all its envs are done.
"""

from __future__ import annotations

import argparse
import time

from recap_jax import _platform

_platform.apply_xla_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402
from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402
from envs.g1 import expert as E  # noqa: E402
from envs.g1.bendpick import describe_physics  # noqa: E402


def run(env, fn, params: E.ExpertConfig, episodes: int, batch: int, seed: int) -> dict:
    """Runs ``episodes`` episodes in batches; returns success rate, mean steps to success, falls, wall time."""
    out = {"success": [], "steps": [], "fell": []}
    t0 = time.time()
    for b in range(-(-episodes // batch)):
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), b), batch)
        res = jax.device_get(fn(params, keys))
        for k in out:
            out[k].append(np.asarray(res[k]))
    res = {k: np.concatenate(v)[:episodes] for k, v in out.items()}
    ok = res["success"]
    return {
        "episodes": episodes,
        "success": float(ok.mean()),
        "steps": float(res["steps"][ok].mean()) if ok.any() else float("nan"),
        "fell": float(res["fell"].mean()),
        "seconds": time.time() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--level-episodes", type=int, default=None, help="episodes at levels > 0 (default: --episodes)")
    p.add_argument("--noise", type=float, nargs="*", default=[0.25, 0.5, 1.0])
    p.add_argument("--noise-episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="cap on control steps (default: episode limit)")
    p.add_argument("--section", default="expert_success")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    _platform.enable_compilation_cache()

    clean = E.default_config()
    level_rows, noise_rows = [], []
    for level in args.levels:
        env = envs.make("G1BendPick-v0", randomization_level=level)
        fn = jax.jit(lambda params, keys, env=env: E.rollout_stats(env, params, keys, max_steps=args.max_steps))
        n = args.episodes if level == 0 or args.level_episodes is None else args.level_episodes
        r = run(env, fn, clean, n, min(args.batch, n), args.seed + 1000 * level)
        print(f"level {level}: {r}", flush=True)
        level_rows.append([level, r["episodes"], f"{r['success']:.3f}", f"{r['steps']:.1f}", f"{r['fell']:.3f}"])
        if level == 0:
            for noise in args.noise:
                rn = run(env, fn, E.noisy_config(noise), args.noise_episodes, min(args.batch, args.noise_episodes), 7)
                print(f"noise {noise}: {rn}", flush=True)
                noise_rows.append(
                    [noise, rn["episodes"], f"{rn['success']:.3f}", f"{rn['steps']:.1f}", f"{rn['fell']:.3f}"]
                )
    if args.no_write:
        return
    cfg = E.default_config()
    parts = [
        f"Machine: {machine_description()}. Physics: the env's default, {describe_physics(env.mj_model)}. "
        f"Scripted expert (`envs.g1.expert.expert_act`), 24 of each 30-action chunk executed, episodes cut at "
        f"{args.max_steps or 600} control steps (limit 600; the plan lifts by "
        f"step ~170 and has no retry, so later successes are not expected); success = box lifted >= 9 cm while "
        f"touching the right hand. Steps = mean control steps to success (successful episodes only).",
        "### Clean expert per randomisation level",
        markdown_table(["level", "episodes", "success", "steps to success", "fell"], level_rows),
        f"### Noised expert (level 0): `noisy_config(level)`: grasp-point offset std {cfg.grasp_noise} m x level "
        f"(per episode), joint-target noise std {cfg.action_noise} rad x level (per step)",
        markdown_table(["noise level", "episodes", "success", "steps to success", "fell"], noise_rows),
    ]
    body = "\n\n".join(parts if noise_rows else parts[:3])
    write_section(args.section, body)


if __name__ == "__main__":
    main()
