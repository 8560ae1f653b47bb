"""Stage 1: expert demonstrations, then flow-matching SFT on them (the paper's SFT@20k/40k).

    python -m experiments.sft --out runs/smoke [--preset smoke] [--seed 0]

Writes ``DIR/demos/`` (episode store of the scripted expert's demos; only successful ones when
``demos.successful_only``) and ``DIR/sft/`` (orbax checkpoints at ``sft.init_step``, the screening
candidates and ``sft.steps``; ``logs/metrics.jsonl``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from experiments import common, glue
from experiments.presets import StudyConfig

DEMO_ID_OFFSET = 0
MAX_DEMO_WAVES = 4  # waves of num_envs tried (as multiples of the requested count) to find successes


def _expert(cfg: StudyConfig):
    expert = common.require("envs.g1.expert", "env (scripted expert)")
    level = cfg.demos.expert_noise
    params = expert.noisy_config(level, seed=cfg.seed) if level > 0 else expert.default_config()
    return (expert.dart_act if cfg.demos.dart else expert.expert_act), params


def collect_demos(cfg: StudyConfig, out: Path) -> dict:
    """Runs the scripted expert and stores ``demos.num_demos`` demos in ``DIR/demos/store``."""
    from recap_jax import rollout
    from recap_jax.data import EpisodeStore

    env = glue.make_env(cfg)
    act, params = _expert(cfg)
    raw = EpisodeStore(Path(out) / "demos" / "raw", create=True)
    want = cfg.demos.num_demos
    per_wave = cfg.demos.num_envs
    tried = 0
    seed, namespace = glue.key_space(cfg, "demos")
    max_episodes = want * (MAX_DEMO_WAVES if cfg.demos.successful_only else 1)
    while True:
        n = min(per_wave, max_episodes - tried)
        rollout.collect(
            env,
            act,
            params,
            raw,
            n,
            prompt=glue.INSTRUCTION,
            seed=seed,
            namespace=namespace,
            first_id=DEMO_ID_OFFSET + tried,
            num_envs=per_wave,
            ta=cfg.env.replan_every,
            tags={
                "kind": "demo",
                "policy": f"expert(noise={cfg.demos.expert_noise}{', dart' if cfg.demos.dart else ''})",
                "iteration": 0,
            },
        )
        tried += n
        eps = raw.load()
        succ = [e for e in eps if e.success]
        if not cfg.demos.successful_only or len(succ) >= want or tried >= max_episodes:
            break
    eps = sorted(raw.load(), key=lambda e: e.episode_id)
    succ = [e for e in eps if e.success]
    if cfg.demos.successful_only and succ:
        chosen, note = succ[:want], "successful demos only"
    elif cfg.demos.successful_only:
        chosen, note = eps[:want], "the expert succeeded in none of the tried episodes: all kept (mixed-quality demos)"
    else:
        chosen, note = eps[:want], "all demos kept"
    store = EpisodeStore(Path(out) / "demos" / "store", create=True)
    have = set(store.episode_ids())
    new = [e for e in chosen if e.episode_id not in have]
    if new:
        store.append(new)
    return {
        "tried": tried,
        "expert_success_rate": float(np.mean([e.success for e in eps])),
        "demos": len(chosen),
        "demo_successes": int(sum(e.success for e in chosen)),
        "mean_demo_steps": float(np.mean([e.n_steps for e in chosen])),
        "note": note,
    }


def save_steps(cfg: StudyConfig) -> tuple[int, int]:
    """(save_every, checkpoints kept): every candidate, the init step and the final step are saved."""
    steps = [cfg.sft.init_step, cfg.sft.steps, *cfg.sft.candidate_steps]
    every = math.gcd(*steps)
    return every, cfg.sft.steps // every


def demo_norm_stats(cfg: StudyConfig, demos: Path):
    """The SFT policy's ``NormStats``: an imported LeRobot dataset's own ``stats_psi0.json`` (Ψ0's stats,
    as Ψ0 trains with them), else min–max over the demo store (widened when ``cfg.sft.norm_widen``)."""
    from recap_jax.data import lerobot
    from recap_jax.policy import NormStats

    stats_file = Path(demos) / lerobot.STATS_FILE
    if stats_file.exists():
        pcfg = glue.policy_config(cfg)
        return NormStats.from_psi0(lerobot.read_psi0_stats(stats_file), pcfg.state_dim, pcfg.action_dim)
    return glue.norm_stats(demos, ("demo",), widen=cfg.sft.norm_widen)


def train_sft(cfg: StudyConfig, out: Path) -> dict:
    import jax

    from recap_jax import policy, train

    demos = Path(out) / "demos" / "store"
    pcfg = glue.policy_config(cfg)
    norm = demo_norm_stats(cfg, demos)
    params0 = policy.init_policy(pcfg, jax.random.key(cfg.seed), norm)
    if pcfg.is_vlm and pcfg.vlm_path:  # the whole Ψ0: the frozen Qwen3-VL's pretrained weights
        from recap_jax import psi0

        params0 = psi0.with_vlm_weights(params0, pcfg.vlm_path)
    every, _ = save_steps(cfg)
    params, history = glue.train_policy(
        params0=params0,
        store_root=demos,
        kinds=("demo",),
        label_annotation=None,
        settings=cfg.sft,
        num_steps=cfg.sft.steps,
        save_every=every,
        out_dir=Path(out) / "sft",
        seed=cfg.seed,
        assets=train.make_assets(norm, config=pcfg, preset=cfg.name, seed=cfg.seed, stage="sft"),
    )
    return {
        "steps": cfg.sft.steps,
        "saved_steps": sorted(train.Checkpointer(Path(out) / "sft").all_steps()),
        "final_loss": history[-1]["loss"] if history else None,
        "params": train.count_params(params.model),
    }


def import_demos(cfg: StudyConfig, out: Path, root: str) -> dict:
    """Imports a LeRobot v2.1 dataset (SIMPLE layout) as ``DIR/demos/store`` at the env's image size."""
    from recap_jax.data import lerobot

    store = lerobot.import_lerobot(root, Path(out) / "demos" / "store", image_size=tuple(cfg.env.image_size))
    return {"demos": len(store), "source": str(root), "note": "LeRobot v2.1 demos"}


def run(cfg: StudyConfig, out: Path, demos_lerobot: str | None = None) -> dict:
    if demos_lerobot:
        source, make = {"demos_lerobot": str(demos_lerobot)}, lambda: import_demos(cfg, out, demos_lerobot)
    else:
        source, make = {"demos": cfg.demos}, lambda: collect_demos(cfg, out)
    demos = common.run_stage(out, "demos", {"env": cfg.env, **source, "seed": cfg.seed}, make)
    sft = common.run_stage(
        out,
        "sft",
        {"env": cfg.env, "policy": cfg.policy, "sft": cfg.sft, "demos": cfg.demos, "seed": cfg.seed},
        lambda: train_sft(cfg, out),
    )
    return {"demos": demos, "sft": sft}


def main(argv=None) -> None:
    """``--demos-lerobot PATH`` (optional): SFT on a LeRobot v2.1 dataset instead of expert demos."""
    import argparse
    import sys

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--demos-lerobot", default=None)
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    common.stage_main(
        lambda cfg, out: run(cfg, out, known.demos_lerobot),
        "Expert demos (or --demos-lerobot PATH: a LeRobot v2.1 dataset) + flow-matching SFT (stage 1).",
        rest,
    )


if __name__ == "__main__":
    main()
