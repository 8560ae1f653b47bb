"""benchmarks/temperature_sweep.py: each temperature reaches the policy as its per-env noise_scale (no rollouts)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import temperature_sweep as ts
from experiments import common, glue, presets
from recap_jax import rollout


def test_sweep_passes_each_temperature_and_counts_causes(monkeypatch, tmp_path):
    cfg = presets.get_preset("smoke")
    common.atomic_write_json(tmp_path / "config.json", cfg.to_dict())
    common.atomic_write_json(tmp_path / "collect" / common.MARKER, {"outputs": {"checkpoint_step": 5}})
    seen = []

    def fake_evaluate(env, act, params, n, *, act_kwargs, seed, num_envs, **kw):
        seen.append((np.asarray(act_kwargs["noise_scale"]), seed, num_envs))
        return {"cause": np.array([0, 0, 1, 2][:n], np.int8), "success": np.array([1, 1, 0, 0][:n], bool)}

    monkeypatch.setattr(glue, "load_policy", lambda *a, **k: SimpleNamespace(config=SimpleNamespace(rtc="off")))
    monkeypatch.setattr(glue, "make_env", lambda cfg: None)
    monkeypatch.setattr(rollout, "evaluate", fake_evaluate)
    rows = ts.sweep(tmp_path, [1.0, 1.5], 4, 2)
    assert [r["temperature"] for r in rows] == [1.0, 1.5] and rows[0]["policy"] == "sft@5"
    assert [(r["success"], r["timeout"], r["fell"]) for r in rows] == [(2, 1, 1)] * 2
    for (scale, seed, n), temp in zip(seen, (1.0, 1.5), strict=True):
        assert seed == ts.SEED and scale.shape == (n,) and np.all(scale == np.float32(temp))
    with pytest.raises(ValueError, match="positive"):
        ts.sweep(tmp_path, [0.0], 4, 2)
