"""Presets: named, frozen, validated; a typo is answered with the closest name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments import presets


def test_presets_are_frozen_and_named():
    assert set(presets.PRESETS) == {
        "smoke",
        "demo",
        "cpu",
        "cpu_long",
        "cpu_power",
        "cpu_power_mixed",
        "gpu",
        "paper",
        "psi0",
    }
    for name, cfg in presets.PRESETS.items():
        assert cfg.name == name and cfg.budget
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.seed = 1  # type: ignore[misc]
        assert cfg.to_dict()["name"] == name


def test_cpu_preset_shares_smokes_compiled_programs():
    """demo, cpu and cpu_long differ from smoke only in counts and optimiser settings, so the env, policy and
    value programs (keyed by shapes and static configs) compiled by one serve the others (make demo's cache
    serves make test's smoke study and the other way round)."""
    smoke = presets.get_preset("smoke")
    for cpu in (presets.get_preset("demo"), presets.get_preset("cpu"), presets.get_preset("cpu_long")):
        _assert_shares_programs(smoke, cpu)


def _assert_shares_programs(smoke, cpu):
    # What the compiled programs are keyed by: the env's static config, the policy / value configs the
    # stages build (glue), and the wave width (num_envs) of every rollout and the training batch shape.
    from experiments import glue

    assert glue.make_env(cpu).config == glue.make_env(smoke).config
    for dropout in (0.0, cpu.finetune.indicator_dropout):
        assert glue.policy_config(cpu, dropout) == glue.policy_config(smoke, dropout)
    assert glue.value_config(cpu).backbone == glue.value_config(smoke).backbone
    assert {cpu.demos.num_envs, cpu.collect.num_envs, cpu.evaluate.num_envs} == {smoke.evaluate.num_envs}
    assert {cpu.sft.batch_size, cpu.finetune.batch_size} == {smoke.sft.batch_size}
    # Screening has candidates to choose from, each a checkpoint the SFT run actually saves.
    assert cpu.collect.screen_episodes > 0 and len(cpu.sft.candidate_steps) >= 3
    assert all(0 < s <= cpu.sft.steps for s in cpu.sft.candidate_steps)


def test_gpu_preset_is_the_cpu_recipe_at_scale():
    """gpu runs the recipe that has headroom on CPU (cpu_power's), with every wave at one env count, and enough
    paired episodes that a difference of two ~50 % rates has a 95% interval of at most ~±6 points."""
    from experiments import glue
    from recap_jax import stats

    cpu, gpu = presets.get_preset("cpu"), presets.get_preset("gpu")
    assert glue.policy_config(gpu) == glue.policy_config(cpu) and glue.make_env(gpu).config == glue.make_env(cpu).config
    assert len({gpu.demos.num_envs, gpu.collect.num_envs, gpu.evaluate.num_envs, gpu.collect.screen_episodes}) == 1
    n = gpu.evaluate.episodes
    a = np.arange(n) % 2 == 0  # 50 % vs 50 %, independent pairing (the widest paired case)
    b = (np.arange(n) // 2) % 2 == 0
    _, lo, hi = stats.paired_difference_interval(a, b)
    assert hi - lo <= 0.13
    assert gpu.collect.episodes >= 512 and n >= 1024  # issue 23: 512+ rollouts, 1024 paired episodes
    assert (gpu.value, gpu.finetune.holdout_fraction) == (presets.get_preset("cpu_power").value, 0.1)


def test_cpu_power_preset_has_the_power_issue_23_asks_for():
    """cpu_power: cpu's env, policy, demos and SFT screen; >= 384 rollouts; >= 512 paired episodes for each compared
    condition (unpaired power >= 0.8 for the paper's 30.8% vs 21.5% at alpha 0.05); fewer for the SFT conditions;
    waves of 16-32 envs shared by collection and evaluation; held-out rollouts for the label-swap diagnostic."""
    from experiments import glue, recap_bendpick
    from recap_jax import stats

    cpu, p = presets.get_preset("cpu"), presets.get_preset("cpu_power")
    assert glue.policy_config(p) == glue.policy_config(cpu) and glue.make_env(p).config == glue.make_env(cpu).config
    assert (p.demos, p.sft) == (cpu.demos, cpu.sft)
    assert p.collect.episodes >= 384 and p.evaluate.episodes >= 512
    assert p.evaluate.condition_episodes("sft_init") < p.evaluate.condition_episodes("recap_high") == 512
    assert 16 <= p.evaluate.num_envs == p.collect.num_envs <= 32
    n, (a, b) = p.evaluate.episodes, (0.308, 0.215)
    se = ((a * (1 - a) + b * (1 - b)) / n) ** 0.5
    assert stats.norm_cdf((a - b) / se - stats.norm_ppf(0.975)) >= 0.8
    assert 0 < p.finetune.holdout_fraction < 0.5 and glue.value_config(p).backbone == "state"
    assert any("held out of RECAP" in d for d in recap_bendpick.deviations(p))
    assert any("value backbone 'state'" in d for d in recap_bendpick.deviations(p))


def test_paper_preset_matches_paper():
    p = presets.get_preset("paper")
    assert p.demos.num_demos == 100
    assert (p.sft.init_step, p.sft.steps) == (20_000, 40_000)
    assert p.collect.episodes == 500 and p.env.episode_length == 600
    assert p.value_training.epochs == 50 and p.value_training.split_seed == 42
    assert (p.finetune.steps, p.finetune.batch_size, p.finetune.learning_rate) == (40_000, 128, 1e-4)
    assert p.evaluate.episodes == 500 and p.labels.positive_fraction == 0.3


@pytest.mark.parametrize(("typo", "closest"), [("smoek", "smoke"), ("papr", "paper"), ("gpus", "gpu")])
def test_unknown_preset_names_closest(typo, closest):
    with pytest.raises(ValueError, match=f"Did you mean '{closest}'"):
        presets.get_preset(typo)


def test_override_and_validation():
    cfg = presets.override(presets.get_preset("smoke"), **{"sft.steps": 40, "sft.init_step": 20, "seed": 5})
    assert (cfg.sft.steps, cfg.sft.init_step, cfg.seed) == (40, 20, 5)
    assert presets.get_preset("smoke").sft.steps != 40  # the preset itself is untouched
    with pytest.raises(ValueError, match=r"demos\.dart needs demos\.expert_noise"):
        presets.override(cfg, **{"demos.expert_noise": 0.0})
    with pytest.raises(ValueError, match="init_step"):
        presets.override(cfg, **{"sft.init_step": 100})
    with pytest.raises(ValueError, match="indicator_dropout"):
        presets.override(cfg, **{"evaluate.cfg_beta": 2.0})


def test_env_physics_setting():
    """env.physics is validated with the preset and reaches the study's env (glue.make_env)."""
    from experiments import common, glue

    assert presets.get_preset("smoke").env.physics == ""  # the env's default physics
    cfg = presets.override(presets.get_preset("smoke"), **{"env.physics": "newton:4:8:eulerdamp"})
    env = glue.make_env(cfg)
    assert (env.config.solver_iterations, env.config.ls_iterations, env.config.eulerdamp) == (4, 8, True)
    assert common.config_from_dict(cfg.to_dict()).env.physics == "newton:4:8:eulerdamp"
    with pytest.raises(ValueError, match="is not solver:iterations"):
        presets.override(cfg, **{"env.physics": "newton:4"})
    with pytest.raises(ValueError, match="solver must be one of"):
        presets.override(cfg, **{"env.physics": "pgs:4:8"})


def test_smoke_budget_is_small():
    s = presets.get_preset("smoke")
    assert sum(s.env_steps().values()) <= 20_000
    assert s.evaluate.num_envs <= 8 and s.collect.num_envs <= 8


def test_make_demo_runs_the_demo_preset():
    """make demo runs the demo preset (tests/_demo_collect.py reads the same line; the test that its fixed
    seed collects both outcomes is in test_experiments_smoke.py), sized for <= 10 minutes cold on 2 cores:
    at most ~40 waves of 8 envs and ~3.2k policy train steps, with every comparison on >= 8 paired episodes
    and a collection large enough for both outcomes and the value function's held-out split."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _demo_collect import demo_preset

    assert demo_preset() == "demo"
    d = presets.get_preset("demo")
    t = d.env.episode_length
    waves = sum(d.env_steps().values()) / (t * d.evaluate.num_envs)
    assert waves <= 40, waves
    assert d.sft.steps + 2 * d.finetune.steps <= 3_200
    assert d.evaluate.episodes >= 8 and d.collect.episodes >= 16
    assert d.demos.dart and dict(d.policy).get("phase_steps") == t  # the recipe that has headroom (STUDY.md)
    assert d.collect.screen_episodes > 0 and all(0 < s <= d.sft.steps for s in d.sft.candidate_steps)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_build_the_stage_configs(name):
    from experiments import glue

    cfg = presets.get_preset(name)
    pcfg = glue.policy_config(cfg)
    assert tuple(pcfg.image_size) == tuple(cfg.env.image_size) and pcfg.execute == cfg.env.replan_every
    assert glue.policy_config(cfg, 0.3).indicator_dropout == 0.3
    vcfg = glue.value_config(cfg)
    assert (vcfg.epochs, vcfg.max_steps, vcfg.split_seed, vcfg.folds) == (
        cfg.value_training.epochs,
        cfg.value_training.return_horizon,  # Eq. 1's normaliser, not the episode limit (issue 22)
        cfg.value_training.split_seed,
        cfg.value_training.folds,
    )
    lcfg = glue.label_config(cfg)
    assert lcfg.positive_fraction == cfg.labels.positive_fraction
    assert (lcfg.returns, lcfg.c_fail, lcfg.max_steps) == (vcfg.returns, vcfg.c_fail, vcfg.max_steps)
    opt = glue.optimizer_config(cfg.finetune, cfg.finetune.steps)
    assert (opt.lr, opt.total_steps) == (cfg.finetune.learning_rate, cfg.finetune.steps)


def test_presets_name_their_loss_reduction():
    """Every preset says which flow-matching loss reduction it trains with; glue passes it to PolicyConfig."""
    from experiments import glue

    for cfg in presets.PRESETS.values():
        assert glue.policy_config(cfg).loss_reduction == dict(cfg.policy)["loss_reduction"]
    assert glue.policy_config(presets.CPU).loss_reduction == "mean"
    assert glue.policy_config(presets.PAPER).loss_reduction == "psi0"
    bare = tuple(kv for kv in presets.SMOKE.policy if kv[0] != "loss_reduction")
    with pytest.raises(ValueError, match="loss_reduction"):
        dataclasses.replace(presets.SMOKE, policy=bare)
    with pytest.raises(ValueError, match="loss_reduction"):
        dataclasses.replace(presets.SMOKE, policy=(*bare, ("loss_reduction", "sum")))


def test_cpu_power_mixed_differs_from_cpu_power_in_rollout_temperatures_and_finetune_lr():
    """Same env, demos, SFT, value and evaluation, so a run can reuse cpu_power's demos/ and sft/ stages."""
    p, m = presets.get_preset("cpu_power"), presets.get_preset("cpu_power_mixed")
    assert p.collect.temperatures == (1.0,) and len(set(m.collect.temperatures)) == 2 and 1.0 in m.collect.temperatures
    assert m.finetune.learning_rate == m.sft.learning_rate
    same = dataclasses.replace(
        m, name=p.name, description=p.description, budget=p.budget, collect=p.collect, finetune=p.finetune
    )
    assert same == p
