"""Stage 3: the distributional value function on all rollouts so far (paper §3.6, App. B).

    python -m experiments.train_value --out runs/smoke

Writes ``DIR/value/`` (``value_params.npz``, ``value_meta.json``, ``value_metrics.json``, the Fig. 4
calibration plot, ``values.npz`` = V̂ for every rollout decision point, keyed by episode id, read by
the label stage). Held-out metrics (episode-level stratified split, seed 42): step MSE vs the naive
mean-return baseline, episode/step AUC, Kendall τ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments import common, glue
from experiments.presets import StudyConfig

VF_KEYS = ("mse", "naive_mse", "episode_auc", "step_auc", "kendall_tau", "kendall_p")


def stage_name(it: int) -> str:
    return "value" if it == 0 else f"value_it{it}"


def save_values(path: Path, values: dict[int, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{str(k): np.asarray(v, np.float32) for k, v in values.items()})
    tmp.replace(path)


def load_values(path: Path) -> dict[int, np.ndarray]:
    with np.load(path) as z:
        return {int(k): z[k] for k in z.files}


def train(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    from recap_jax import value_training as vt
    from recap_jax.data import EpisodeStore

    vcfg = glue.value_config(cfg)
    store = EpisodeStore(Path(out) / "rollouts")
    episodes = [
        e for e in store.iter_episodes() if e.tags.get("kind") == "rollout" and e.tags.get("iteration", 0) <= it
    ]
    if not episodes:
        raise common.StageError(f"no rollouts in {Path(out) / 'rollouts'}: run experiments.collect first")
    models = {}
    if vcfg.backbone == "system2":
        from experiments import collect

        marker = common.read_json(Path(out) / collect.stage_name(0) / common.MARKER)
        models = {
            "policy_params": glue.load_policy(
                Path(out) / "sft", glue.policy_config(cfg), marker["outputs"]["checkpoint_step"]
            ),
            "prompt": glue.INSTRUCTION,
        }
    features = vt.features_for(vcfg, **models)
    out_dir = Path(out) / stage_name(it)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = common.JsonlLogger(out_dir / "metrics.jsonl", echo=True)
    result, metrics, values = vt.value_stage(
        episodes, vcfg, str(out_dir), features=features, log=lambda r: log(r["epoch"], r)
    )
    save_values(out_dir / "values.npz", values)
    # The calibration episodes of the held-out split, for the report's Fig. 4.
    data = vt.decision_points(episodes, returns=vcfg.returns, max_steps=vcfg.max_steps, c_fail=vcfg.c_fail)
    if features is not None:
        data = data.with_inputs(np.asarray(features(data.inputs), np.float32))
    va = data.select(result.val_ids)
    calib = vt.calibration_episodes(vt.predict(result.params, va.inputs, va.states), va)
    with open(out_dir / "calibration.json", "w") as f:
        json.dump(
            [{k: np.asarray(v).tolist() if k in ("value", "return") else v for k, v in e.items()} for e in calib], f
        )
    return {
        **{k: float(metrics[k]) if metrics.get(k) is not None else None for k in VF_KEYS},
        "episodes": len(episodes),
        "val_episodes": len(result.val_ids),
        "best_epoch": int(result.best_epoch),
        "backbone": vcfg.backbone,
    }


def run(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    name = stage_name(it)
    cfg_slice = {"value": cfg.value, "value_training": cfg.value_training, "collect": cfg.collect, "seed": cfg.seed}
    return common.run_stage(
        out, name, cfg_slice, lambda: train(cfg, out, it), files_fn=lambda _: [f"{name}/values.npz"]
    )


def main(argv=None) -> None:
    common.stage_main(run, "Distributional value function on the rollouts (stage 3).", argv)


if __name__ == "__main__":
    main()
