"""``make demo``'s first stages on the demo preset's fixed seed, then a reduced study on top of them.

* ``demo_runs`` (module fixture): the demos, SFT, screening and collection of ``make demo``, run as
  ``make demo`` runs them (``tests/_demo_collect.py``: its own process, one host device, the Makefile's
  XLA flags, so its programs and numbers are the demo's), then, in the same process on a copy, the remaining
  stages of a reduced study (value, labels, RECAP and BC-all for 2 steps, evaluation on 8 episodes:
  ``_demo_collect.ci_config``), which reuse the reset and policy-wave programs the collection compiled.
* ``test_demo_preset_collects_both_outcomes``: that collection has successes and failures (issue #24: a
  demo whose every rollout failed printed a table of zeros).
* ``test_reduced_study_end_to_end_and_resume``: the reduced study's outputs, then a second invocation here that
  skips every stage. The value function sees both outcomes there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs
from envs.g1.bendpick import describe_physics
from experiments import common, glue, presets, recap_bendpick, report
from recap_jax import policy
from recap_jax.data import EpisodeStore
from recap_jax.data.loader import LoaderConfig, WindowLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _demo_collect import ci_config, demo_preset  # noqa: E402


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> tuple[Path, Path]:
    """(``make demo``'s demos, SFT, screening and collection; the reduced study on a copy of it)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_cpu_enable_concurrency_optimized_scheduler=false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    base = tmp_path_factory.mktemp("demo")
    out, reduced = base / "run", base / "reduced"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_demo_collect.py"), str(out), "--reduced", str(reduced)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, reduced


@pytest.fixture(scope="module")
def demo_run(demo_runs) -> Path:
    return demo_runs[0]


@pytest.mark.slow
def test_demo_preset_collects_both_outcomes(demo_run):
    """The demo's collection on its fixed seed has successes and failures: otherwise the value function,
    the labels and every comparison ``make demo`` prints are degenerate. (Faithful, not cheap: the outcome
    depends on the demos, the whole SFT run and the screen, so the check runs them as ``make demo`` does.)"""
    assert demo_preset() == "demo"
    cfg = presets.get_preset("demo")
    col = common.read_json(demo_run / "collect" / common.MARKER)["outputs"]
    assert col["episodes"] == cfg.collect.episodes
    assert 0 < col["successes"] < col["episodes"], col
    # The SFT policy learned from the configured number of successful expert demos.
    demos = common.read_json(demo_run / "demos" / common.MARKER)["outputs"]
    assert demos["demos"] == cfg.demos.num_demos == demos["demo_successes"], demos


@pytest.mark.slow
def test_reduced_study_end_to_end_and_resume(demo_runs, capsys):
    out = demo_runs[1]
    error = out / "error.txt"
    assert not error.exists(), error.read_text()
    cfg = ci_config()
    assert common.read_config(out) == cfg
    table = (out / "table1.md").read_text()

    saved = json.loads((out / "results.json").read_text())
    assert saved["preset"] == "demo" and saved["seed"] == cfg.seed
    assert set(saved["conditions"]) == set(report.CONDITIONS)
    for row in saved["conditions"].values():
        assert row["episodes"] == cfg.evaluate.episodes and 0.0 <= row["ci_low"] <= row["rate"] <= row["ci_high"] <= 1.0
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
    assert swap["windows"] > 0 and swap["true"] > 0 and swap["swapped"] > 0 and swap["held_out"] is True
    assert swap["swapped_minus_true_se"] is not None
    # The held-out rollouts (a quarter of each outcome) trained neither RECAP nor BC-all.
    held = {
        w: common.read_json(out / "finetune" / w / common.MARKER)["outputs"]["held_out_episodes"]
        for w in ("recap", "bc_all")
    }
    assert held["recap"] == held["bc_all"] and 0 < len(held["recap"]) < cfg.collect.episodes
    held_outcomes = [e.success for e in store.load(held["recap"])]
    assert any(held_outcomes) and not all(held_outcomes)
    assert saved["rollouts"]["episodes"] == cfg.collect.episodes
    # Both outcomes in the rollouts: the naive mean-return baseline has something to miss.
    assert saved["value_function"]["naive_mse"] > 0, saved["value_function"]
    # Per-stage timing from the markers (common.stage_clock), for the stages this invocation ran.
    assert saved["stage_timing"]["value"]["cpu_s"] >= 0 and saved["stage_timing"]["total"]["compile_s"] >= 0
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
    assert json.loads(json.dumps(again["conditions"])) == saved["conditions"]
