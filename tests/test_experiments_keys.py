"""Every stage of a study draws its episodes from its own key space (glue.key_space), evaluation per seed.

Keys are computed from the study's config (no study is run): demos, screening, collection per iteration
and evaluation, with the episode ids each stage uses, mapped through ``rollout.episode_key``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from experiments import collect, glue, presets, sft
from recap_jax import rollout


def _stage_ids(cfg) -> dict[str, tuple[tuple[int, int], np.ndarray]]:
    """stage -> ((seed, namespace), episode ids) for every stage of one study."""
    waves = sft.MAX_DEMO_WAVES if cfg.demos.successful_only else 1
    out = {
        "demos": (glue.key_space(cfg, "demos"), sft.DEMO_ID_OFFSET + np.arange(cfg.demos.num_demos * waves)),
        "screen": (glue.key_space(cfg, "screen"), np.arange(cfg.collect.screen_episodes)),
        "eval": (glue.key_space(cfg, "eval"), np.arange(cfg.evaluate.episodes)),
    }
    for it in range(cfg.iterations):
        first = it * cfg.collect.episodes
        out[f"collect_it{it}"] = (glue.key_space(cfg, "collect", it), first + np.arange(cfg.collect.episodes))
    return out


def _keys(space, ids) -> set[bytes]:
    seed, ns = space
    data = jax.vmap(lambda i: jax.random.key_data(rollout.episode_key(seed, ns, i)))(ids.astype(np.int32))
    return {row.tobytes() for row in np.asarray(data)}


@pytest.mark.parametrize("name", ["smoke", "cpu"])
def test_no_two_stages_share_an_episode_key(name):
    # Three iterations and screening on, whatever the preset says, so every stage is present.
    cfg = dataclasses.replace(presets.get_preset(name), iterations=3)
    cfg = dataclasses.replace(cfg, collect=dataclasses.replace(cfg.collect, screen_episodes=8))
    keys = {stage: _keys(*v) for stage, v in _stage_ids(cfg).items()}
    stages = sorted(keys)
    assert {"demos", "screen", "eval", "collect_it0", "collect_it1", "collect_it2"} == set(stages)
    for i, s1 in enumerate(stages):
        assert len(keys[s1]) == len(_stage_ids(cfg)[s1][1]) > 0  # distinct ids give distinct keys
        for s2 in stages[i + 1 :]:
            assert not keys[s1] & keys[s2], f"{s1} and {s2} share episode keys"


def test_evaluation_keys_differ_per_seed_and_training_keys_too():
    base = presets.get_preset("smoke")
    k0, k1 = (dataclasses.replace(base, seed=s) for s in (0, 1))
    ids = np.arange(base.evaluate.episodes)
    assert not _keys(glue.key_space(k0, "eval"), ids) & _keys(glue.key_space(k1, "eval"), ids)
    assert not _keys(glue.key_space(k0, "demos"), ids) & _keys(glue.key_space(k1, "demos"), ids)
    # The evaluation of seed 0 never replays seed 1's training scenes either (key_seed is far from the seeds).
    assert not _keys(glue.key_space(k0, "eval"), ids) & _keys(glue.key_space(k1, "collect", 0), ids)
    with pytest.raises(ValueError, match="unknown key stage"):
        glue.key_space(base, "train")
    with pytest.raises(ValueError, match="iteration"):
        glue.key_space(base, "collect", -1)


def test_stages_use_their_key_space(monkeypatch, tmp_path):
    """The stage code passes glue.key_space's (seed, namespace) to the rollouts (captured, not run)."""
    cfg = presets.get_preset("smoke")
    seen = []

    class Stop(Exception):
        pass

    def fake_collect(*args, seed, namespace=rollout.COLLECT, first_id=0, **kw):
        seen.append((seed, namespace, first_id))
        raise Stop

    monkeypatch.setattr(glue, "make_env", lambda cfg: None)
    monkeypatch.setattr(rollout, "collect", fake_collect)
    with pytest.raises(Stop):
        sft.collect_demos(cfg, tmp_path)
    assert seen[-1] == (*glue.key_space(cfg, "demos"), sft.DEMO_ID_OFFSET)

    def fake_eval(env, params, *, seed, namespace=None, **kw):
        seen.append((seed, namespace))
        raise Stop

    monkeypatch.setattr(glue, "evaluate_policy", fake_eval)
    monkeypatch.setattr(glue, "load_policy", lambda *a, **k: None)
    screen = dataclasses.replace(cfg, collect=dataclasses.replace(cfg.collect, screen_episodes=4))
    screen = dataclasses.replace(screen, sft=dataclasses.replace(cfg.sft, candidate_steps=(1, 2)))
    with pytest.raises(Stop):
        collect.choose_checkpoint(screen, tmp_path, None)
    assert seen[-1] == glue.key_space(cfg, "screen")
    from experiments import evaluate

    with pytest.raises(Stop):
        evaluate.evaluate_checkpoint(cfg, tmp_path, step=None, dropout=0.0, label=None, beta=1.0)
    assert seen[-1] == glue.key_space(cfg, "eval")


def test_mixed_temperature_collection_interleaves_ids(monkeypatch, tmp_path):
    """collect.temperatures (1.0, 1.5): episode first + j plays at temperature [1.0, 1.5][j % 2], passed to the
    policy as a per-env noise_scale and recorded in the tags; the ids of all calls cover the range once."""
    from types import SimpleNamespace

    cfg = presets.override(presets.get_preset("smoke"), **{"collect.temperatures": (1.0, 1.5)})
    calls = []

    def fake_collect(env, act, params, store, n, *, episode_ids, act_kwargs, tags, num_envs, **kw):
        calls.append((list(episode_ids), np.asarray(act_kwargs["noise_scale"]), tags["temperature"], num_envs))
        return {"collected": len(episode_ids)}

    monkeypatch.setattr(glue, "make_env", lambda cfg: None)
    monkeypatch.setattr(glue, "load_policy", lambda *a, **k: SimpleNamespace(config=SimpleNamespace(rtc="off")))
    monkeypatch.setattr(rollout, "collect", fake_collect)
    out = collect.collect_rollouts(cfg, tmp_path)
    n = cfg.collect.episodes
    assert [c[2] for c in calls] == [1.0, 1.5]
    assert calls[0][0] == list(range(0, n, 2)) and calls[1][0] == list(range(1, n, 2))
    for _ids, scale, temp, num_envs in calls:
        assert scale.shape == (num_envs,) and np.all(scale == np.float32(temp))
    assert out["collected_now"] == n and set(out["temperatures"]) == {"1", "1.5"}
