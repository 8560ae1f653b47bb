"""Stage 6: closed-loop success of every condition on the same held-out reset keys.

    python -m experiments.evaluate --out runs/smoke

Conditions (paper Table 1): ``sft_init`` (the collection checkpoint), ``sft_final`` (SFT at
``sft.steps``), ``bc_all``, ``recap_low`` and ``recap_high`` (the one RECAP policy prompted with each
token; ``evaluate.cfg_beta`` applies classifier-free guidance to ``recap_high``). Episode ``i`` of every
condition starts from the same state (``glue.key_space(cfg, "eval")``: seed ``evaluate.key_seed + seed``,
namespace EVAL), so outcomes pair by index.
Writes ``DIR/evaluate/<condition>.npz`` (success, steps, fell, cause; the first episodes' egocentric
frames for the GIF) and a marker per condition, so a killed evaluation resumes per condition.

Any checkpoint can be evaluated on its own: ``--checkpoint DIR/finetune/recap --label high``; any
SIMPLE-protocol policy server (``python -m recap_jax.serve``, Ψ0's, …) through HTTP on the same held-out keys:
``--policy-url http://127.0.0.1:22085`` (``evaluate_url``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np

from experiments import collect, common, finetune, glue
from experiments.presets import StudyConfig
from experiments.report import CONDITIONS, Outcomes

GIF_POOL = 16  # episodes whose frames are kept per RECAP condition (the GIF picks among them)


def stage_name(it: int, cond: str) -> str:
    if cond.startswith("sft_"):
        return f"evaluate/{cond}"  # the SFT conditions do not change across iterations
    return f"evaluate/{cond}" if it == 0 else f"evaluate_it{it}/{cond}"


def condition_spec(cfg: StudyConfig, out: Path, cond: str, it: int = 0) -> dict:
    """Checkpoint directory, step, policy config, prompt label and β of a condition."""
    if cond == "sft_init":
        return {"dir": "sft", "step": collect.checkpoint_step(out), "dropout": 0.0, "label": None, "beta": 1.0}
    if cond == "sft_final":
        return {"dir": "sft", "step": cfg.sft.steps, "dropout": 0.0, "label": None, "beta": 1.0}
    if cond == "bc_all":
        return {"dir": finetune.run_dir(it, "bc_all"), "step": None, "dropout": 0.0, "label": None, "beta": 1.0}
    label = {"recap_low": "low", "recap_high": "high"}[cond]
    beta = cfg.evaluate.cfg_beta if (cond == "recap_high" and cfg.evaluate.cfg_beta is not None) else 1.0
    return {
        "dir": finetune.run_dir(it, "recap"),
        "step": None,
        "dropout": cfg.finetune.indicator_dropout,
        "label": label,
        "beta": beta,
    }


def evaluate_checkpoint(
    cfg: StudyConfig, ckpt_dir: Path, *, step, dropout: float, label, beta: float, keep=(), num_episodes=None
):
    """Closed-loop evaluation of one checkpoint on the held-out keys (``num_episodes``, default
    ``evaluate.episodes``)."""
    env = glue.make_env(cfg)
    params = glue.load_policy(ckpt_dir, glue.policy_config(cfg, dropout), step)
    seed, namespace = glue.key_space(cfg, "eval")
    return glue.evaluate_policy(
        env,
        params,
        num_episodes=cfg.evaluate.episodes if num_episodes is None else num_episodes,
        num_envs=cfg.evaluate.num_envs,
        seed=seed,
        namespace=namespace,
        prompt=glue.prompt_for(label),
        ta=cfg.env.replan_every,
        beta=beta,
        keep_images=tuple(keep),
    )


def evaluate_url(cfg: StudyConfig, url: str, *, num_episodes: int | None = None, num_envs: int | None = None):
    """Closed-loop evaluation through a SIMPLE-protocol policy server at ``url`` on the study's held-out keys
    (``glue.key_space(cfg, "eval")``: episode ``i`` starts where every in-process condition's episode ``i``
    does). The env renders SIMPLE's 360×640 frame; the server gets the bare instruction (it adds its own
    advantage text). Defaults: ``evaluate.episodes`` / ``evaluate.num_envs``.

    Returns ``recap_jax.serve.client.evaluate_remote``'s result (``rollout.evaluate``'s format: episode_ids,
    success, n_steps, cause), which ``save_outcomes`` writes like an in-process evaluation.
    """
    from recap_jax.serve.client import FRAME_SIZE, evaluate_remote

    env = glue.make_env(cfg, image_size=FRAME_SIZE)
    seed, namespace = glue.key_space(cfg, "eval")
    return evaluate_remote(
        env,
        url,
        cfg.evaluate.episodes if num_episodes is None else num_episodes,
        instruction=glue.INSTRUCTION,
        seed=seed,
        namespace=namespace,
        num_envs=cfg.evaluate.num_envs if num_envs is None else num_envs,
        progress=True,
    )


def save_outcomes(res: dict, path: Path) -> Outcomes:
    """Writes an evaluation's paired outcomes to ``path`` (``Outcomes`` npz) and its failure causes and kept
    frames beside it (``<stem>_detail.npz``); returns the outcomes.

    ``res``: ``glue.evaluate_policy``'s result (``success`` bool[N], ``n_steps`` int[N], ``cause`` int[N]
    indexing ``rollout.FAILURE_CAUSES``, ``images`` {episode: u8[T, H, W, 3]}).
    """
    from recap_jax import rollout

    cause = np.asarray(res["cause"], np.int8)
    outcomes = Outcomes(
        success=res["success"], steps=res["n_steps"], fell=cause == rollout.FAILURE_CAUSES.index("fell")
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    outcomes.save(str(path))
    images = {f"images_{k}": v for k, v in res.get("images", {}).items()}
    np.savez(path.with_name(path.stem + "_detail.npz"), cause=cause, **images)
    return outcomes


def evaluate_condition(cfg: StudyConfig, out: Path, cond: str, it: int = 0) -> dict:
    from recap_jax import rollout

    spec = condition_spec(cfg, out, cond, it)
    keep = range(min(GIF_POOL, cfg.evaluate.episodes)) if cond in ("recap_high", "recap_low") else ()
    res = evaluate_checkpoint(
        cfg,
        Path(out) / spec["dir"],
        step=spec["step"],
        dropout=spec["dropout"],
        label=spec["label"],
        beta=spec["beta"],
        keep=keep,
        num_episodes=cfg.evaluate.condition_episodes(cond),
    )
    outcomes = save_outcomes(res, Path(out) / f"{stage_name(it, cond)}.npz")
    cause = np.asarray(res["cause"], np.int8)
    return {
        "condition": cond,
        **{k: v for k, v in spec.items()},
        "prompt": glue.prompt_for(spec["label"]),
        "episodes": outcomes.episodes,
        "successes": int(outcomes.success.sum()),
        "rate": float(outcomes.success.mean()) if outcomes.episodes else None,
        "causes": {c: int((cause == i).sum()) for i, c in enumerate(rollout.FAILURE_CAUSES)},
    }


def load_outcomes(out: Path, it: int = 0) -> dict[str, Outcomes]:
    return {c: Outcomes.load(str(Path(out) / f"{stage_name(it, c)}.npz")) for c in CONDITIONS}


def load_frames(out: Path, cond: str, it: int = 0) -> dict[int, np.ndarray]:
    path = Path(out) / f"{stage_name(it, cond)}_detail.npz"
    with np.load(path) as z:
        return {int(k.split("_", 1)[1]): z[k] for k in z.files if k.startswith("images_")}


def checkpoint_identity(run_dir: str | Path, step: int | None = None) -> dict:
    """Identity of one policy checkpoint: its step (``None`` resolves to the latest complete step) and the
    SHA-256 of its ``params`` files (relative paths and bytes, in sorted order), so a copied, retrained or
    swapped checkpoint is told apart from the one an evaluation was made with.

    Returns: {"step": int, "params_sha256": str}.
    """
    sub = Path(run_dir) / "checkpoints"
    steps = sorted(int(d.name) for d in sub.iterdir() if d.is_dir() and d.name.isdigit()) if sub.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"no checkpoints at {sub}")
    step = steps[-1] if step is None else int(step)
    root = sub / str(step) / "params"
    files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no params files for step {step} at {root}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return {"step": step, "params_sha256": h.hexdigest()}


def marker_slice(cfg: StudyConfig, cond: str, checkpoint: dict | None = None) -> dict:
    """What a condition's evaluation marker is keyed by: the eval settings, env, seed, the evaluation key
    space, the condition's prompt/β/dropout and (``checkpoint``, from ``checkpoint_identity``) the
    checkpoint's step and params hash. β reaches only ``recap_high``, so the other conditions' markers
    (and outcomes) stay valid when a run directory is reused with ``--cfg-beta``."""
    settings = cfg.evaluate if cond == "recap_high" else dataclasses.replace(cfg.evaluate, cfg_beta=None)
    out = {"evaluate": settings, "env": cfg.env, "seed": cfg.seed, "condition": cond}
    out["eval_keys"] = list(glue.key_space(cfg, "eval"))
    out["rollout_rtc"] = glue.policy_config(cfg).rtc  # closed-loop RTC changes the rollouts (issue 16)
    if checkpoint is not None:
        out["checkpoint"] = dict(checkpoint)
    return out


def run(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    """Evaluates every condition; a condition whose marker matches this checkpoint (step + params hash)
    and these settings is skipped, one whose marker does not is re-evaluated (with a note)."""
    markers = {}
    for cond in CONDITIONS:
        name = stage_name(it, cond)
        spec = condition_spec(cfg, out, cond, it)
        cfg_slice = marker_slice(cfg, cond, checkpoint_identity(Path(out) / spec["dir"], spec["step"]))
        markers[cond] = common.run_stage(
            out,
            name,
            cfg_slice,
            lambda cond=cond: evaluate_condition(cfg, out, cond, it),
            files_fn=lambda _, name=name: [f"{name}.npz"],
            rerun_mismatch=True,
        )
    return markers


@dataclasses.dataclass(frozen=True)
class EvalArgs(common.StageArgs):
    """Evaluate the study's conditions, or one checkpoint (``--checkpoint``) under a prompt label.

    Attributes:
      checkpoint: a policy run directory (e.g. DIR/finetune/recap); evaluates only it.
      step: checkpoint step (default: latest).
      label: "high" | "low" | None (bare instruction).
      beta: CFG weight (needs a checkpoint trained with indicator dropout).
      indicator_dropout: the checkpoint's training indicator dropout (for its config).
      policy_url: evaluate the policy behind a SIMPLE-protocol server instead (e.g. http://127.0.0.1:22085).
      episodes: with --policy-url, the number of held-out episodes (default: the preset's).
      num_envs: with --policy-url, envs stepped together and requests in flight (default: the preset's).
      save: with --checkpoint or --policy-url, also write the per-episode outcomes there (an ``Outcomes`` .npz,
        paired by index with the study's ``DIR/evaluate/<condition>.npz``) and ``<stem>_detail.npz`` beside it.
    """

    checkpoint: Path | None = None
    step: int | None = None
    label: str | None = None
    beta: float = 1.0
    indicator_dropout: float = 0.0
    save: Path | None = None
    policy_url: str | None = None
    episodes: int | None = None
    num_envs: int | None = None


def main(argv=None) -> None:
    import tyro

    args = tyro.cli(EvalArgs, args=argv, description="Closed-loop evaluation on the held-out reset keys (stage 6).")
    common.setup_jax()
    if args.policy_url is not None:
        # read only: the run directory (if any) gives the held-out key space; nothing is written there
        if (Path(args.out) / "config.json").exists():
            cfg = common.read_config(args.out)
        else:
            from experiments.presets import get_preset

            cfg = get_preset(args.preset or "smoke")
            cfg = cfg if args.seed is None else dataclasses.replace(cfg, seed=args.seed)
            if args.preset is None:  # the env (episode length, image size, randomisation) and keys come from it
                print(
                    f"no {Path(args.out) / 'config.json'}: evaluating on preset {cfg.name!r}'s env and keys "
                    "(pass --out RUN_DIR or --preset NAME for another preset's)",
                    file=sys.stderr,
                )
        res = evaluate_url(cfg, args.policy_url, num_episodes=args.episodes, num_envs=args.num_envs)
        what = args.policy_url
    else:
        cfg = common.load_or_init_config(args.out, args.preset, args.seed)
        if args.checkpoint is None:
            run(cfg, args.out)
            return
        res = evaluate_checkpoint(
            cfg, args.checkpoint, step=args.step, dropout=args.indicator_dropout, label=args.label, beta=args.beta
        )
        what = f"{args.checkpoint} label={args.label} beta={args.beta}"
    n, k = len(res["success"]), int(np.sum(res["success"]))
    print(f"{what}: {k}/{n} = {k / max(n, 1):.1%}")
    if args.save is not None:
        save_outcomes(res, args.save)
        print(f"outcomes: {args.save}")


if __name__ == "__main__":
    main()
