"""Stage 3: the distributional value function on all rollouts so far (paper §3.6, App. B).

    python -m experiments.train_value --out runs/smoke

Writes ``DIR/value/`` (``value_params.npz``, ``value_meta.json``, ``value_metrics.json``, the Fig. 4
calibration plot, ``values.npz`` = V̂ for every rollout decision point, keyed by episode id, read by
the label stage). With ``value_training.folds`` ≥ 2 (the CPU presets) V̂ is out of fold for every episode
(``value_training.cross_fit``) and the metrics are over all episodes; otherwise one episode-level stratified
split (seed 42). Metrics: step MSE vs the naive mean-return and the clock-only (mean return per decision
index) baselines fit on the training folds, episode/step AUC, within-index step AUC, Kendall τ, the goal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments import common, glue
from experiments.presets import StudyConfig

# results.json["value_function"]: the value stage's held-out metrics and baselines (on the same folds), the
# credit-assignment goal of issue 22, and (from the label stage) the share of "high" labels in failed episodes.
VF_KEYS = (
    "mse",
    "naive_mse",
    "clock_only_mse",
    "episode_auc",
    "step_auc",
    "within_bin_step_auc",
    "clock_only_step_auc",
    "kendall_tau",
    "kendall_p",
    "episodes",
    "folds",
    "labels_out_of_fold",
    "train_steps",
    "goal",
)
LABEL_VF_KEYS = ("high_label_failed_fraction", "failed_points_high_fraction")


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

        models = {
            "policy_params": glue.load_policy(Path(out) / "sft", glue.policy_config(cfg), collect.checkpoint_step(out)),
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
    # Calibration episodes for the report's Fig. 4: every episode with its out-of-fold V̂ (k-fold), or the
    # held-out split's episodes with the one model's V̂.
    data = vt.stage_data(episodes, vcfg, features)
    if vcfg.folds < 2:
        data = data.select(result.val_ids)
    v = np.zeros(len(data), np.float32)
    for eid, ve in values.items():
        sel = np.flatnonzero(data.episode_ids == eid)
        v[sel[np.argsort(data.index[sel])]] = ve
    calib = vt.calibration_episodes(v, data)
    with open(out_dir / "calibration.json", "w") as f:
        json.dump(
            [{k: np.asarray(x).tolist() if k in ("value", "return") else x for k, x in e.items()} for e in calib], f
        )
    return {
        **{k: _plain(metrics.get(k)) for k in VF_KEYS},
        "episodes": len(episodes),
        "val_episodes": len(data.episodes()[0]),
        "best_epoch": int(metrics["best_epoch"]),
        "backbone": vcfg.backbone,
        "clock_steps": vcfg.clock_steps,
        "return_definition": {"returns": vcfg.returns, "c_fail": vcfg.c_fail, "max_steps": vcfg.max_steps},
        "value_range": [vcfg.v_min, vcfg.v_max],
    }


def _plain(x):
    """JSON-plain metric: floats (NaN kept for the report to null), bools, ints, dicts of those; None."""
    if x is None or isinstance(x, bool | str):
        return x
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, int | np.integer):
        return int(x)
    return float(x)


def run(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    name = stage_name(it)
    cfg_slice = {
        "value": cfg.value,
        "value_training": cfg.value_training,
        "collect": cfg.collect,
        "env": cfg.env,
        "seed": cfg.seed,
    }
    return common.run_stage(
        out, name, cfg_slice, lambda: train(cfg, out, it), files_fn=lambda _: [f"{name}/values.npz"]
    )


def main(argv=None) -> None:
    common.stage_main(run, "Distributional value function on the rollouts (stage 3).", argv)


if __name__ == "__main__":
    main()
