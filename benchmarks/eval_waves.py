"""Evaluation waves on CPU: how many envs per wave make a study's closed-loop evaluation fastest (issue 23).

The study evaluates (and collects) in waves of ``evaluate.num_envs`` batched envs, each one jitted program of
T control steps (``glue.evaluate_policy``, the recorded wave program collection shares). This times that path
as the study runs it — the preset's env, policy shapes and RTC, ``make``'s XLA flags — for several wave sizes:
per size, the first wave (compilation, or a load from the persistent cache) and the steady-state seconds per
episode over ``--episodes`` episodes, and the speed-up over the first size.

    python -m benchmarks.eval_waves [--preset cpu] [--envs 8 16 32] [--episodes 64] [--checkpoint RUN/sft]

Without ``--checkpoint`` the policy is a fresh initialisation with identity normalisation: every wave runs its
T steps whatever the policy does, so the time does not depend on its weights (the success column then says
nothing). Writes the ``eval_waves`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from recap_jax import _platform

_platform.apply_xla_flags()

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402
from experiments import glue, presets  # noqa: E402

SECTION = "eval_waves"


def policy_params(cfg: presets.StudyConfig, checkpoint: str | None):
    import jax

    from recap_jax import policy

    pcfg = glue.policy_config(cfg)
    if checkpoint:
        return glue.load_policy(checkpoint, pcfg)
    return policy.init_policy(pcfg, jax.random.key(0), policy.NormStats.identity(pcfg.state_dim, pcfg.action_dim))


def bench(cfg: presets.StudyConfig, params, n: int, episodes: int) -> dict:
    """First wave (compile or cache load + one wave) and steady-state s/episode over ``episodes`` (whole waves)."""
    env = glue.make_env(cfg)
    kw = dict(num_envs=n, seed=123, prompt=glue.INSTRUCTION, ta=cfg.env.replan_every)
    t0 = time.perf_counter()
    glue.evaluate_policy(env, params, num_episodes=n, **kw)
    first = time.perf_counter() - t0
    waves = max(1, episodes // n)
    t0 = time.perf_counter()
    res = glue.evaluate_policy(env, params, num_episodes=waves * n, **kw)
    wall = time.perf_counter() - t0
    return {
        "n": n,
        "first_s": first,
        "waves": waves,
        "wave_s": wall / waves,
        "s_per_episode": wall / (waves * n),
        "success": float(np.mean(res["success"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--envs", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--episodes", type=int, default=64, help="timed episodes per wave size (whole waves)")
    ap.add_argument("--checkpoint", default=None, help="a policy run directory (latest step); default: fresh init")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/RESULTS.md")
    args = ap.parse_args()

    from experiments import common

    common.setup_jax()
    cfg = presets.get_preset(args.preset)
    params = policy_params(cfg, args.checkpoint)
    load = os.getloadavg()[0]
    rows, base = [], None
    for n in args.envs:
        r = bench(cfg, params, n, args.episodes)
        base = base or r["s_per_episode"]
        print(r, flush=True)
        rows.append(
            [
                r["n"],
                f"{r['first_s']:.0f}",
                r["waves"],
                f"{r['wave_s']:.1f}",
                f"{r['s_per_episode']:.2f}",
                f"{base / r['s_per_episode']:.2f}×",
                f"{r['success']:.2f}",
            ]
        )
    load_after = os.getloadavg()[0]
    t, (h, w) = cfg.env.episode_length, cfg.env.image_size
    body = (
        f"Machine: {machine_description()}; load average {load:.1f} before, {load_after:.1f} after.\n\n"
        f"`{args.preset}` preset's evaluation path (`glue.evaluate_policy`: env with {t}-step episodes, "
        f"{h}×{w} camera, its policy shapes and RTC), policy "
        f"{'from ' + args.checkpoint if args.checkpoint else 'freshly initialised'}. "
        "First wave: compilation (or a persistent-cache load) plus one wave; steady state: the mean over the timed "
        "waves. Speed-up: seconds per episode relative to the first row.\n\n"
        + markdown_table(
            ["envs per wave", "first wave s", "timed waves", "s / wave", "s / episode", "speed-up", "success"], rows
        )
    )
    if not args.no_write:
        write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
