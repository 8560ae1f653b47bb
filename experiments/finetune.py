"""Stage 5: RECAP (advantage token in the prompt) and BC-all (no token) on the same rollouts.

    python -m experiments.finetune --out runs/smoke

Both start from the SFT collection checkpoint (no pretrained Ψ0 base exists here; ``finetune.init =
"scratch"`` starts both from a fresh initialisation instead), with the same steps, optimiser, batch
size, seed (so the same window order) and data; they differ only in the prompt: RECAP trains on
``"advantage: high|low. <instruction>"`` from the ``label`` annotation (dropped to the bare instruction
with probability ``finetune.indicator_dropout``), BC-all on the bare instruction.
Writes ``DIR/finetune/recap/`` and ``DIR/finetune/bc_all/`` (orbax checkpoints, logs).
"""

from __future__ import annotations

from pathlib import Path

from experiments import collect, common, glue
from experiments.presets import StudyConfig

RUNS = ("recap", "bc_all")


def run_dir(it: int, which: str) -> str:
    return f"finetune/{which}" if it == 0 else f"finetune_it{it}/{which}"


def init_params(cfg: StudyConfig, out: Path, which: str):
    """The shared starting point: the SFT collection checkpoint (or a fresh init with its norm stats)."""
    import jax

    from recap_jax import policy

    marker = common.read_json(Path(out) / collect.stage_name(0) / common.MARKER)
    sft = glue.load_policy(Path(out) / "sft", glue.policy_config(cfg), marker["outputs"]["checkpoint_step"])
    if cfg.finetune.init == "scratch":
        sft = policy.init_policy(glue.policy_config(cfg), jax.random.key(cfg.seed + 1), sft.norm)
    dropout = cfg.finetune.indicator_dropout if which == "recap" else 0.0
    return policy.replace_config(sft, indicator_dropout=dropout) if dropout else sft


def finetune(cfg: StudyConfig, out: Path, which: str, it: int = 0) -> dict:
    from recap_jax import train

    params0 = init_params(cfg, out, which)
    d = Path(out) / run_dir(it, which)
    _, history = glue.train_policy(
        params0=params0,
        store_root=Path(out) / "rollouts",
        kinds=("rollout",),
        label_annotation="label" if which == "recap" else None,
        settings=cfg.finetune,
        num_steps=cfg.finetune.steps,
        save_every=cfg.finetune.steps,
        out_dir=d,
        seed=cfg.seed,
        assets=train.make_assets(
            params0.norm, config=params0.config, preset=cfg.name, seed=cfg.seed, stage=f"finetune/{which}", iteration=it
        ),
    )
    return {
        "run": which,
        "iteration": it,
        "init": cfg.finetune.init,
        "steps": cfg.finetune.steps,
        "indicator_dropout": params0.config.indicator_dropout,
        "final_loss": history[-1]["loss"] if history else None,
    }


def run(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    cfg_slice = {"finetune": cfg.finetune, "policy": cfg.policy, "labels": cfg.labels, "seed": cfg.seed}
    return {
        which: common.run_stage(out, run_dir(it, which), cfg_slice, lambda which=which: finetune(cfg, out, which, it))
        for which in RUNS
    }


def main(argv=None) -> None:
    common.stage_main(run, "RECAP and BC-all fine-tuning on the labelled rollouts (stage 5).", argv)


if __name__ == "__main__":
    main()
