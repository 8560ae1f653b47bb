"""Stage 2: on-policy rollouts from an SFT checkpoint (the paper's 500 rollouts from SFT@20k).

    python -m experiments.collect --out runs/smoke

Headroom: with ``sft.candidate_steps`` and ``collect.screen_episodes > 0`` every candidate checkpoint is
screened on its own key namespace (neither collection's nor evaluation's) and the one whose success
rate lies in ``collect.target_rate`` (closest to the band's centre; else closest to the band) is used.
The chosen step and its screened rate are recorded in ``DIR/collect/stage.json``.

``collect.temperatures`` with more than one entry collects mixed-quality data: episode ``first + j`` samples every
chunk at temperature ``temperatures[j % K]`` (``policy.sample_actions``' noise_scale; tag ``temperature``), and
``stage.json`` counts successes per temperature.

Iteration k > 0 (the π*0.6 loop) collects with the latest RECAP policy prompted ``advantage: high``.
Episodes go to ``DIR/rollouts/`` (ids ``k·episodes …``, tags ``policy`` and ``iteration``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import common, glue
from experiments.presets import StudyConfig

SCREEN_NAMESPACE = glue.SCREEN_NAMESPACE  # rollout key namespace for checkpoint screening (glue.key_space)


def stage_name(it: int) -> str:
    return "collect" if it == 0 else f"collect_it{it}"


def checkpoint_step(out: Path) -> int:
    """The SFT step of the run's collection checkpoint (``DIR/collect/stage.json``): the policy that collected the
    first rollouts, which fine-tuning starts from and ``sft_init`` evaluates."""
    return int(common.read_json(Path(out) / stage_name(0) / common.MARKER)["outputs"]["checkpoint_step"])


def choose_checkpoint(cfg: StudyConfig, out: Path, env) -> dict:
    """The SFT step used for collection, screened for headroom when candidates are configured."""
    candidates = sorted({cfg.sft.init_step, *cfg.sft.candidate_steps})
    if len(candidates) == 1 or cfg.collect.screen_episodes <= 0:
        return {"step": cfg.sft.init_step, "screened": {}}
    pcfg = glue.policy_config(cfg)
    lo, hi = cfg.collect.target_rate
    rates = {}
    seed, namespace = glue.key_space(cfg, "screen")
    for step in candidates:
        params = glue.load_policy(Path(out) / "sft", pcfg, step)
        res = glue.evaluate_policy(
            env,
            params,
            num_episodes=cfg.collect.screen_episodes,
            num_envs=cfg.collect.num_envs,
            seed=seed,
            prompt=glue.INSTRUCTION,
            ta=cfg.env.replan_every,
            namespace=namespace,
        )
        rates[step] = float(np.mean(res["success"]))
        print(f"  screen SFT@{step}: success {rates[step]:.1%}", flush=True)
    centre = 0.5 * (lo + hi)

    def score(step):
        r = rates[step]
        inside = lo <= r <= hi
        return (0 if inside else 1, abs(r - centre) if inside else min(abs(r - lo), abs(r - hi)))

    best = min(candidates, key=score)
    return {"step": best, "screened": {str(k): v for k, v in rates.items()}}


def collect_rollouts(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    from recap_jax import rollout
    from recap_jax.data import EpisodeStore

    env = glue.make_env(cfg)
    if it == 0:
        choice = choose_checkpoint(cfg, out, env)
        params = glue.load_policy(Path(out) / "sft", glue.policy_config(cfg), choice["step"])
        prompt_ids, source = None, f"sft@{choice['step']}"
    else:
        from experiments import finetune

        choice = {"step": None, "screened": {}}
        pcfg = glue.policy_config(cfg, cfg.finetune.indicator_dropout)
        params = glue.load_policy(Path(out) / finetune.run_dir(it - 1, "recap"), pcfg)
        prompt_ids = params.config.tokenizer().encode(glue.prompt_for("high"))[0]
        source = f"recap_it{it - 1}(high)"
    store = EpisodeStore(Path(out) / "rollouts", create=True)
    first = it * cfg.collect.episodes
    seed, namespace = glue.key_space(cfg, "collect", it)
    act, rtc = glue.policy_act(params)
    n, temps = cfg.collect.episodes, tuple(float(t) for t in cfg.collect.temperatures)
    tags = {"kind": "rollout", "policy": source, "iteration": it}
    common_kw = dict(
        prompt=glue.INSTRUCTION,
        prompt_ids=prompt_ids,
        seed=seed,
        namespace=namespace,
        num_envs=cfg.collect.num_envs,
        ta=cfg.env.replan_every,
        rtc=rtc,
    )
    if temps == (1.0,):  # the trained sampler: the program without a noise_scale input
        collected = rollout.collect(env, act, params, store, n, first_id=first, tags=tags, **common_kw)["collected"]
    else:  # episode first + j plays at temps[j % K]; one program for all K (the scale is a traced input)
        collected = 0
        for k, temp in enumerate(temps):
            ids = [first + j for j in range(k, n, len(temps))]
            print(f"  temperature {temp:g}: {len(ids)} episodes", flush=True)
            scale = {"noise_scale": np.full((cfg.collect.num_envs,), temp, np.float32)}
            collected += rollout.collect(
                env, act, params, store, len(ids), episode_ids=ids, act_kwargs=scale,
                tags={**tags, "temperature": temp}, **common_kw,
            )["collected"]  # fmt: skip
    eps = [e for e in store.iter_episodes() if first <= e.episode_id < first + cfg.collect.episodes]
    succ = np.array([e.success for e in eps])
    lo, hi = cfg.collect.target_rate
    rate = float(succ.mean()) if succ.size else float("nan")
    by_temp = {}
    for temp in temps:
        s = np.array([e.success for e in eps if float(e.tags.get("temperature", 1.0)) == temp])
        by_temp[f"{temp:g}"] = {"episodes": int(s.size), "successes": int(s.sum())}
    return {
        "iteration": it,
        "policy": source,
        "checkpoint_step": choice["step"],
        "screened_rates": choice["screened"],
        "episodes": int(succ.size),
        "successes": int(succ.sum()),
        "success_rate": rate,
        "in_headroom_band": bool(lo <= rate <= hi),
        "target_rate": [lo, hi],
        "first_id": first,
        "collected_now": collected,
        "temperatures": by_temp,
    }


def run(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    cfg_slice = {"env": cfg.env, "policy": cfg.policy, "sft": cfg.sft, "collect": cfg.collect, "seed": cfg.seed}
    cfg_slice["rollout_rtc"] = glue.policy_config(cfg).rtc  # closed-loop RTC changes the rollouts (issue 16)
    if it > 0:
        cfg_slice["finetune"] = cfg.finetune
    return common.run_stage(out, stage_name(it), cfg_slice, lambda: collect_rollouts(cfg, out, it))


def main(argv=None) -> None:
    common.stage_main(run, "On-policy rollouts from the SFT collection checkpoint (stage 2).", argv)


if __name__ == "__main__":
    main()
