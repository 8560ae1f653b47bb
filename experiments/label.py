"""Stage 4: advantages and int8 advantage labels for every rollout decision point (paper §3.7).

    python -m experiments.label --out runs/smoke

A_i = r_i − V̂(o_i) (or N-step with ``labels.n_step``), η = the global (1 − f) quantile, label high iff
A_i ≥ η. Writes the ``value``, ``return``, ``advantage`` and ``label`` annotations of ``DIR/rollouts``.
"""

from __future__ import annotations

from pathlib import Path

from experiments import common, glue, train_value
from experiments.presets import StudyConfig


def stage_name(it: int) -> str:
    return "labels" if it == 0 else f"labels_it{it}"


def label(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    from recap_jax import labeling
    from recap_jax.data import EpisodeStore

    values = train_value.load_values(Path(out) / train_value.stage_name(it) / "values.npz")
    store = EpisodeStore(Path(out) / "rollouts")
    summary = labeling.label_store(store, values, glue.label_config(cfg), episode_ids=sorted(values))
    return dict(summary)


def run(cfg: StudyConfig, out: Path, it: int = 0) -> dict:
    cfg_slice = {"labels": cfg.labels, "value": cfg.value, "value_training": cfg.value_training, "seed": cfg.seed}
    return common.run_stage(out, stage_name(it), cfg_slice, lambda: label(cfg, out, it))


def main(argv=None) -> None:
    common.stage_main(run, "Advantage labels from the value function (stage 4).", argv)


if __name__ == "__main__":
    main()
