"""Does the task still work with a cheaper MuJoCo solver? Scripted-expert success, falls and grasp-hold slip.

Writes the ``env_solver_validation`` section of ``benchmarks/RESULTS.md`` (rewritten after each config, so an
interrupted run keeps what it measured). Run from the repository root:

    python -m benchmarks.solver_validation                     # DEFAULT_CONFIGS (~2 min each on 2 cores)
    python -m benchmarks.solver_validation --append --configs newton:3:4   # add rows to the section

Each config (``solver:iterations:ls_iterations[:eulerdamp|:noeulerdamp]``, the ``G1BendPick-v0`` overrides ``solver``,
``solver_iterations``, ``ls_iterations``, ``eulerdamp``) is one compile of a vmapped expert rollout at
randomisation level 0 with ``success_lift`` disabled (as in tests/test_expert.py), so an episode continues
after the lift and one run gives both numbers:

- success: the env's success condition (lift >= 0.9 with the box touching the right hand) reached within
  ``--success-steps`` control steps and before any fall (the default 216 covers the expert's lift at ~170);
- the grasp hold of tests/test_expert.py: from ``lift_end + 20`` for 100 control steps (2 s, before the
  body rises at ``rise_start``) the box must stay in the hand and off the table (lift >= 0.5), and the
  box's position relative to the palm must not move more than 1 cm;
- falls and non-finite physics over the whole run (success window and hold).

Every config runs on the same episode keys (paired comparison).
"""

from __future__ import annotations

import argparse
import os
import time

from recap_jax import _platform

_platform.apply_xla_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402
from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402
from envs.g1 import expert as E  # noqa: E402
from envs.g1.bendpick import Physics, parse_physics  # noqa: E402

SETTLE_STEPS = 20  # as tests/test_expert.py: the hold window starts 0.4 s after the arm lift ends
HOLD_STEPS = 100  # 2 s at 50 Hz
SLIP_LIMIT = 0.01  # m
# The configs of the env_solver_validation section, in the order they were run.
DEFAULT_CONFIGS = (
    "newton:4:8,cg:4:8,newton:2:4,cg:2:4,newton:1:4,newton:4:4,newton:3:8,newton:3:6,newton:4:6,cg:8:8,newton:3:4"
)


def parse_configs(text: str) -> list[Physics]:
    """``"newton:4:8,cg:2:4,newton:3:4:noeulerdamp"`` -> a list of ``envs.g1.bendpick.Physics`` (empty items
    skipped); the syntax is ``envs.g1.bendpick.parse_physics``'s."""
    return [parse_physics(item) for item in text.split(",") if item.strip()]


def summarise(rec: dict, success_steps: int, hold_start: int) -> dict:
    """Per-episode outcomes from records [T, B] (numpy)."""
    lift, contact, fell, nan, rel = (np.asarray(rec[k]) for k in ("lift", "contact", "fell", "nan", "rel"))
    T = lift.shape[0]
    never = T + 1

    def first(mask):  # [T, B] -> first step index (1-based control steps) or `never`
        return np.where(mask.any(0), mask.argmax(0) + 1, never)

    t_success = first((lift >= 0.9) & (contact > 0))
    t_fell = first(fell > 0)
    success = (t_success <= success_steps) & (t_success < t_fell)
    h0, h1 = hold_start, hold_start + HOLD_STEPS
    hold = rel[h0:h1]
    slip = np.linalg.norm(hold - hold[0], axis=-1).max(axis=0)
    held = (contact[h0:h1] > 0).all(0) & (lift[h0:h1] >= 0.5).all(0)
    return {
        "success": success,
        "steps": np.where(success, t_success, 0),
        "fell": fell.any(0),
        "nan": nan.any(0),
        "slip": slip,
        "held": held,
        "hold_ok": held & (slip < SLIP_LIMIT),
    }


def _existing_rows(section: str) -> list[list[str]]:
    """The table rows already in ``section`` of the results file (for ``--append``)."""
    from benchmarks._results import RESULTS

    text = RESULTS.read_text() if RESULTS.exists() else ""
    start, end = text.find(f"<!-- BEGIN {section} -->"), text.find(f"<!-- END {section} -->")
    if start < 0 or end < 0:
        return []
    lines = [ln for ln in text[start:end].splitlines() if ln.startswith("| ")][1:]  # drop the header row
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS)
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--success-steps", type=int, default=216, help="control steps allowed to reach success")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--section", default="env_solver_validation")
    p.add_argument("--machine-note", default="", help="appended to the machine line (e.g. shared cores)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--append", action="store_true", help="keep the section's existing rows (same settings) and add these"
    )
    args = p.parse_args()
    configs = parse_configs(args.configs)
    _platform.enable_compilation_cache()

    params = E.default_config()
    hold_start = int(params.lift_end) + SETTLE_STEPS
    n_steps = max(hold_start + HOLD_STEPS, args.success_steps)
    if hold_start + HOLD_STEPS > int(params.rise_start):
        raise SystemExit("the hold window runs into the expert's rise; adjust SETTLE_STEPS/HOLD_STEPS")
    n_batches = -(-args.episodes // args.batch)
    keys = [
        jax.random.split(jax.random.fold_in(jax.random.PRNGKey(args.seed), b), args.batch) for b in range(n_batches)
    ]
    rows = _existing_rows(args.section) if args.append else []
    n_run = -(-n_steps // E.EXECUTE) * E.EXECUTE  # whole chunks, as E.rollout_records runs them
    for config in configs:
        env = envs.make(
            "G1BendPick-v0",
            **config.overrides(),
            success_lift=2.0,  # never ends on success: the grasp is watched after the lift
            episode_length=n_run,
        )
        fn = jax.jit(lambda k, env=env: E.rollout_records(env, params, k, n_steps))
        t0 = time.time()
        first = jax.device_get(fn(keys[0]))
        compile_run_s = time.time() - t0
        recs = [first]
        t0 = time.time()
        for k in keys[1:]:
            recs.append(jax.device_get(fn(k)))
        run_s = (time.time() - t0) / max(1, len(keys) - 1)
        rec = jax.tree.map(lambda *x: np.concatenate(x, axis=1)[:, : args.episodes], *recs)
        r = summarise(rec, args.success_steps, hold_start)
        ok = r["success"]
        row = [
            config.label(),
            args.episodes,
            f"{ok.mean():.3f}",
            f"{r['steps'][ok].mean():.1f}" if ok.any() else "-",
            int(r["fell"].sum()),
            int(r["nan"].sum()),
            f"{int(r['hold_ok'].sum())}/{args.episodes}",
            f"{1000 * r['slip'].max():.1f}",
            f"{1000 * np.median(r['slip']):.1f}",
            f"{compile_run_s:.0f} / {run_s:.0f}" if len(keys) > 1 else f"{compile_run_s:.0f} / -",
        ]
        rows.append(row)
        print(row, "slip per episode (mm):", np.round(1000 * r["slip"], 1), flush=True)
        if args.no_write:
            continue
        body = "\n\n".join(
            [
                f"Machine: {machine_description()}{args.machine_note}; load average {os.getloadavg()[0]:.1f} "
                "(wall times are noisy).",
                f"Does the task still work with a cheaper MuJoCo solver (`G1BendPick-v0` overrides `solver`, "
                f"`solver_iterations`, `ls_iterations`, `eulerdamp`)? Scripted expert "
                f"(`envs.g1.expert.expert_act`, 24 of each 30-action chunk executed), randomisation level 0, "
                f"{args.episodes} episodes per config in batches "
                f"of {args.batch}, the same episode keys for every config, `success_lift` disabled so each "
                f"episode runs {n_run} control steps. Success = lift >= 0.9 with the box touching the right "
                f"hand within {args.success_steps} control steps and before any fall. Hold (tests/test_expert.py): "
                f"control steps {hold_start}-{hold_start + HOLD_STEPS} (2 s after the arm lift, before the body "
                f"rises), the box stays in the hand and off the table and moves < {SLIP_LIMIT * 100:.0f} cm "
                "relative to the palm; slip = the largest such movement (0 for an episode frozen by a fall or NaN "
                "before the hold). Falls and NaN episodes count the whole run. Wall s: the first batch (compile + "
                "run) / each further batch.",
                markdown_table(
                    [
                        "solver iters/line-search",
                        "episodes",
                        "success",
                        "steps to success",
                        "fell",
                        "NaN",
                        "hold ok",
                        "max slip mm",
                        "median slip mm",
                        "wall s",
                    ],
                    rows,
                ),
            ]
        )
        write_section(args.section, body)


if __name__ == "__main__":
    main()
