"""How wide, and where, do a study's policies sample their chunks at one observation (issue 23)?

For each study run given, on held-out rollout windows (episodes outside RECAP's and BC-all's training; with
mixed-temperature rollouts, those played at temperature 1), samples K chunks per window from the SFT collection
checkpoint, BC-all, and RECAP prompted high and low, and reports in action-range units:

* spread: the rms over chunk steps and action dims of the K samples' standard deviation (the sampler's width at
  one observation; the temperature sweep shows success falls fast as it grows);
* the rms distance between two policies' mean chunks (RECAP-high vs RECAP-low is what the token changes).

Writes the ``chunk_spread`` section of ``benchmarks/RESULTS.md``.

    python -m benchmarks.chunk_spread --runs runs/cpu_power/seed0 runs/cpu_power_mixed/seed0 [--windows 128]
        [--samples 8]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from recap_jax import _platform

_platform.apply_xla_flags()

import numpy as np  # noqa: E402

from benchmarks._results import machine_description, markdown_table, write_section  # noqa: E402

SECTION = "chunk_spread"
POLICIES = ("sft", "bc_all", "recap_high", "recap_low")
PAIRS = (("recap_high", "recap_low"), ("recap_high", "bc_all"), ("bc_all", "sft"))


def spread(chunks: np.ndarray) -> float:
    """rms of the per-window standard deviation over samples; ``chunks`` float [W, K, H, A]."""
    if chunks.ndim != 4 or chunks.shape[1] < 2:
        raise ValueError(f"chunks must be [windows, samples >= 2, H, A], got {chunks.shape}")
    return float(np.sqrt(chunks.var(axis=1).mean()))


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """rms distance of two policies' mean chunks over the same windows; float [W, K, H, A] each."""
    return float(np.sqrt(((a.mean(axis=1) - b.mean(axis=1)) ** 2).mean()))


def held_out_rows(run: Path, cfg, windows: int) -> tuple[dict, dict, list]:
    """(episodes, labels, rows [(episode_id, q)]): up to ``windows`` decision points of held-out episodes played at
    temperature 1, in id order."""
    from experiments import finetune
    from recap_jax.data import EpisodeStore

    store = EpisodeStore(run / "rollouts")
    eps = {e.episode_id: e for e in store.iter_episodes() if e.tags.get("kind") == "rollout"}
    labels = {int(k): np.asarray(v) for k, v in store.read_annotation("label").items()}
    held = finetune.holdout_ids(cfg, run)
    if not held:
        raise ValueError(f"{run}: no held-out rollouts (finetune.holdout_fraction is 0)")
    cool = [i for i in sorted(held) if float(eps[i].tags.get("temperature", 1.0)) == 1.0]
    rows = [(i, q) for i in cool for q in range(len(eps[i].image_steps))][:windows]
    return eps, labels, rows


def sample_policies(run: Path, windows: int, samples: int, seed: int = 5) -> dict[str, np.ndarray]:
    """{policy: float [W, K, H, A] chunks / action range} for ``POLICIES`` on the run's held-out windows."""
    import jax
    import jax.numpy as jnp

    from experiments import collect, common, finetune, glue
    from recap_jax import advantage, policy

    cfg = common.read_config(run)
    eps, labels, rows = held_out_rows(run, cfg, windows)
    step = collect.checkpoint_step(run)
    recap = glue.load_policy(
        run / finetune.run_dir(0, "recap"), glue.policy_config(cfg, cfg.finetune.indicator_dropout)
    )
    models = {
        "sft": (glue.load_policy(run / "sft", glue.policy_config(cfg), step), None),
        "bc_all": (glue.load_policy(run / finetune.run_dir(0, "bc_all"), glue.policy_config(cfg)), None),
        "recap_high": (recap, 1),
        "recap_low": (recap, 0),
    }
    batch, _, prompts = finetune.window_batch(eps, labels, rows, recap.config.chunk)
    obs = {k: jnp.asarray(np.repeat(batch[k], samples, 0)) for k in ("image", "state", "t")}
    reps = [p for p in prompts for _ in range(samples)]
    sample = jax.jit(lambda p, o, ids, mask, key: policy.sample_actions(p, o, ids, key, prompt_mask=mask))
    out = {}
    for name, (params, label) in models.items():
        ids, mask = params.config.tokenizer().encode(
            reps if label is None else advantage.format_prompts(reps, [label] * len(reps))
        )
        a = np.asarray(sample(params, obs, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(seed)))
        span = np.asarray(params.norm.action_max - params.norm.action_min, np.float32)
        out[name] = (a / span).reshape(len(rows), samples, *a.shape[1:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="study run directories (evaluated)")
    ap.add_argument("--windows", type=int, default=128)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/RESULTS.md")
    args = ap.parse_args()

    from experiments import common

    common.setup_jax()
    load = os.getloadavg()[0]
    rows = []
    for run in args.runs:
        cfg = common.read_config(run)
        chunks = sample_policies(run, args.windows, args.samples)
        results = common.read_json(run / "results.json")["conditions"]
        rates = {p: results.get("sft_init" if p == "sft" else p, {}).get("rate") for p in POLICIES}
        row = [f"`{run}`", cfg.name, f"{cfg.finetune.learning_rate:g}", f"{cfg.finetune.indicator_dropout:g}"]
        row += [f"{spread(chunks[p]):.4f} ({rates[p]:.0%})" if rates[p] is not None else "–" for p in POLICIES]
        row += [f"{mean_distance(chunks[a], chunks[b]):.4f}" for a, b in PAIRS]
        print(row, flush=True)
        rows.append(row)
    header = ["run", "preset", "fine-tune lr", "indicator dropout"]
    header += [f"spread {p} (success)" for p in POLICIES] + [f"{a} − {b}" for a, b in PAIRS]
    body = (
        f"Machine: {machine_description()}; load average {load:.1f} at the start.\n\n"
        f"Per run: {args.windows} decision points of held-out rollouts played at temperature 1, {args.samples} "
        "chunks sampled per point and policy (plain sampler, no real-time-chunking prefix). Spread = rms over "
        "steps and dims of the samples' standard deviation; the last columns are rms distances between two "
        "policies' mean chunks; all in units of the action range. In brackets each policy's evaluated success "
        "(`results.json`; RECAP-high's with the run's CFG β when it has one, the spread column is β = 1).\n\n"
        + markdown_table(header, rows)
    )
    if not args.no_write:
        write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
