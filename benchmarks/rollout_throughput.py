"""Rollout throughput: episodes/s and env steps/s of ``recap_jax.rollout.run_wave`` with the `small` policy.

One wave = N envs × T control steps (ceil(T / 24) policy queries), all on device. Reported per N: the
steady-state wall time of a wave (after compilation), episodes/s, env (control) steps/s, and the share
of the wave spent in rendering and in the policy (each timed alone, as a jitted call on the same batch,
times the number of queries) and in physics (the rest: reset + control steps). On a GPU backend the rows
are N = 1024 and 4096 with T = 600 (the paper's collection: 500 × 600 steps; goal ≤ 60 s on one H100);
on CPU, small N and a short T, with the GPU rows marked pending.

    python -m benchmarks.rollout_throughput                 # CPU defaults: N = 2, 8; T = 48
    python -m benchmarks.rollout_throughput --envs 1024 4096 --episode-length 600   # on a GPU
"""

from __future__ import annotations

from recap_jax import _platform

_platform.apply_xla_flags()

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402
from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402
from recap_jax import policy, rollout  # noqa: E402

SECTION = "rollout_throughput"
PROMPT = "bend to pick up the cracker box"


def _timed(fn, *args, repeats: int = 2) -> tuple[float, float]:
    """(first call incl. compile, best steady-state) seconds of ``fn(*args)``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best


def bench(n: int, episode_length: int, image_size: tuple[int, int], repeats: int) -> dict:
    env = envs.make("G1BendPick-v0", episode_length=episode_length, image_size=image_size)
    # System-0's warn-once host callback would put a host round-trip in every control step (and keep the
    # wave out of the persistent compilation cache); unsupported commands stay flagged in the metrics.
    s0 = getattr(env, "system0_params", None)
    if s0 is not None and getattr(s0, "warn_unsupported", False):
        env.system0_params = s0.replace(warn_unsupported=False)
    cfg = policy.PolicyConfig(action_expert="small", encoder="small", image_size=image_size)
    params = policy.init_policy(cfg, 0)
    act = policy.sample_actions
    ids = np.broadcast_to(policy.tokenize(cfg, [PROMPT])[0], (n, cfg.prompt_max_len))
    key = jax.random.fold_in(jax.random.key(0), rollout.COLLECT)
    episode_ids = np.arange(n, dtype=np.int32)
    ta = rollout.TA
    queries = -(-episode_length // ta)

    wave = lambda: rollout.run_wave(env, act, params, ids, 1.0, key, episode_ids, ta=ta)
    compile_s, wave_s = _timed(wave, repeats=repeats)
    out = jax.device_get(wave())

    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(1), n))
    render = jax.jit(jax.vmap(env.render))
    _, render_s = _timed(render, states, repeats=repeats)
    obs = {**states.obs, "image": render(states)}
    pol = jax.jit(
        lambda p, o, i, k: jax.vmap(functools.partial(rollout._act_one, act), in_axes=(None, 0, 0, 0, None, 0))(
            p, o, i, k, jnp.float32(1.0), {}
        )
    )
    _, policy_s = _timed(pol, params, obs, jnp.asarray(ids), jax.random.split(jax.random.key(2), n), repeats=repeats)
    render_total, policy_total = render_s * queries, policy_s * queries
    physics = max(wave_s - render_total - policy_total, 0.0)
    steps = n * episode_length
    return {
        "n": n,
        "T": episode_length,
        "wave_s": wave_s,
        "compile_s": compile_s,
        "episodes_per_s": n / wave_s,
        "steps_per_s": steps / wave_s,
        "physics": physics / wave_s,
        "render": render_total / wave_s,
        "policy": policy_total / wave_s,
        "success": float(np.mean(out["success"])),
        "n_steps_ok": bool(np.all((out["n_steps"] >= 1) & (out["n_steps"] <= episode_length))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gpu = jax.default_backend() == "gpu"
    ap.add_argument("--envs", type=int, nargs="+", default=[1024, 4096] if gpu else [2, 8])
    ap.add_argument("--episode-length", type=int, default=600 if gpu else 48)
    ap.add_argument("--image-size", type=int, nargs=2, default=(96, 160))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/RESULTS.md")
    args = ap.parse_args()

    rows = []
    for n in args.envs:
        r = bench(n, args.episode_length, tuple(args.image_size), args.repeats)
        print(r, flush=True)
        rows.append(
            [
                jax.default_backend().upper(),
                r["n"],
                r["T"],
                f"{r['wave_s']:.2f}",
                f"{r['episodes_per_s']:.3g}",
                f"{r['steps_per_s']:.4g}",
                f"{100 * r['physics']:.0f}% / {100 * r['render']:.0f}% / {100 * r['policy']:.0f}%",
                f"{r['compile_s']:.0f}",
            ]
        )
    if not gpu:
        for n in (1024, 4096):
            rows.append(["GPU (H100)", n, 600, "pending (no GPU in this session)", "", "", "", ""])
    head = ["backend", "envs N", "T", "wave s", "episodes/s", "env steps/s", "physics / render / policy", "compile s"]
    body = (
        f"Machine: {machine_description()}.\n\n"
        f'`small` policy (action expert + encoder presets "small"), image {args.image_size[0]}×{args.image_size[1]}, '
        f"Ta = {rollout.TA} (ceil(T/24) queries per episode), one jitted wave per row, steady state (best of "
        f"{args.repeats} after compilation). Shares: render and policy are timed alone on the same batch "
        "(× queries); physics is the rest of the wave (reset + control steps).\n\n"
        + markdown_table(head, rows)
        + "\n\nGoal: the paper's 500 × 600-step collection in ≤ 60 s on one H100 with the `small` policy "
        "(a single 512-env wave); not measurable without a GPU. On CPU, other processes shared the 2 cores "
        "during the run, so the numbers are a lower bound."
    )
    if not args.no_write:
        write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
