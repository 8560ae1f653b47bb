"""How fast does the collection policy's success fall with its sampling temperature (issue 23)?

Plays a study run's SFT collection checkpoint with every chunk sampled at temperature T (the flow noise scaled by
T, ``policy.sample_actions``' noise_scale) on the same held-out scenes for each T, and counts successes, timeouts
and falls. It sizes ``collect.temperatures`` for a mixed-quality collection (preset ``cpu_power_mixed``). Writes
the ``temperature_sweep`` section of ``benchmarks/RESULTS.md``.

    python -m benchmarks.temperature_sweep --run runs/cpu_power/seed0 [--temperatures 1 1.05 1.1 1.2 1.5]
        [--episodes 64] [--num-envs 32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from recap_jax import _platform

_platform.apply_xla_flags()

import numpy as np  # noqa: E402

from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402

SECTION = "temperature_sweep"
SEED = 123  # evaluation scenes of this benchmark (the EVAL namespace under its own seed, not a study's)


def sweep(run: Path, temperatures: list[float], episodes: int, num_envs: int) -> list[dict]:
    """One row per temperature: {"temperature", "episodes", "success", "timeout", "fell", "seconds"}."""
    from experiments import collect, common, glue
    from recap_jax import rollout

    cfg = common.read_config(run)
    step = collect.checkpoint_step(run)
    params = glue.load_policy(run / "sft", glue.policy_config(cfg), step)
    act, rtc = glue.policy_act(params)
    env = glue.make_env(cfg)
    rows = []
    for temp in temperatures:
        if temp <= 0:
            raise ValueError(f"temperatures must be positive, got {temp}")
        t0 = time.perf_counter()
        res = rollout.evaluate(
            env, act, params, episodes, prompt=glue.INSTRUCTION, seed=SEED, num_envs=num_envs,
            ta=int(cfg.env.replan_every), rtc=rtc, progress=False,
            act_kwargs={"noise_scale": np.full((num_envs,), temp, np.float32)},
        )  # fmt: skip
        causes = np.bincount(res["cause"], minlength=len(rollout.FAILURE_CAUSES))
        row = {"temperature": temp, "episodes": episodes, "policy": f"sft@{step}", "seconds": time.perf_counter() - t0}
        row |= {name: int(causes[i]) for i, name in enumerate(rollout.FAILURE_CAUSES)}
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a study run directory with its collect stage done")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.5])
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--num-envs", type=int, default=32)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/RESULTS.md")
    args = ap.parse_args()

    from experiments import common
    from recap_jax import stats

    common.setup_jax()
    load = os.getloadavg()[0]
    rows = sweep(args.run, args.temperatures, args.episodes, args.num_envs)
    table = []
    for r in rows:
        lo, hi = stats.wilson_interval(r["success"], r["episodes"])
        rate = f"{r['success'] / r['episodes']:.1%} [{lo:.1%}, {hi:.1%}]"
        table.append([f"{r['temperature']:g}", r["episodes"], rate, r["timeout"], r["fell"], f"{r['seconds']:.0f}"])
    body = (
        f"Machine: {machine_description()}; load average {load:.1f} at the start.\n\n"
        f"Run `{args.run}`, its collection checkpoint {rows[0]['policy']}: every chunk sampled at temperature T, "
        f"{args.episodes} held-out scenes (seed {SEED}, the same for every T), waves of {args.num_envs}. Success "
        "with its Wilson 95% interval; the first row's seconds include compiling.\n\n"
        + markdown_table(["T", "episodes", "success", "timeout", "fell", "s"], table)
    )
    if not args.no_write:
        write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
