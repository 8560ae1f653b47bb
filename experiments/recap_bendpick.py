"""The whole RECAP-Ψ study on G1 BendPick, stage by stage, resumable.

    python -m experiments.recap_bendpick --preset demo --out runs/demo       (make demo)
    python -m experiments.recap_bendpick --preset gpu --out runs/gpu --iterations 2

Order: demos → SFT → collect (SFT collection checkpoint) → value → labels → RECAP + BC-all → evaluate
(sft_init, sft_final, bc_all, recap_low, recap_high on the same held-out keys) → report. A stage whose
``DIR/<stage>/stage.json`` exists, matches the config and lists existing outputs is skipped, so a killed
study resumes where it stopped. With ``--iterations K`` the π*0.6 loop follows: collect with the latest
RECAP policy (prompted high) → retrain the value on all rollouts so far → relabel → retrain RECAP and
BC-all from the SFT start → evaluate; one results block per iteration.

Writes ``DIR/results.json``, ``DIR/table1.md`` (printed at the end), ``DIR/fig2_success_rates.png``,
``DIR/fig4_value_calibration.png``, ``DIR/fig6_differences.png`` and ``DIR/episodes_high_vs_low.gif``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from experiments import collect, common, evaluate, finetune, glue, label, report, sft, train_value
from experiments.presets import StudyConfig, get_preset, override

DEVIATIONS = (
    "No pretrained Ψ0 base checkpoint exists here: SFT starts from a random initialisation of the configured "
    "policy, and RECAP and BC-all both start from the SFT collection checkpoint (finetune.init).",
    "System-2 is a small ViT-style encoder trained with the policy (not a frozen Qwen3-VL-2B); prompts are "
    "byte-tokenised.",
    "The environment is an MJX re-implementation of SIMPLE G1WholebodyBendPickMP-v0 (simplified contacts, "
    "ray-cast ego camera); demos come from a scripted expert.",
)


def deviations(cfg: StudyConfig) -> list[str]:
    """The study's deviations from the paper, including those its config opts into."""
    out = list(DEVIATIONS)
    phase = dict(cfg.policy).get("phase_steps", 0)
    if phase:
        out.append(
            f"The policy also reads the episode clock (policy.phase_steps={phase}: the control step as a phase "
            "input in a state padding slot); Ψ0 has no such input."
        )
    v = cfg.value_training
    if v.clock:
        out.append(
            f"The value function also reads the episode clock (value_training.clock: the decision point's control "
            f"step as the phase t/{cfg.env.episode_length}); the paper's value function sees image and state only."
        )
    if v.folds >= 2:
        out.append(
            f"V̂ for the labels is out of fold ({v.folds}-fold value functions, each episode's V̂ from the model "
            "that did not train on it; the kept epoch minimises the pooled held-out MSE of the other folds); the "
            "paper labels with one value function trained on a 90/10 split."
        )
    if v.returns != "eq1" or v.return_horizon != 600:
        out.append(
            f"Returns are {v.returns!r} (c_fail {v.c_fail}) normalised by {v.return_horizon} - 1 control steps; the "
            "paper's Eq. 1 normalises by 599."
        )
    overrides = dict(cfg.value)
    if overrides.get("backbone") == "state":
        out.append(
            "The value function sees no image (value backbone 'state': the 32-d state and, with the clock, the "
            "control step); the paper's reads the image through a frozen ResNet-50."
        )
    if cfg.finetune.holdout_fraction > 0:
        out.append(
            f"{cfg.finetune.holdout_fraction:.0%} of the rollouts (per outcome) are held out of RECAP's and BC-all's "
            "training for the label-swap diagnostic; the paper fine-tunes on every rollout."
        )
    if cfg.evaluate.sft_episodes and cfg.evaluate.sft_episodes != cfg.evaluate.episodes:
        out.append(
            f"The SFT conditions are evaluated on {cfg.evaluate.sft_episodes} episodes, the compared conditions on "
            f"{cfg.evaluate.episodes}; the paper evaluates every condition on 500."
        )
    if overrides.get("target") == "two_hot":
        out.append("The value function is trained on two-hot targets; the paper's are one-hot on the nearest bin.")
    if cfg.demos.dart:
        out.append(
            f"SFT demos are DART-style (demos.dart): the scripted expert with noise {cfg.demos.expert_noise} drives "
            "the robot and the clean expert's chunk from the same observation is recorded as the action; the "
            "paper's demos are the expert's own clean actions."
        )
    return out


@dataclasses.dataclass(frozen=True)
class Args:
    """RECAP-Ψ BendPick study.

    Attributes:
      out: run directory (a killed study resumes from it).
      preset: smoke | demo | cpu | cpu_long | cpu_power | cpu_power_mixed | gpu | paper | psi0.
      seed: study seed (default: the preset's).
      iterations: K > 1 runs the π*0.6 loop (one results block per iteration).
      cfg_beta: classifier-free guidance β for recap_high at evaluation (needs --indicator-dropout > 0).
      indicator_dropout: probability of training RECAP on the bare prompt (π*0.6: 0.3).
      n_step: N-step advantages over N decision points (default: the paper's full return minus V̂).
      physics: the env's MuJoCo solver and damping, solver:iterations:ls_iterations[:eulerdamp|:noeulerdamp]
        (e.g. newton:4:8:noeulerdamp; default: the preset's, normally the env's default physics).
    """

    out: Path
    preset: str = "smoke"
    seed: int | None = None
    iterations: int | None = None
    cfg_beta: float | None = None
    indicator_dropout: float | None = None
    n_step: int | None = None
    physics: str | None = None


def configure(args: Args) -> StudyConfig:
    """The run directory's config, or the preset with the CLI's changes (recorded in DIR/config.json)."""
    path = Path(args.out) / "config.json"
    changes = {}
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    if args.cfg_beta is not None:
        changes["evaluate.cfg_beta"] = args.cfg_beta
    if args.indicator_dropout is not None:
        changes["finetune.indicator_dropout"] = args.indicator_dropout
    if args.n_step is not None:
        changes["labels.n_step"] = args.n_step
    if args.physics is not None:
        changes["env.physics"] = args.physics
    if path.exists():
        cfg = common.load_or_init_config(args.out, args.preset, args.seed)
        if changes and override(cfg, **changes) != cfg:
            # Only extending the loop is compatible with the finished stages.
            if set(changes) == {"iterations"}:
                cfg = override(cfg, **changes)
                common.save_config(args.out, cfg)
            else:
                raise common.StageError(f"{args.out} was run with other settings; use a fresh --out for {changes}")
        return cfg
    cfg = get_preset(args.preset)
    if args.seed is not None:
        changes["seed"] = args.seed
    cfg = override(cfg, **changes) if changes else cfg
    common.save_config(args.out, cfg)
    return cfg


def run_study(cfg: StudyConfig, out: Path) -> dict:
    """Runs (or resumes) every stage, then writes the report; returns results.json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prov = common.provenance()
    t0 = time.perf_counter()
    sft.run(cfg, out)
    blocks = []
    for it in range(cfg.iterations):
        collect.run(cfg, out, it)
        train_value.run(cfg, out, it)
        label.run(cfg, out, it)
        finetune.run(cfg, out, it)
        evaluate.run(cfg, out, it)
        blocks.append(results_block(cfg, out, it))
    results = dict(blocks[-1])
    from envs.g1.bendpick import describe_physics

    results["provenance"] = {
        **prov,
        "physics": describe_physics(glue.make_env(cfg).mj_model),
        "deviations": deviations(cfg),
        "system2": glue.system2_description(cfg),
        # Ψ0's sampler grid (1, 0.889, …, 0.112, 0.001, 0) and normalisation since issue 16; results made
        # before it used the uniform grid and clipped un-normalisation.
        "sampler": "psi0 flow-match Euler grid (diffusers, 1000 train steps, no shift)",
        "normalisation": "psi0 min-max (actions clipped, un-normalised without clipping; states constant->0, NaN->0)",
        "norm_widen": bool(cfg.sft.norm_widen),
        # The flow-matching loss reduction SFT/RECAP/BC-all trained with, and the rollouts' real-time
        # chunking (since issue 16: Ψ0's clean prefix from the previous chunk; before it, no RTC).
        "loss_reduction": glue.policy_config(cfg).loss_reduction,
        "rollout_rtc": glue.policy_config(cfg).rtc,
        "config": cfg.to_dict(),
        "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1),
    }
    if cfg.iterations > 1:
        results["iterations"] = blocks
    return results


def _stage_seconds(out: Path, it: int, field: str = "seconds") -> dict:
    """Per-stage wall seconds of iteration ``it`` from the stage markers (``field="timing"``: each stage's
    compile / CPU breakdown, ``common.stage_clock``), with the wall total."""

    def sec(name):
        path = out / name / common.MARKER
        if field == "timing":
            return common.read_json(path).get("timing") if path.exists() else None
        return common.read_json(path)["seconds"] if path.exists() else 0.0

    s = {}
    if it == 0:
        s["demos"] = sec("demos")
        s["sft"] = sec("sft")
    s["collect"] = sec(collect.stage_name(it))
    s["value"] = sec(train_value.stage_name(it))
    s["labels"] = sec(label.stage_name(it))
    for which in finetune.RUNS:
        s[f"finetune_{which}"] = sec(finetune.run_dir(it, which))
    for cond in report.CONDITIONS:
        if it == 0 or not cond.startswith("sft_"):
            s[f"evaluate_{cond}"] = sec(evaluate.stage_name(it, cond))
    if field == "timing":
        rows = [t for t in s.values() if t]
        s["total"] = {k: round(sum(t.get(k, 0) for t in rows), 1) for k in ("compile_s", "cpu_s", "compiled")}
        return s
    s["total"] = round(sum(s.values()), 2)
    return s


def results_block(cfg: StudyConfig, out: Path, it: int) -> dict:
    out = Path(out)
    col = common.read_json(out / collect.stage_name(it) / common.MARKER)["outputs"]
    vf = common.read_json(out / train_value.stage_name(it) / common.MARKER)["outputs"]
    lab = common.read_json(out / label.stage_name(it) / common.MARKER)["outputs"]
    demos = common.read_json(out / "demos" / common.MARKER)["outputs"]
    outcomes = evaluate.load_outcomes(out, it)
    results = report.build_results(
        preset=cfg.name,
        seed=cfg.seed,
        provenance={},
        outcomes=outcomes,
        value_function={
            **{k: vf.get(k) for k in train_value.VF_KEYS},
            **{k: lab.get(k) for k in train_value.LABEL_VF_KEYS},
        },
        rollouts={
            "episodes": col["episodes"],
            "success_rate": col["success_rate"],
            "collection_policy": col["policy"],
            "in_headroom_band": col["in_headroom_band"],
            "screened_rates": col["screened_rates"],
        },
        seconds=_stage_seconds(out, it),
        episode_limit=cfg.env.episode_length,
        extra={
            "iteration": it,
            "demos": demos,
            "labels": {k: lab.get(k) for k in ("thresholds", "positive_fraction", "num_decisions")},
            "value_function_details": vf,
            # Does the RECAP policy read its advantage token? Its flow-matching loss with the true vs the swapped
            # label on labelled rollout windows (finetune.label_swap_loss): the held-out rollouts when
            # finetune.holdout_fraction > 0, else RECAP's own training windows ("held_out": false).
            "label_swap_loss": common.read_json(out / finetune.run_dir(it, "recap") / common.MARKER)["outputs"].get(
                "label_swap_loss"
            ),
            "stage_timing": _stage_seconds(out, it, "timing"),
        },
    )
    return results


def write_outputs(cfg: StudyConfig, out: Path, results: dict) -> str:
    out = Path(out)
    it = cfg.iterations - 1
    col0 = common.read_json(out / collect.stage_name(0) / common.MARKER)["outputs"]
    demos = common.read_json(out / "demos" / common.MARKER)["outputs"]
    labels = report.table_labels(
        col0["checkpoint_step"], cfg.sft.steps, demos["demos"], results["rollouts"]["episodes"] * (it + 1)
    )
    calib_path = out / train_value.stage_name(it) / "calibration.json"
    calibration = json.loads(calib_path.read_text()) if calib_path.exists() else None
    if calibration:
        succ = [e for e in calibration if e["success"]]
        fail = [e for e in calibration if not e["success"]]
        pick = ([max(succ, key=lambda e: len(e["value"]))] if succ else []) + fail[:1]
        calibration = [dict(e, steps=np.arange(len(e["value"])) * cfg.env.replan_every) for e in pick]
    table = report.write_report(results, str(out), labels, calibration=calibration)
    try:
        write_gif(cfg, out, it)
    except (FileNotFoundError, ValueError) as e:
        print(f"(no GIF: {e})")
    return table


def write_gif(cfg: StudyConfig, out: Path, it: int) -> None:
    """A few evaluation episodes side by side: RECAP prompted high vs low on the same reset keys."""
    outcomes = evaluate.load_outcomes(out, it)
    hi, lo = evaluate.load_frames(out, "recap_high", it), evaluate.load_frames(out, "recap_low", it)
    common_ids = sorted(set(hi) & set(lo))
    if not common_ids:
        raise ValueError("no stored frames")
    sh, sl = outcomes["recap_high"].success, outcomes["recap_low"].success
    # Prefer episodes where the token changed the outcome (high succeeds, low fails), then any.
    ranked = sorted(common_ids, key=lambda i: (not (sh[i] and not sl[i]), not sh[i], i))
    cols = []
    for i in ranked[: max(1, cfg.evaluate.gif_episodes)]:
        cols.append((f"high ep{i} {'OK' if sh[i] else 'fail'}", hi[i]))
        cols.append((f"low ep{i} {'OK' if sl[i] else 'fail'}", lo[i]))
    report.write_gif(cols, str(out / "episodes_high_vs_low.gif"))


def main(argv=None) -> dict:
    import tyro

    args = tyro.cli(Args, args=argv, description="RECAP-Ψ on G1 BendPick: the whole study, resumable.")
    common.setup_jax()
    cfg = configure(args)
    print(f"RECAP-Ψ BendPick study: preset {cfg.name!r}, seed {cfg.seed}, out {args.out}", flush=True)
    print(f"  budget: {cfg.budget}", flush=True)
    results = run_study(cfg, args.out)
    table = write_outputs(cfg, args.out, results)
    print("\n" + table)
    tt = (results.get("stage_timing") or {}).get("total") or {}
    if tt:
        print(
            f"stage time: {results['seconds']['total']:.0f} s wall, of it {tt['compile_s']:.0f} s compiling "
            f"({tt['compiled']:.0f} programs compiled, the rest loaded from the persistent cache); "
            f"{tt['cpu_s']:.0f} CPU-s (per stage: results.json -> stage_timing)"
        )
    print(f"results: {Path(args.out) / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
