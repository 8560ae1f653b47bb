"""Evaluation markers are keyed by the checkpoint (step + params hash) and the eval settings: a mismatch
re-evaluates, a match skips (no policy is run: the evaluation itself is replaced by a recorder)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from experiments import collect, common, evaluate, finetune, presets
from experiments.report import CONDITIONS, Outcomes


def _fake_run_dir(out, cfg):
    """A run directory with checkpoint files shaped like orbax's (<run>/checkpoints/<step>/params/...)."""
    for run, steps in (("sft", (cfg.sft.init_step, cfg.sft.steps)), (finetune.run_dir(0, "bc_all"), (5,)),
                       (finetune.run_dir(0, "recap"), (3, 5))):  # fmt: skip
        for step in steps:
            d = out / run / "checkpoints" / str(step) / "params"
            d.mkdir(parents=True, exist_ok=True)
            (d / "weights.bin").write_bytes(f"{run}@{step}".encode())
    (out / run / "checkpoints" / "7.orbax-checkpoint-tmp-1").mkdir()  # incomplete: not the latest
    common.mark_done(out, collect.stage_name(0), {}, {"checkpoint_step": cfg.sft.init_step}, 0.0)


@pytest.fixture
def recorder(monkeypatch):
    calls = []

    def fake(cfg, out, cond, it=0):
        calls.append(cond)
        (out / evaluate.stage_name(it, cond)).parent.mkdir(parents=True, exist_ok=True)
        Outcomes(success=np.zeros(4, bool), steps=np.full(4, 10)).save(
            str(out / f"{evaluate.stage_name(it, cond)}.npz")
        )
        return {"condition": cond}

    monkeypatch.setattr(evaluate, "evaluate_condition", fake)
    return calls


def test_markers_follow_checkpoint_and_settings(tmp_path, recorder):
    cfg = presets.get_preset("smoke")
    _fake_run_dir(tmp_path, cfg)
    evaluate.run(cfg, tmp_path)
    assert recorder == list(CONDITIONS)
    recorder.clear()
    evaluate.run(cfg, tmp_path)  # same checkpoints, same settings: nothing re-evaluated
    assert recorder == []
    # The RECAP checkpoint is replaced (same step, other params): both of its prompts re-evaluate.
    (tmp_path / "finetune/recap/checkpoints/5/params/weights.bin").write_bytes(b"other policy")
    evaluate.run(cfg, tmp_path)
    assert recorder == ["recap_low", "recap_high"]
    marker = common.read_json(tmp_path / "evaluate/recap_high" / common.MARKER)
    assert marker["config"]["checkpoint"]["step"] == 5  # the latest complete step, not the tmp dir
    assert marker["config"]["checkpoint"] == evaluate.checkpoint_identity(tmp_path / "finetune/recap")
    recorder.clear()
    # A copied run directory with another seed: evaluation keys differ, so everything re-evaluates.
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("copy"))
    evaluate.run(dataclasses.replace(cfg, seed=cfg.seed + 1), copy)
    assert recorder == list(CONDITIONS)
    recorder.clear()
    # Other eval settings re-evaluate too.
    more = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, episodes=cfg.evaluate.episodes + 1))
    evaluate.run(more, tmp_path)
    assert recorder == list(CONDITIONS)


def test_checkpoint_identity(tmp_path):
    cfg = presets.get_preset("smoke")
    _fake_run_dir(tmp_path, cfg)
    a = evaluate.checkpoint_identity(tmp_path / "sft", cfg.sft.init_step)
    b = evaluate.checkpoint_identity(tmp_path / "sft", cfg.sft.steps)
    assert a["step"] == cfg.sft.init_step and a["params_sha256"] != b["params_sha256"]
    assert evaluate.checkpoint_identity(tmp_path / "sft") == b  # latest
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        evaluate.checkpoint_identity(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no params files"):
        evaluate.checkpoint_identity(tmp_path / "sft", 12345)
