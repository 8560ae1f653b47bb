"""Run-directory mechanics: config round trip, stage markers (skip / rerun / mismatch), CLI configuration."""

from __future__ import annotations

import pytest

from experiments import common, presets, recap_bendpick


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_config_round_trip(name):
    cfg = presets.override(presets.get_preset(name), **{"seed": 7, "labels.n_step": 5})
    assert common.config_from_dict(cfg.to_dict()) == cfg


def test_load_or_init_config_pins_the_run(tmp_path):
    cfg = common.load_or_init_config(tmp_path, "smoke", seed=3)
    assert (cfg.name, cfg.seed) == ("smoke", 3)
    assert common.load_or_init_config(tmp_path, None) == cfg
    with pytest.raises(common.StageError, match="smoke"):
        common.load_or_init_config(tmp_path, "gpu")
    with pytest.raises(common.StageError, match="seed"):
        common.load_or_init_config(tmp_path, None, seed=4)


def test_read_config_is_read_only(tmp_path):
    """``read_config`` (the policy server's, ``evaluate --policy-url``'s) never writes; a missing or broken
    config.json is a ValueError naming it."""
    with pytest.raises(ValueError, match=r"config\.json: missing"):
        common.read_config(tmp_path)
    assert list(tmp_path.iterdir()) == []
    cfg = common.load_or_init_config(tmp_path, "smoke", seed=3)
    assert common.read_config(tmp_path) == cfg
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not a study config"):
        common.read_config(tmp_path)


def test_stage_skip_rerun_and_mismatch(tmp_path):
    calls = []

    def work():
        calls.append(1)
        (tmp_path / "st").mkdir(exist_ok=True)
        (tmp_path / "st" / "out.txt").write_text("x")
        return {"value": 1.5}

    files = lambda _: ["st/out.txt"]
    m = common.run_stage(tmp_path, "st", {"a": 1}, work, files_fn=files)
    assert m["outputs"] == {"value": 1.5} and len(calls) == 1
    common.run_stage(tmp_path, "st", {"a": 1}, work, files_fn=files)
    assert len(calls) == 1  # skipped: marker, config and outputs all valid
    (tmp_path / "st" / "out.txt").unlink()
    common.run_stage(tmp_path, "st", {"a": 1}, work, files_fn=files)
    assert len(calls) == 2  # a listed output went missing: rerun
    with pytest.raises(common.StageError, match="different config"):
        common.run_stage(tmp_path, "st", {"a": 2}, work, files_fn=files)


def test_marker_leaves_out_new_settings_at_their_default(tmp_path):
    """``collect.temperatures`` at its default is not in a stage marker (markers of older runs stay valid); any
    other value is, and a change of it is a config mismatch."""
    cfg = presets.get_preset("smoke")
    assert "temperatures" not in common._jsonable({"collect": cfg.collect})["collect"]
    assert "train_seed" not in common._jsonable({"finetune": cfg.finetune})["finetune"]
    mixed = presets.override(cfg, **{"collect.temperatures": (1.0, 1.1)})
    assert common._jsonable({"collect": mixed.collect})["collect"]["temperatures"] == [1.0, 1.1]
    assert common.config_from_dict(mixed.to_dict()) == mixed
    work = lambda: {}
    common.run_stage(tmp_path, "st", {"collect": cfg.collect}, work)
    with pytest.raises(common.StageError, match="different config"):
        common.run_stage(tmp_path, "st", {"collect": mixed.collect}, work)
    for bad in ((), (1.0, 0.0), (-1.0,)):
        with pytest.raises(ValueError, match=r"collect\.temperatures"):
            presets.override(cfg, **{"collect.temperatures": bad})


def test_training_replicates_change_only_the_training_seed():
    """finetune.train_seed = 0 trains with the study seed (the runs made before it existed); k > 0 with its own."""
    from experiments import finetune

    cfg = presets.override(presets.get_preset("smoke"), seed=3)
    assert finetune.training_seed(cfg) == 3
    seeds = {finetune.training_seed(presets.override(cfg, **{"finetune.train_seed": k})) for k in range(4)}
    assert len(seeds) == 4
    rep = presets.override(cfg, **{"finetune.train_seed": 2})
    assert common._jsonable({"finetune": rep.finetune})["finetune"]["train_seed"] == 2
    assert common.config_from_dict(rep.to_dict()) == rep
    with pytest.raises(ValueError, match="train_seed"):
        finetune.training_seed(presets.override(cfg, **{"finetune.train_seed": -1}))


def test_failed_stage_leaves_no_marker(tmp_path):
    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        common.run_stage(tmp_path, "st", {}, boom)
    assert common.stage_done(tmp_path, "st", {}) is None


def test_cli_configure(tmp_path):
    out = tmp_path / "r"
    cfg = recap_bendpick.configure(
        recap_bendpick.Args(out=out, preset="smoke", seed=2, indicator_dropout=0.3, cfg_beta=1.5)
    )
    assert cfg.seed == 2 and cfg.finetune.indicator_dropout == 0.3 and cfg.evaluate.cfg_beta == 1.5
    # Re-invoking resumes the recorded study; extending the loop is allowed, other changes are not.
    assert recap_bendpick.configure(recap_bendpick.Args(out=out)) == cfg
    assert recap_bendpick.configure(recap_bendpick.Args(out=out, iterations=2)).iterations == 2
    with pytest.raises(common.StageError):
        recap_bendpick.configure(recap_bendpick.Args(out=out, n_step=3))
    with pytest.raises(ValueError, match="Did you mean 'smoke'"):
        recap_bendpick.configure(recap_bendpick.Args(out=tmp_path / "x", preset="smok"))


def test_seed_spread():
    import numpy as np

    from experiments import report, seeds

    def results(k):
        outs = {
            c: report.Outcomes(success=np.arange(10) < k + i, steps=np.full(10, 100))
            for i, c in enumerate(report.CONDITIONS)
        }
        return report.build_results(
            preset="x", seed=k, provenance={}, outcomes=outs, value_function=None, rollouts=None, seconds={}
        )

    def outs(k):
        return {
            c: report.Outcomes(success=np.arange(10) < k + i, steps=np.full(10, 100))
            for i, c in enumerate(report.CONDITIONS)
        }

    agg = seeds.aggregate({0: results(1), 1: results(3)}, {0: outs(1), 1: outs(3)})
    # recap_high is condition index 4, recap_low 3: per seed 1 episode high-only, none low-only.
    assert agg["comparisons"]["high_vs_low"]["pooled_mcnemar"] == {"p": 2 / 4, "n10": 2, "n01": 0}
    # recap_high vs bc_all (index 2): 2 high-only episodes per seed -> 4 vs 0, p = 2/16.
    assert agg["comparisons"]["recap_vs_bc"]["pooled_mcnemar"] == {"p": 2 / 16, "n10": 4, "n01": 0}
    assert "0.5 [2 vs 0]" in seeds.markdown(agg)
    assert "pooled_mcnemar" not in seeds.aggregate({0: results(1)})["comparisons"]["high_vs_low"]
    row = agg["conditions"]["sft_init"]
    assert row["rate"]["values"] == [0.1, 0.3] and abs(row["rate"]["mean"] - 0.2) < 1e-12
    assert abs(row["rate"]["std"] - np.std([0.1, 0.3], ddof=1)) < 1e-12
    assert row["pooled"]["successes"] == 4 and row["pooled"]["episodes"] == 20
    assert abs(agg["comparisons"]["high_vs_low"]["diff"]["mean"] - 0.1) < 1e-12
    assert "high_vs_low" in seeds.markdown(agg)


def test_deviations_name_the_phase_input():
    base = presets.SMOKE
    plain = presets.override(base, policy=tuple(kv for kv in base.policy if kv[0] != "phase_steps"))
    clocked = presets.override(base, policy=(*plain.policy, ("phase_steps", 216)))
    assert len(recap_bendpick.deviations(clocked)) == len(recap_bendpick.deviations(plain)) + 1
    assert sum("phase_steps=216" in line for line in recap_bendpick.deviations(clocked)) == 1
    assert common.config_from_dict(clocked.to_dict()) == clocked


def test_deviations_name_dart_demos():
    dart = presets.SMOKE
    clean = presets.override(dart, **{"demos.dart": False})
    assert len(recap_bendpick.deviations(dart)) == len(recap_bendpick.deviations(clean)) + 1
    assert "DART" in recap_bendpick.deviations(dart)[-1] and "0.3" in recap_bendpick.deviations(dart)[-1]
    assert not any("DART" in line for line in recap_bendpick.deviations(clean))


def test_cfg_beta_keys_only_the_recap_high_evaluation():
    from experiments import evaluate

    plain = presets.override(presets.SMOKE, **{"finetune.indicator_dropout": 0.3})
    guided = presets.override(plain, **{"evaluate.cfg_beta": 1.5})
    for cond in ("sft_init", "sft_final", "bc_all", "recap_low"):
        assert evaluate.marker_slice(plain, cond) == evaluate.marker_slice(guided, cond)
    assert evaluate.marker_slice(plain, "recap_high") != evaluate.marker_slice(guided, "recap_high")
    assert evaluate.marker_slice(guided, "recap_high")["evaluate"].cfg_beta == 1.5


def test_save_outcomes_round_trip(tmp_path):
    """An ad-hoc evaluation's outcomes are saved in the study's paired format (falls from the causes)."""
    import numpy as np

    from experiments import evaluate
    from experiments.report import Outcomes
    from recap_jax import rollout

    fell = rollout.FAILURE_CAUSES.index("fell")
    res = {
        "success": np.array([True, False, False]),
        "n_steps": np.array([120, 216, 40]),
        "cause": np.array([0, 1 if fell != 1 else 2, fell], np.int8),
        "images": {0: np.zeros((2, 4, 4, 3), np.uint8)},
    }
    path = tmp_path / "adhoc" / "recap_high_beta1.npz"
    saved = evaluate.save_outcomes(res, path)
    loaded = Outcomes.load(str(path))
    np.testing.assert_array_equal(loaded.success, [True, False, False])
    np.testing.assert_array_equal(loaded.steps, [120, 216, 40])
    np.testing.assert_array_equal(loaded.fell, [False, False, True])
    np.testing.assert_array_equal(saved.fell, loaded.fell)
    with np.load(path.with_name("recap_high_beta1_detail.npz")) as z:
        assert set(z.files) == {"cause", "images_0"}


def test_stage_marker_records_compile_and_cpu_time(tmp_path, capsys):
    """run_stage's marker and log carry the stage's JAX compile time and program counts (common.stage_clock):
    a stage that compiles a new program counts it, a stage that compiles nothing counts nothing."""
    import time

    import jax
    import jax.numpy as jnp

    salt = float(time.time_ns() % 1_000_003)  # a program no cache has seen

    def compiles():
        f = jax.jit(lambda x: jnp.sin(x) * salt + jnp.cumsum(x))
        return {"y": float(f(jnp.arange(7.0)).sum())}

    m = common.run_stage(tmp_path, "a", {"k": 1}, compiles)
    t = m["timing"]
    assert t["compiled"] >= 1 and t["compile_s"] > 0 and t["cpu_s"] >= 0
    assert common.read_json(tmp_path / "a" / common.MARKER)["timing"] == t
    assert "programs compiled" in capsys.readouterr().out
    idle = common.run_stage(tmp_path, "b", {"k": 1}, lambda: {"n": sum(range(1000))})["timing"]
    assert idle["compiled"] == 0 and idle["cache_hits"] == 0 and idle["compile_s"] == 0.0


def test_holdout_split_and_label_swap_on_held_out_rollouts(tmp_path):
    """finetune.holdout_ids holds out a share of each outcome; label_swap_loss reads only those episodes' labelled
    windows (a padded last batch is not counted) and reports the paired difference with its standard error."""
    import jax
    import numpy as np
    from _helpers_train import make_episode

    from experiments import finetune, glue
    from recap_jax import policy
    from recap_jax.data import EpisodeStore

    cfg = presets.override(presets.SMOKE, **{"finetune.holdout_fraction": 0.25})
    store = EpisodeStore(tmp_path / "rollouts", create=True)
    store.append([make_episode(i, n_steps=50, stride=24, image_hw=(48, 80)) for i in range(8)])  # odd ids succeed
    store.append(make_episode(8, n_steps=50, stride=24, image_hw=(48, 80), kind="demo"))
    store.write_annotation("label", {i: np.array([1, 0, -1], np.int8) for i in range(8)})
    held = finetune.holdout_ids(cfg, tmp_path)
    assert len(held) == 2 and sorted(i % 2 for i in held) == [0, 1]  # one episode of each outcome
    assert finetune.holdout_ids(cfg, tmp_path) == held and finetune.holdout_ids(presets.SMOKE, tmp_path) == ()
    params = policy.init_policy(glue.policy_config(cfg), jax.random.key(0))
    out = finetune.label_swap_loss(params, tmp_path / "rollouts", episode_ids=held, windows=64, batch_size=3)
    assert out["held_out"] is True and out["windows"] == 4  # 2 episodes x 2 labelled decision points
    assert all(np.isfinite(out[k]) for k in ("true", "swapped", "swapped_minus_true", "swapped_minus_true_se"))
    assert out["swapped_minus_true"] == pytest.approx(out["swapped"] - out["true"], abs=1e-6)
    every = finetune.label_swap_loss(params, tmp_path / "rollouts", windows=64, batch_size=4)
    assert every["held_out"] is False and every["windows"] == 16
