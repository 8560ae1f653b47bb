"""A reduced RECAP-Ψ study end to end on CPU: every stage for real, then resume skips every stage.

The shapes (8 envs, 216-step episodes, tiny models, batch 16, 48x80 images) are the ``smoke`` preset's,
so the compiled expert wave, policy wave and train step are shared with ``make demo`` through the
persistent compilation cache; only the counts shrink (1 wave per stage, a few train steps).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import envs
from envs.g1.bendpick import describe_physics
from experiments import common, glue, presets, recap_bendpick, report
from recap_jax import policy
from recap_jax.data import EpisodeStore
from recap_jax.data.loader import LoaderConfig, WindowLoader


def ci_config() -> presets.StudyConfig:
    return presets.override(
        presets.get_preset("smoke"),
        **{
            "demos.successful_only": False,
            "sft.steps": 4,
            "sft.init_step": 2,
            "sft.log_every": 2,
            "collect.episodes": 8,
            "value_training.epochs": 1,
            "finetune.steps": 2,
            "finetune.log_every": 1,
            "evaluate.episodes": 8,
        },
    )


@pytest.mark.slow
def test_reduced_study_end_to_end_and_resume(tmp_path, capsys):
    cfg = ci_config()
    out = tmp_path / "run"
    common.save_config(out, cfg)
    results = recap_bendpick.run_study(cfg, out)
    table = recap_bendpick.write_outputs(cfg, out, results)

    saved = json.loads((out / "results.json").read_text())
    assert saved["preset"] == "smoke" and saved["seed"] == cfg.seed
    assert set(saved["conditions"]) == set(report.CONDITIONS)
    for row in saved["conditions"].values():
        assert row["episodes"] == 8 and 0.0 <= row["ci_low"] <= row["rate"] <= row["ci_high"] <= 1.0
        assert set(row["failures"]) >= {"total", "fell", "timeout"}
    for cmp in saved["comparisons"].values():
        assert {"diff", "diff_ci_low", "diff_ci_high", "z", "p", "mcnemar_p"} <= set(cmp)
        assert cmp["paired_ci_low"] <= cmp["diff"] <= cmp["paired_ci_high"]  # paired: same 8 eval episodes
    # RECAP-high and RECAP-low are one checkpoint (same step and params hash) under two prompts.
    hi, lo = (common.read_json(out / "evaluate" / c / common.MARKER) for c in ("recap_high", "recap_low"))
    assert (
        hi["config"]["checkpoint"] == lo["config"]["checkpoint"] and hi["outputs"]["prompt"] != lo["outputs"]["prompt"]
    )
    # Labels reach RECAP's prompts: the label stage wrote int8 labels for the rollouts' decision points,
    # about ``positive_fraction`` of them high, and the fine-tuning loader turns each into its prompt.
    store = EpisodeStore(out / "rollouts")
    labels = np.concatenate([np.asarray(v) for v in store.read_annotation("label").values()])
    assert labels.dtype == np.int8 and set(np.unique(labels).tolist()) <= {0, 1}
    assert abs(labels.mean() - cfg.labels.positive_fraction) <= 0.15, labels.mean()
    pcfg = glue.policy_config(cfg)
    lcfg = LoaderConfig(
        batch_size=8, horizon=pcfg.chunk, seed=0, max_prompt_len=pcfg.prompt_max_len, label_annotation="label"
    )
    with WindowLoader(store, lcfg, prefetch=0, process_index=0, process_count=1) as loader:
        ids = np.concatenate([next(loader)["prompt_ids"] for _ in range(loader.steps_per_epoch)])
    is_hi, is_lo = ((ids == policy.tokenize(pcfg, [glue.prompt_for(word)])[0]).all(axis=1) for word in ("high", "low"))
    assert (is_hi | is_lo).all() and is_hi.any() and is_lo.any()
    assert abs(is_hi.mean() - labels.mean()) <= 0.15, (is_hi.mean(), labels.mean())
    tv = recap_bendpick.train_value
    vf = saved["value_function"]
    assert set(vf) == set(tv.VF_KEYS) | set(tv.LABEL_VF_KEYS)
    # Issue 22: labels from out-of-fold V̂, the clock-only baseline on the same folds, the goal reported.
    assert vf["labels_out_of_fold"] is True and vf["folds"] == cfg.value_training.folds
    assert vf["clock_only_mse"] is not None and isinstance(vf["goal"]["met"], bool)
    swap = saved["label_swap_loss"]
    assert swap["windows"] > 0 and swap["true"] > 0 and swap["swapped"] > 0 and swap["held_out"] is False
    assert saved["rollouts"]["episodes"] == 8
    assert saved["seconds"]["total"] > 0 and saved["provenance"]["deviations"]
    assert saved["provenance"]["physics"] == describe_physics(envs.make("G1BendPick-v0").mj_model)  # the default
    for name in ("table1.md", "fig2_success_rates.png", "fig6_differences.png"):
        assert (out / name).stat().st_size > 0
    assert "RECAP-high" in table and "BC-all" in table

    # A second invocation finds every stage done and only rebuilds the report.
    capsys.readouterr()
    again = recap_bendpick.run_study(cfg, out)
    log = capsys.readouterr().out
    assert "running" not in log and log.count("skipped") >= 10
    assert again["conditions"] == results["conditions"]
